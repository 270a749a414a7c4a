"""``seg-edge evaluate``: Dice, IoU, HD95 and friends against ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, LabelScheme, dumps
from seg_edge.errors import InputError


@guarded
def evaluate(
    pred: Path = typer.Argument(..., help="Predicted label map, or a folder of them (<case_id>.nii.gz)."),
    truth: Path = typer.Argument(..., help="Ground truth label map, or a folder (flat or BraTS case folders)."),
    label_scheme: LabelScheme = typer.Option(LabelScheme.brats2021, "--label-scheme", help="ET=4 or ET=3."),
    csv_path: Path = typer.Option(None, "--csv", help="Also write per-case rows to this CSV."),
    report: Path = typer.Option(None, "--report", help="Also write a self-contained HTML report: per-case table, "
                                "Dice box plots, the worst cases' pictures beside the ground truth (needs Pillow)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Score predictions per region (WT, TC, ET) with BraTS conventions for empty regions."""
    from seg_edge.evaluation.evaluate import evaluate as run, write_csv
    from seg_edge.evaluation.metrics import METRICS
    from seg_edge.runtime.regions import REGIONS, et_label

    if csv_path is not None:
        from seg_edge.runtime.outputs import check_targets

        if not csv_path.parent.is_dir():
            raise InputError(f"{csv_path}: folder {csv_path.parent} does not exist (expected an existing folder)")
        check_targets([csv_path], overwrite=True)
    if report is not None:
        from seg_edge.runtime.outputs import check_targets
        from seg_edge.runtime.pictures import require_pillow

        if not report.parent.is_dir():
            raise InputError(f"{report}: folder {report.parent} does not exist (expected an existing folder)")
        check_targets([report], overwrite=True)
        require_pillow()
    result = run(pred, truth, et_label(label_scheme.value))
    if csv_path:
        write_csv(result, csv_path)
    if report is not None:
        from seg_edge.evaluation.html_report import evaluation_html, write_html

        write_html(report, evaluation_html(result, et_label(label_scheme.value)))
        err.print(f"wrote {escape(str(report))}")
    if result["unmatched"]:
        err.print(f"[yellow]warning:[/] {len(result['unmatched'])} case ids without a partner: "
                  f"{escape(', '.join(result['unmatched'][:5]))}")
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


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
