"""``seg-edge synth``: write synthetic BraTS-like case folders."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import Anatomy, LabelScheme, parse_triplet


@guarded
def synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write <id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz."),
    n: int = typer.Option(10, "--n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; case i is generated from (seed, i)."),
    shape: str = typer.Option("240,240,155", "--shape", help="Grid X,Y,Z in 1 mm voxels."),
    label_scheme: LabelScheme = typer.Option(LabelScheme.brats2021, "--label-scheme", help="ET=4 or ET=3."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    anatomy: Anatomy = typer.Option(Anatomy.procedural, "--anatomy", help="procedural (no dependencies) or "
                                    "mni152 (MNI152 tissue templates shipped by nilearn: extra 'synth')."),
) -> None:
    """Generate synthetic BraTS-like cases (procedural brain + glioma; not patient data)."""
    from seg_edge.runtime.regions import et_label
    from seg_edge.synth import write_cases

    grid = parse_triplet(shape, "--shape")
    if min(grid) < 32:
        from seg_edge.errors import InputError

        raise InputError(f"--shape {shape} (expected every size >= 32)")
    if anatomy == Anatomy.mni152:
        from seg_edge.synth.mni import tissue_maps

        tissue_maps()  # fail before writing anything if nilearn is missing
    done = write_cases(out_dir, n, seed, grid, et_label(label_scheme.value), workers, anatomy.value,
                       progress=lambda p: err.print(f"  {p.name}", highlight=False))
    out.print(f"wrote {len(done)} synthetic cases to {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
