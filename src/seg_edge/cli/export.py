"""``seg-edge export``: torch checkpoint → verified ONNX with a model card."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.choices import InstanceNorm
from seg_edge.cli.console import guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps, parse_triplet


@guarded
def export(
    checkpoint: Path = typer.Argument(..., help="State dict saved by torch (loaded with weights_only=True)."),
    preset: str = typer.Option("edge", "--preset", help="Network preset: edge or nvidia-brats21."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .onnx file."),
    name: str = typer.Option(None, "--name", help="Model name for the card (default: the preset)."),
    opset: int = typer.Option(18, "--opset", min=17, help="ONNX opset (>= 17)."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Max |logit| error ORT vs torch to accept, times "
                                   "the logits' scale (their largest magnitude, at least 1)."),
    check_shape: str = typer.Option(None, "--check-shape", help="X,Y,Z of the verification input "
                                    "(default: the preset's patch)."),
    provenance: Path = typer.Option(None, "--provenance", help="JSON object merged into the card's provenance "
                                    "(training data, recipe, measured Dice)."),
    instance_norm: InstanceNorm = typer.Option(InstanceNorm.stable, "--instance-norm",
                                               help="stable (per-axis two-pass subgraph, accurate on ORT CPU) or "
                                               "native (ONNX InstanceNormalization)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Export to one self-contained ONNX file; verified with ONNX Runtime before it is written."""
    from seg_edge.export.onnx import ExportOptions, export_onnx

    shape = parse_triplet(check_shape, "--check-shape") if check_shape else None
    extra = _read_provenance(provenance) if provenance else None
    report = export_onnx(checkpoint, out_path, ExportOptions(preset=preset, name=name, opset=opset,
                                                             tolerance=tolerance, check_shape=shape,
                                                             instance_norm=instance_norm,
                                                             extra_provenance=extra))
    if json_out:
        out.print_json(dumps({"path": str(report.path), "size_bytes": report.size_bytes,
                              "max_abs_logit_error": report.max_abs_logit_error}))
        return
    out.print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {opset}); "
              f"ORT CPU vs torch max |logit| error {report.max_abs_logit_error:.2e} "
              f"(tolerance {tolerance:g})")


def _read_provenance(path: Path) -> dict:
    import json

    from seg_edge.errors import InputError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable provenance JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: provenance must be a JSON object")
    return data


def register(app: typer.Typer) -> None:
    app.command("export")(export)
