"""``seg-edge synth``: write synthetic BraTS-like case folders, or raw scanner-like studies (``--raw``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import Anatomy, LabelScheme, parse_triplet
from seg_edge.errors import InputError

DEFAULT_SHAPE = "240,240,155"


class Vendor(str, Enum):
    """Whose naming conventions a synthetic DICOM study follows."""

    siemens = "siemens"
    ge = "ge"
    philips = "philips"


class TransferSyntax(str, Enum):
    """How a synthetic DICOM study's pixels are stored (seg_edge.synth.dicom.TRANSFER_SYNTAXES)."""

    explicit = "explicit"
    deflated = "deflated"
    rle = "rle"
    jpeg_ls = "jpeg-ls"
    jpeg2000 = "jpeg2000"


@guarded
def synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write <id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz "
                                 "(with --raw: raw studies, see --raw)."),
    n: int = typer.Option(10, "--n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; case i is generated from (seed, i)."),
    shape: str | None = typer.Option(None, "--shape", help=f"Grid X,Y,Z in 1 mm voxels [default: {DEFAULT_SHAPE}]; "
                                     "not with --raw (use --scale)."),
    label_scheme: LabelScheme = typer.Option(LabelScheme.brats2021, "--label-scheme", help="ET=4 (brats2021) or "
                                             "ET=3 (brats2023); the post-treatment set's resection cavity is not "
                                             "synthesised."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    anatomy: Anatomy | None = typer.Option(None, "--anatomy", help="procedural (no dependencies; the default) or "
                                           "mni152 (MNI152 tissue templates shipped by nilearn: extra 'synth'); "
                                           "--raw always uses mni152."),
    raw: bool = typer.Option(False, "--raw", help="Write raw studies as a scanner would: "
                             "<id>/<id>_{t1,t1ce,t2,flair}.nii.gz with skull, head pose, per-series motion and own "
                             "grids (sagittal 3D T1, axial 3D T1ce, axial 2D T2, tilted axial 2D FLAIR), bias and "
                             "noise, and <id>/truth/ (true transforms, brain mask, labels on the atlas and T1ce "
                             "grids, the perfectly preprocessed case). Needs the 'synth' extra."),
    scale: float | None = typer.Option(None, "--scale", help="With --raw: voxels 1/SCALE times larger, same fields "
                                       "of view (0.25 to 1; default 1: the 240x240x155 1 mm atlas grid)."),
    dicom: bool = typer.Option(False, "--dicom", help="With --raw: also write each study as DICOM in <id>/dicom/ "
                               "(one folder per series, MR Image Storage one file per slice; localiser, DWI, ADC "
                               "and an MPR besides the four) and <id>/dicom_truth.json. Needs the 'dicom' extra."),
    vendor: Vendor | None = typer.Option(None, "--vendor", help="With --dicom: series names in this vendor's style "
                                         "[default: siemens, ge, philips in turn by study index]."),
    enhanced: bool = typer.Option(False, "--enhanced", help="With --dicom: Enhanced MR Image Storage, one "
                                  "multi-frame file per series."),
    transfer_syntax: TransferSyntax | None = typer.Option(None, "--transfer-syntax", help="With --dicom: how the "
                                                          "pixels are stored: explicit VR little endian, deflated, "
                                                          "or losslessly compressed (RLE, JPEG-LS, JPEG 2000) "
                                                          "[default: explicit]."),
    tumours: int = typer.Option(1, "--tumours", min=1, help="Tumours per case: the main one and TUMOURS-1 smaller "
                                "foci (each a necrotic core, an enhancing rim and oedema, clear of the others)."),
    satellites: int = typer.Option(0, "--satellites", min=0, help="Small enhancing lesions per case near its "
                                   "tumours, alternately near (2-3 voxels away: inside the BraTS 2023 3-voxel "
                                   "dilation) and far (11-14 voxels: a lesion of its own). Not with --raw."),
) -> None:
    """Generate synthetic BraTS-like cases or raw studies (procedural or MNI152 brain + glioma; not patient data)."""
    from seg_edge.runtime.regions import et_label

    dicom_only = [n for n, v in (("--vendor", vendor), ("--enhanced", enhanced or None),
                                 ("--transfer-syntax", transfer_syntax)) if v is not None]
    if label_scheme.value not in ("brats2021", "brats2023"):
        raise InputError(f"--label-scheme {label_scheme.value} (expected brats2021 or brats2023: synthetic cases "
                         "hold NCR, ED and ET; no resection cavity is synthesised)")
    if not dicom and dicom_only:
        raise InputError(f"{', '.join(dicom_only)} without --dicom (expected --raw --dicom)")
    if raw and (tumours != 1 or satellites != 0):
        raise InputError(f"{'--tumours' if tumours != 1 else '--satellites'} with --raw (expected BraTS-like "
                         f"cases: multifocal phantoms are written without --raw)")
    if raw:
        _refuse_with_raw(shape, anatomy)
        if dicom:
            _check_dicom(out_dir, n, seed)
        done = _write_raw(out_dir, n, seed, scale if scale is not None else 1.0, et_label(label_scheme.value),
                          workers)
        if dicom:
            _write_dicom(done, seed, vendor, enhanced, (transfer_syntax or TransferSyntax.explicit).value)
        return
    if dicom:
        raise InputError("--dicom without --raw (expected --raw --dicom: DICOM studies are written from raw studies)")
    if scale is not None:
        raise InputError(f"--scale {scale:g} without --raw (expected --raw, or --shape for BraTS-like cases)")
    from seg_edge.synth import write_cases

    grid = parse_triplet(shape or DEFAULT_SHAPE, "--shape")
    if min(grid) < 32:
        raise InputError(f"--shape {shape} (expected every size >= 32)")
    anatomy = anatomy or Anatomy.procedural
    if anatomy == Anatomy.mni152:
        from seg_edge.synth.mni import tissue_maps

        tissue_maps()  # fail before writing anything if nilearn is missing
    done = write_cases(out_dir, n, seed, grid, et_label(label_scheme.value), workers, anatomy.value,
                       progress=lambda p: err.print(f"  {p.name}", highlight=False), tumours=tumours,
                       satellites=satellites)
    out.print(f"wrote {len(done)} synthetic cases to {out_dir}")


