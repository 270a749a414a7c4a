"""``seg-edge import nnunet``: an nnU-Net v2 trained model folder → one verified ONNX artifact."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from seg_edge.card import MODALITIES
from seg_edge.cli.console import err, guarded
from seg_edge.cli.import_shared import (NORM_OPTION, OPSET_OPTION, OUT_OPTION, SHAPE_OPTION, TOLERANCE_OPTION,
                                        export_check, onnx_options, render_import)
from seg_edge.cli.options import JSON_OPTION
from seg_edge.errors import InputError


def _folds(text: str | None) -> tuple | None:
    if text is None:
        return None
    folds: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if part.isdigit():
            folds.append(int(part))
        elif part == "all":
            folds.append(part)
        else:
            raise InputError(f"--folds '{text}' (expected fold numbers such as 0,1,2,3,4, or all)")
    return tuple(dict.fromkeys(folds))


def _channels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [v.strip().lower() for v in text.split(",")]
    if len(set(names)) != len(names) or any(n not in MODALITIES for n in names):
        raise InputError(f"--channels '{text}' (expected distinct names from flair,t1,t1ce,t2 in nnU-Net's "
                         "channel order)")
    return names


def register(import_app: typer.Typer) -> None:
    """Add ``nnunet`` to ``seg-edge import``."""
    @import_app.command("nnunet")
    @guarded
    def nnunet(
        model_folder: Path = typer.Argument(..., help="nnU-Net v2 trained model folder (TRAINER__PLANS__CONFIG: "
                                            "dataset.json, plans.json, fold_N/)."),
        out_path: Path = OUT_OPTION,
        configuration: str = typer.Option(None, "--configuration", help="Default: the one the folds were trained "
                                          "with, e.g. 3d_fullres."),
        folds: str = typer.Option(None, "--folds", help="Folds to ensemble, e.g. 0,1,2,3,4 (default: every fold "
                                  "with the checkpoint). Their logits are averaged inside one graph."),
        checkpoint: str = typer.Option("checkpoint_final.pth", "--checkpoint", help="Checkpoint file in each fold."),
        channels: str = typer.Option(None, "--channels", help="seg-edge modality of each nnU-Net channel, in its "
                                     "order, e.g. t1,t1ce,t2,flair (default: from dataset.json's channel_names)."),
        labels: str = typer.Option(None, "--labels", help="BraTS label of each nnU-Net label value, e.g. "
                                   "1=ED,2=NCR,3=ET (default for Dataset137-style region models)."),
        name: str = typer.Option(None, "--name", help="Model name for the card."),
        opset: int = OPSET_OPTION, tolerance: float = TOLERANCE_OPTION, check_shape: str = SHAPE_OPTION,
        instance_norm: str = NORM_OPTION, json_out: bool = JSON_OPTION,
    ) -> None:
        """nnU-Net v2 model folder → ONNX with nnU-Net's preprocessing, windows and mirroring in the card."""
        from seg_edge.importers.nnunet import NnunetOptions, import_nnunet
        from seg_edge.importers.nnunet_plans import parse_label_map

        options = NnunetOptions(configuration=configuration, folds=_folds(folds), checkpoint=checkpoint,
                                channels=_channels(channels),
                                labels=parse_label_map(labels), name=name,
                                onnx=onnx_options(opset, tolerance, check_shape, instance_norm))
        report = import_nnunet(model_folder, out_path, options)
        for note in options.notes:
            err.print(f"note: {escape(note)}")
        check, extra = export_check(report)
        render_import(report.path, report.size_bytes, check, report.card, json_out, extra)
