"""``seg-edge evaluate``: Dice, IoU, HD95 and friends against ground truth, or a challenge's own scores."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, LabelScheme, dumps
from seg_edge.errors import InputError


class ChallengeName(str, Enum):
    legacy = "legacy"
    gli = "gli"
    mets = "mets"
    ped = "ped"
    men = "men"
    men_rt = "men-rt"
    goat = "goat"
    brats2023 = "brats2023"


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    from seg_edge.runtime.outputs import check_targets

    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist (expected an existing folder)")
    check_targets([path], overwrite=True)


@guarded
def evaluate(
    pred: Path = typer.Argument(..., help="Predicted label map, or a folder of them (<case_id>.nii.gz)."),
    truth: Path = typer.Argument(..., help="Ground truth label map, or a folder (flat or BraTS case folders)."),
    challenge: ChallengeName = typer.Option(ChallengeName.legacy, "--challenge", help="Score as this challenge "
                                            "does (its labels, regions, lesion-wise metrics and penalties); legacy: "
                                            "seg-edge's whole-volume table."),
    label_scheme: LabelScheme | None = typer.Option(None, "--label-scheme", help="ET=4 (brats2021) or ET=3 "
                                                    "(legacy only; a challenge fixes its own labels). Default "
                                                    "brats2021."),
    csv_path: Path = typer.Option(None, "--csv", help="Also write per-case rows to this CSV (with --challenge: "
                                  "the official package's columns)."),
    report: Path = typer.Option(None, "--report", help="Also write a self-contained HTML report: per-case table, "
                                "Dice box plots, the worst cases' pictures beside the ground truth (needs Pillow)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Score predictions per region with BraTS conventions; --challenge for a challenge's lesion-wise scores."""
    if challenge is not ChallengeName.legacy and label_scheme is not None:
        raise InputError(f"--label-scheme {label_scheme.value} with --challenge {challenge.value} (expected "
                         "--label-scheme with --challenge legacy only: a challenge fixes its own label set)")
    _check_output(csv_path)
    _check_output(report)
    if report is not None:
        from seg_edge.runtime.pictures import require_pillow

        require_pillow()
    if challenge is ChallengeName.legacy:
        _legacy(pred, truth, (label_scheme or LabelScheme.brats2021).value, csv_path, report, json_out)
    else:
        _challenge(pred, truth, challenge.value, csv_path, report, json_out)


def _legacy(pred: Path, truth: Path, scheme: str, csv_path: Path | None, report: Path | None,
            json_out: bool) -> None:
    from seg_edge.evaluation.evaluate import evaluate as run, write_csv
    from seg_edge.evaluation.metrics import METRICS
    from seg_edge.runtime.regions import REGIONS, et_label

    result = run(pred, truth, et_label(scheme))
    if csv_path:
        write_csv(result, csv_path)
    if report is not None:
        from seg_edge.evaluation.html_report import evaluation_html, write_html

        write_html(report, evaluation_html(result, et_label(scheme)))
        err.print(f"wrote {escape(str(report))}")
    _warn_unmatched(result["unmatched"])
    if json_out:
        out.print_json(dumps({"cases": result["cases"], "summary": result["summary"]}))
        return
    table = Table(title=f"{len(result['cases'])} cases: mean ± std", title_justify="left")
    table.add_column("metric")
    for region in REGIONS:
        table.add_column(region, justify="right")
    for metric in METRICS:
        digits = 2 if metric == "hd95" else 4
        table.add_row(metric + (" (mm)" if metric == "hd95" else ""),
                      *(f"{result['summary'][r][metric]['mean']:.{digits}f} ± "
                        f"{result['summary'][r][metric]['std']:.{digits}f}" for r in REGIONS))
    out.print(table)


def _warn_unmatched(unmatched: list[str], what: str = "case ids without a partner") -> None:
    if unmatched:
        err.print(f"[yellow]warning:[/] {len(unmatched)} {what}: {escape(', '.join(unmatched[:5]))}")


def _challenge(pred: Path, truth: Path, name: str, csv_path: Path | None, report: Path | None,
               json_out: bool) -> None:
    from seg_edge.evaluation.challenge_eval import evaluate_challenge, region_summary, to_json
    from seg_edge.evaluation.challenge_table import write_rows
    from seg_edge.evaluation.challenges import get_challenge

    spec = get_challenge(name)
    result = evaluate_challenge(pred, truth, spec)
    if csv_path:
        write_rows(result["rows"] + result["summary"], csv_path)
    if report is not None:
        from seg_edge.evaluation.html_report import challenge_html, write_html

        write_html(report, challenge_html(result))
        err.print(f"wrote {escape(str(report))}")
    _warn_unmatched(result["unmatched"], "predictions without ground truth")
    if result["missing"]:
        err.print(f"[yellow]warning:[/] {len(result['missing'])} ground truths without a prediction, scored as the "
                  f"challenge scores a missing case: {escape(', '.join(result['missing'][:5]))}")
    if json_out:
        out.print_json(dumps(to_json(result)))
        return
    rows, regions = region_summary(result)
    # the official package computes the global HD95 without the voxel spacing (voxels), the per-lesion one in mm
    units = "HD95 in mm" if spec.method != "panoptica" else "lesion-wise HD95 in mm, global HD95 in voxels"
    table = Table(title=f"--challenge {name}: {len(result['cases'])} cases, mean ± std over cases ({units})",
                  title_justify="left")
    table.add_column("metric")
    for region in regions:
        table.add_column(region, justify="right")
    for label, cells in rows:
        table.add_row(label, *cells)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
