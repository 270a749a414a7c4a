"""What every ``seg-edge import`` command shares: its options, the export settings, and how an import is shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import out
from seg_edge.cli.options import dumps, parse_ints

OUT_OPTION = typer.Option(..., "--out", "-o", help="Output .onnx file (written only if every check passes).")
OPSET_OPTION = typer.Option(18, "--opset", min=17, help="ONNX opset (>= 17).")
TOLERANCE_OPTION = typer.Option(1e-3, "--tolerance", help="Max |logit| error ONNX Runtime vs torch to accept, "
                                "times the logits' scale (their largest magnitude, at least 1).")
SHAPE_OPTION = typer.Option(None, "--check-shape", help="Spatial sizes of the verification input, e.g. 64,64,64 "
                            "(default: the card's patch).")
NORM_OPTION = typer.Option("stable", "--instance-norm", help="stable (InstanceNorm and 3D GroupNorm as per-axis "
                           "two-pass subgraphs, accurate on ORT CPU) or native (ONNX InstanceNormalization).")
CARD_OPTION = typer.Option(..., "--card", help="Model card JSON (schema 2, docs/CARD.md).")


def onnx_options(opset: int, tolerance: float, check_shape: str | None, instance_norm: str) -> Any:
    """The export settings every importer takes, from the shared options (an ``OnnxOptions``)."""
    from seg_edge.choices import InstanceNorm
    from seg_edge.export.onnx import OnnxOptions

    shape = None
    if check_shape:
        shape = parse_ints(check_shape, len(check_shape.split(",")), "--check-shape", "64,64,64")
    return OnnxOptions(opset=opset, tolerance=tolerance, check_shape=shape,
                       instance_norm=InstanceNorm(instance_norm))


def card_rows(card) -> list[tuple[str, str]]:
    """A card in words: what the network reads, what its outputs mean, how it is run, where it came from."""
    inputs, outputs, inf = card.inputs, card.outputs, card.inference
    channels = ", ".join(f"{c.name} ({c.derived or c.normalization})" for c in inputs.channels)
    layout = f"crop {inputs.crop}, axes {list(inputs.axes)}, {inputs.spatial_dims}D"
    if inputs.spacing is not None:
        layout += f", spacing {'×'.join(f'{s:g}' for s in inputs.spacing)} mm"
    if inputs.orientation is not None:
        layout += f", orientation {inputs.orientation}"
    if inputs.layout != "channels_first" or outputs.layout != "channels_first":
        layout += f", tensors {inputs.layout} in, {outputs.layout} out"
    if inputs.slice is not None:
        sl = inputs.slice
        which = f" {sl.range[0]}..{sl.range[1] - 1}" if sl.range else ""
        layout += (f", slices{which} along axis {sl.axis} resized to {list(sl.size)} ({sl.interpolation}), "
                   f"{sl.back} resized back ({sl.back_interpolation})")
    if outputs.kind == "sigmoid":
        meaning = (f"sigmoid {', '.join(outputs.channels)} > {'/'.join(f'{t:g}' for t in outputs.thresholds)}; "
                   f"{outputs.rule}: " + ", ".join(f"{r}→{lab}" for r, lab in outputs.order))
    else:
        meaning = "softmax classes " + ", ".join(f"{i}={c}" for i, c in enumerate(outputs.channels))
    rows = [("name", f"{card.name} (preset {card.preset})"),
            ("input", f"'{inputs.tensor}': {channels}"), ("layout", layout),
            ("output", f"'{outputs.tensor}': {meaning}")]
    if outputs.source_labels:
        rows.append(("source labels", ", ".join(f"{k}→{v}" for k, v in outputs.source_labels.items())))
    rows.append(("window", f"patch {list(inf.patch_size)}, size divisor {inf.size_divisor}, overlap {inf.overlap:g}, "
                           f"{inf.steps} steps, {inf.blend}, {inf.ensemble} network(s), "
                           f"TTA axes {list(inf.tta_axes) or 'off'}, ET rule {'on' if inf.et_rule.enabled else 'off'}"))
    rows.append(("labels", f"{card.label_scheme}, {card.precision}"))
    prov = card.provenance
    rows.append(("source", f"{prov.get('source_framework', '?')}: {prov.get('source_file', '?')} "
                           f"(sha256 {str(prov.get('source_sha256', '?'))[:16]}…)"))
    return rows


def render_import(path: Path, size: int, check: str, card: Any, json_out: bool, extra: dict | None = None) -> None:
    """What an import wrote: its card in words (or ``--json``)."""
    if json_out:
        out.print_json(dumps({"path": str(path), "size_bytes": size, **(extra or {}),
                              "card": dataclasses.asdict(card)}))
        return
    table = Table(title=escape(f"wrote {path} ({size / 1e6:.2f} MB)"), title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("check", escape(check))
    for key, value in card_rows(card):
        table.add_row(key, escape(value))
    out.print(table)


def export_check(report: Any) -> tuple[str, dict]:
    """The export check a report carries, as a line and as JSON fields."""
    check = report.card.provenance["export_check"]
    scale = check.get("logit_scale", 1.0)
    text = (f"ONNX Runtime CPU vs torch: max |logit| error {report.max_abs_logit_error:.2e} "
            f"(tolerance {check['tolerance']:g} x logit scale {scale:.3g}, input {check['input_shape']})")
    return text, {"max_abs_logit_error": report.max_abs_logit_error, "tolerance": check["tolerance"],
                  "logit_scale": scale}
