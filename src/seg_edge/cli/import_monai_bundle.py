"""``seg-edge import monai-bundle BUNDLE_DIR --out model.onnx``: a MONAI bundle → a verified ONNX artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.cli.console import guarded
from seg_edge.cli.import_shared import (NORM_OPTION, OPSET_OPTION, OUT_OPTION, SHAPE_OPTION, TOLERANCE_OPTION,
                                        export_check, onnx_options, render_import)
from seg_edge.cli.options import JSON_OPTION


def register(import_app: typer.Typer) -> None:
    """Add ``monai-bundle`` to ``seg-edge import``."""

    @import_app.command("monai-bundle")
    @guarded
    def monai_bundle(
        bundle_dir: Path = typer.Argument(..., help="MONAI bundle folder: configs/metadata.json, "
                                          "configs/inference.json, models/model.pt (its config's expressions run: "
                                          "import only bundles you trust)."),
        out_path: Path = OUT_OPTION,
        name: str = typer.Option(None, "--name", help="Model name for the card (default: the bundle's name)."),
        opset: int = OPSET_OPTION, tolerance: float = TOLERANCE_OPTION, check_shape: str = SHAPE_OPTION,
        instance_norm: str = NORM_OPTION, json_out: bool = JSON_OPTION,
    ) -> None:
        """MONAI bundle → ONNX with its transforms in the card; a transform the card cannot state is refused."""
        from seg_edge.importers.monai_bundle import BundleOptions, import_monai_bundle

        options = BundleOptions(name=name, onnx=onnx_options(opset, tolerance, check_shape, instance_norm))
        report = import_monai_bundle(bundle_dir, out_path, options)
        check, extra = export_check(report)
        render_import(report.path, report.size_bytes, check, report.card, json_out, extra)