def _refuse_with_raw(shape: str | None, anatomy: Anatomy | None) -> None:
    if shape is not None:
        raise InputError(f"--shape {shape} with --raw (expected --scale: a raw study's grids are the scanner's, "
                         f"its atlas grid is 240x240x155 at --scale 1)")
    if anatomy not in (None, Anatomy.mni152):
        raise InputError(f"--anatomy {anatomy.value} with --raw (expected mni152 or none: raw studies use the "
                         f"MNI152 brain)")


def _write_raw(out_dir: Path, n: int, seed: int, scale: float, et: int, workers: int) -> list[Path]:
    from seg_edge.synth.mni import tissue_maps
    from seg_edge.synth.raw import MAX_SCALE, MIN_SCALE, write_raw_studies

    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise InputError(f"--scale {scale:g} (expected {MIN_SCALE:g} to {MAX_SCALE:g})")
    tissue_maps()  # fail before writing anything if nilearn is missing
    done = write_raw_studies(out_dir, n, seed, scale=scale, et_label=et, workers=workers,
                             progress=lambda p: err.print(f"  {p.name}", highlight=False))
    out.print(f"wrote {len(done)} synthetic raw studies to {out_dir} (truth in <id>/truth/)")
    return done


def _check_dicom(out_dir: Path, n: int, seed: int) -> None:
    """Before anything is written: the dicom extra is there and no study's DICOM folder exists yet."""
    import seg_edge.synth.dicom  # noqa: F401  (MissingExtra now rather than after the raw studies)
    from seg_edge.synth.raw import raw_case_id

    for index in range(n):
        target = out_dir / raw_case_id(seed, index) / "dicom"
        if target.exists():
            raise InputError(f"{target} already exists (expected a folder not yet written: choose another --out)")


def _write_dicom(folders: list[Path], seed: int, vendor: Vendor | None, enhanced: bool, syntax: str) -> None:
    from seg_edge.synth.dicom import VENDORS, write_dicom_study

    for index, folder in enumerate(folders):
        name = vendor.value if vendor is not None else VENDORS[index % len(VENDORS)]
        write_dicom_study(folder, folder, vendor=name, enhanced=enhanced, seed=seed, transfer_syntax=syntax)
        err.print(f"  {folder.name}/dicom ({name})", highlight=False)
    out.print(f"wrote {len(folders)} DICOM studies ({'enhanced' if enhanced else 'classic'} MR): <id>/dicom/, "
              f"truth in <id>/dicom_truth.json")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
