"""``seg-edge lint``: is an ONNX model ready for TensorRT? Runs on the CPU; the seg-edge card is optional."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from seg_edge.cli.console import guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps

CARD_NOTES = {
    "absent": "no seg-edge card: checked the graph only",
    "valid": "checked the graph and its seg-edge card",
    "invalid": "checked the graph; its seg-edge card is invalid",
}


@guarded
def lint(
    model: Path = typer.Argument(..., help="Any ONNX model; a seg-edge card, if present, is checked too."),
    target: str = typer.Option("tensorrt", "--target", help="Only 'tensorrt' for now."),
    trt_version: str = typer.Option("10.3", "--trt-version", help="TensorRT version to check against "
                                    "(JetPack 6: 10.3)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """One line per finding; exit 0 when clean, 1 with findings."""
    from seg_edge.errors import InputError
    from seg_edge.export.lint import lint_model

    if target != "tensorrt":
        raise InputError(f"--target {target} (expected tensorrt)")
    report = lint_model(model, trt_version)
    findings = report.findings
    if json_out:
        out.print_json(dumps({"model": str(model), "trt_version": trt_version, "card": report.card,
                              "findings": [f.__dict__ for f in findings]}))
    else:
        out.print(f"{escape(str(model))}: {CARD_NOTES[report.card]}")
        for finding in findings:
            out.print(escape(str(finding)))
        if not findings:
            out.print(f"{escape(str(model))}: ready for TensorRT {escape(trt_version)} (no findings)")
    if findings:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("lint")(lint)
