"""``seg-edge import nvidia | torch | onnx``: a model trained elsewhere → a verified ONNX artifact with its card."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps, parse_ints

import_app = typer.Typer(name="import", no_args_is_help=True, add_completion=False,
                         help="Import a model trained elsewhere: NVIDIA nnU-Net checkpoints, any PyTorch module, "
                              "any ONNX file.")

OUT_OPTION = typer.Option(..., "--out", "-o", help="Output .onnx file (written only if every check passes).")
OPSET_OPTION = typer.Option(18, "--opset", min=17, help="ONNX opset (>= 17).")
TOLERANCE_OPTION = typer.Option(1e-3, "--tolerance", help="Max |logit| error ONNX Runtime vs torch to accept, "
                                "times the logits' scale (their largest magnitude, at least 1).")
SHAPE_OPTION = typer.Option(None, "--check-shape", help="Spatial sizes of the verification input, e.g. 64,64,64 "
                            "(default: the card's patch).")
NORM_OPTION = typer.Option("stable", "--instance-norm", help="stable (InstanceNorm and 3D GroupNorm as per-axis "
                           "two-pass subgraphs, accurate on ORT CPU) or native (ONNX InstanceNormalization).")
CARD_OPTION = typer.Option(..., "--card", help="Model card JSON (schema 2, docs/CARD.md).")


def _onnx_options(opset: int, tolerance: float, check_shape: str | None, instance_norm: str):
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


def _render(path: Path, size: int, check: str, card, json_out: bool, extra: dict | None = None) -> None:
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


def _export_check(report) -> tuple[str, dict]:
    check = report.card.provenance["export_check"]
    scale = check.get("logit_scale", 1.0)
    text = (f"ONNX Runtime CPU vs torch: max |logit| error {report.max_abs_logit_error:.2e} "
            f"(tolerance {check['tolerance']:g} x logit scale {scale:.3g}, input {check['input_shape']})")
    return text, {"max_abs_logit_error": report.max_abs_logit_error, "tolerance": check["tolerance"],
                  "logit_scale": scale}


@import_app.command("nvidia")
@guarded
def nvidia(
    checkpoint: Path = typer.Argument(..., help="NVIDIA DeepLearningExamples nnU-Net Lightning .ckpt (BraTS21/22)."),
    out_path: Path = OUT_OPTION,
    name: str = typer.Option(None, "--name", help="Model name for the card (default: nvidia-brats21/22)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Card turns on mirroring TTA over every axis, as "
                             "NVIDIA predicts BraTS."),
    opset: int = OPSET_OPTION, tolerance: float = TOLERANCE_OPTION, check_shape: str = SHAPE_OPTION,
    instance_norm: str = NORM_OPTION, json_out: bool = JSON_OPTION,
) -> None:
    """NVIDIA nnU-Net BraTS checkpoint → ONNX with their preprocessing and post-processing in the card."""
    from seg_edge.importers.nvidia import NvidiaOptions, import_nvidia

    options = NvidiaOptions(name=name, tta=tta, onnx=_onnx_options(opset, tolerance, check_shape, instance_norm))
    report = import_nvidia(checkpoint, out_path, options)
    check, extra = _export_check(report)
    _render(report.path, report.size_bytes, check, report.card, json_out, extra)


@import_app.command("torch")
@guarded
def torch_module(
    network: str = typer.Option(..., "--network", help="PKG.MODULE:FACTORY or path/to/file.py:FACTORY returning "
                                "the nn.Module (its code runs: name only code you trust)."),
    network_kwargs: str = typer.Option(None, "--network-kwargs", help='JSON object of FACTORY\'s keyword '
                                       'arguments, e.g. \'{"in_channels": 4}\'.'),
    weights: Path = typer.Option(..., "--weights", help="State dict saved by torch (loaded with weights_only=True)."),
    card: Path = CARD_OPTION,
    out_path: Path = OUT_OPTION,
    opset: int = OPSET_OPTION, tolerance: float = TOLERANCE_OPTION, check_shape: str = SHAPE_OPTION,
    instance_norm: str = NORM_OPTION, json_out: bool = JSON_OPTION,
) -> None:
    """Any PyTorch module + state dict + card → ONNX, verified against torch."""
    from seg_edge.importers.torch import TorchOptions, import_torch, parse_kwargs

    options = TorchOptions(kwargs=parse_kwargs(network_kwargs),
                           onnx=_onnx_options(opset, tolerance, check_shape, instance_norm))
    report = import_torch(network, weights, card, out_path, options)
    check, extra = _export_check(report)
    if report.removed_activation:
        err.print(f"note: the network ends in {escape(report.removed_activation)}: removed from the export, so the "
                  f"graph gives logits and the runtime applies the card's {report.card.outputs.kind} once")
    _render(report.path, report.size_bytes, check, report.card, json_out,
            {**extra, "removed_activation": report.removed_activation})


@import_app.command("onnx")
@guarded
def onnx_file(
    model: Path = typer.Argument(..., help="ONNX file made elsewhere (N, C, spatial in; N, K, spatial out)."),
    card: Path = CARD_OPTION,
    out_path: Path = OUT_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Attach a card to an ONNX file after checking it against the graph's inputs and outputs."""
    from seg_edge.importers.onnx import import_onnx

    report = import_onnx(model, card, out_path)
    removed = f"; final {report.removed_activation} removed (the card's activation is applied by the runtime)"
    check = "card fits the graph's inputs and outputs" + (removed if report.removed_activation else "")
    if report.removed_activation:
        err.print(f"note: the graph ends in {report.removed_activation}: removed, so the graph gives logits and the "
                  f"runtime applies the card's {report.card.outputs.kind} once")
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    _render(report.path, report.size_bytes, check, report.card, json_out,
            {"removed_activation": report.removed_activation, "warnings": list(report.warnings)})


def register(app: typer.Typer) -> None:
    import importlib

    # framework importers with their own option sets live in their own modules
    for name in ("import_nnunet", "import_monai_bundle"):
        try:
            module = importlib.import_module(f"seg_edge.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"seg_edge.cli.{name}":
                raise
            continue
        module.register(import_app, (_onnx_options, _export_check, _render))
    app.add_typer(import_app, name="import")
