"""``seg-edge import nvidia | torch | onnx``: a model trained elsewhere → a verified ONNX artifact with its card."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from seg_edge.cli.console import err, guarded
from seg_edge.cli.import_shared import (CARD_OPTION, NORM_OPTION, OPSET_OPTION, OUT_OPTION, SHAPE_OPTION,
                                        TOLERANCE_OPTION, export_check, onnx_options, render_import)
from seg_edge.cli.options import JSON_OPTION

import_app = typer.Typer(name="import", no_args_is_help=True, add_completion=False,
                         help="Import a model trained elsewhere: NVIDIA nnU-Net checkpoints, any PyTorch module, "
                              "any ONNX file.")


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

    options = NvidiaOptions(name=name, tta=tta, onnx=onnx_options(opset, tolerance, check_shape, instance_norm))
    report = import_nvidia(checkpoint, out_path, options)
    check, extra = export_check(report)
    render_import(report.path, report.size_bytes, check, report.card, json_out, extra)


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
                           onnx=onnx_options(opset, tolerance, check_shape, instance_norm))
    report = import_torch(network, weights, card, out_path, options)
    check, extra = export_check(report)
    if report.removed_activation:
        err.print(f"note: the network ends in {escape(report.removed_activation)}: removed from the export, so the "
                  f"graph gives logits and the runtime applies the card's {report.card.outputs.kind} once")
    render_import(report.path, report.size_bytes, check, report.card, json_out,
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
    render_import(report.path, report.size_bytes, check, report.card, json_out,
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
        module.register(import_app)
    app.add_typer(import_app, name="import")
