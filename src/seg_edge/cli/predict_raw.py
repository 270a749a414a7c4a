"""``seg-edge predict --raw``: raw scanner series in, labels on the scanner's own grid out (``preprocess.study``).

Kept apart from ``predict`` so that the plain path imports nothing of the preprocessing (SimpleITK is the
``preprocess`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from seg_edge.card import MODALITIES
from seg_edge.cli.console import err, out
from seg_edge.errors import InputError, MissingExtra, SegEdgeError


def check_raw_options(*, engine_is_local: bool, modalities: str | None, resample: bool,
                      atlas: Path | None, atlas_brain: Path | None, coregister_to: str | None) -> None:
    """InputError for options ``--raw`` cannot take, or ``--raw``-only options given without it."""
    if not engine_is_local:
        raise InputError("--raw runs in this process (--engine ray does not preprocess raw series)")
    if modalities is not None:
        raise InputError("--raw reads one NIfTI per series, named by modality (a stack has no series' own grids)")
    if resample:
        raise InputError("--raw puts the series on the atlas grid itself: --resample does not apply")
    if (atlas is None) != (atlas_brain is None):
        raise InputError("--atlas and --atlas-brain go together (the template image and its brain mask, on one "
                         "1 mm grid)")
    if coregister_to is not None and coregister_to not in MODALITIES:
        raise InputError(f"--coregister-to {coregister_to} (expected one of {', '.join(MODALITIES)})")


def not_raw_options(*, atlas: Path | None, atlas_brain: Path | None, coregister_to: str | None,
                    labels_on_every_series: bool) -> None:
    """InputError for ``--raw``-only options given without ``--raw``."""
    given = [n for n, v in (("--atlas", atlas), ("--atlas-brain", atlas_brain), ("--coregister-to", coregister_to),
                            ("--labels-on-every-series", labels_on_every_series or None)) if v is not None]
    if given:
        raise InputError(f"{', '.join(given)} apply to --raw (raw scanner series)")


def raw_options(atlas: Path | None, atlas_brain: Path | None, coregister_to: str | None, threads: int | None) -> Any:
    """The pipeline's options (the shipped MNI152 atlas unless ``--atlas``); MissingExtra without SimpleITK."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        raise MissingExtra("SimpleITK", needed_for="--raw") from None
    from seg_edge.preprocess.atlas import load_atlas
    from seg_edge.preprocess.pipeline import RawOptions

    return RawOptions(reference=coregister_to or "t1ce", atlas=load_atlas(atlas, atlas_brain),
                      threads=max(1, threads or 1))


def run_raw(segmenter: Any, jobs: list, batch: bool, options: Any, outputs: Any) -> list[tuple[Any, Any]]:
    """Each study in turn: (job, RawResult) or (job, the error) for a batch; one study's error is raised."""
    from seg_edge.preprocess.study import segment_raw

    results: list[tuple[Any, Any]] = []
    for job in jobs:
        if not outputs.overwrite and job.out.exists():
            results.append((job, "skipped"))
            continue
        if batch:
            err.print(f"  {escape(job.case_id)}", highlight=False)
        try:
            results.append((job, segment_raw(job, segmenter, options, outputs)))
        except SegEdgeError as exc:
            if not batch:
                raise
            results.append((job, exc))
    return results


def render_raw(results: list[tuple[Any, Any]], json_out: bool) -> bool:
    """Print the studies' outcomes (a table each, or JSON); True if any failed."""
    import json

    failed = False
    rows = []
    for job, result in results:
        if isinstance(result, BaseException):
            failed = True
            rows.append({"case_id": job.case_id, "status": "failed", "error": " ".join(str(result).split())})
        elif result == "skipped":
            rows.append({"case_id": job.case_id, "status": "skipped", "output": str(job.out)})
        else:
            rows.append({"status": "done", **result.report, "files": [str(f) for f in result.files]})
    if json_out:
        out.print_json(json.dumps(rows[0] if len(rows) == 1 else rows))
        return failed
    for row in rows:
        if row["status"] != "done":
            out.print(f"{escape(row['case_id'])}: {row['status']} {escape(row.get('error', row.get('output', '')))}")
            continue
        out.print(_table(row))
    return failed


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=escape(f"{report['case_id']} → {report['output']} (the reference series' grid)"),
                  title_justify="left")
    table.add_column("region")
    table.add_column("volume (mL)", justify="right")
    for name, volume in report["volumes_ml"].items():  # the label set's names: NCR/ED or NETC/SNFH/RC
        table.add_row(name, f"{volume:.2f}")
    table.add_section()
    for name, qc in report["preprocessing"].get("series", {}).items():
        if "rotation_deg" in qc:
            turn = float(qc["rotation_deg"])
            shift = sum(float(t) ** 2 for t in qc["translation_mm"]) ** 0.5
            table.add_row(f"[dim]{name} → {report['preprocessing']['reference']}[/]",
                          f"[dim]{turn:.1f}°, {shift:.1f} mm[/]")
    table.add_section()
    for stage, seconds in report["timings_s"].items():
        table.add_row(f"[dim]{stage} (s)[/]", f"[dim]{seconds:.2f}[/]")
    return table
