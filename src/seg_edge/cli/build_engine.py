"""``seg-edge build-engine``: compile an ONNX model to a TensorRT plan (+ sidecar card)."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.choices import EnginePrecision as Precision
from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps, parse_sizes


def profile_sizes(spatial_dims: int, min_xyz: str | None, opt_xyz: str | None,
                  max_xyz: str | None) -> tuple[tuple[int, ...] | None, ...]:
    """--min/--opt/--max parsed as ``spatial_dims`` sizes each (X,Y,Z for 3D models, H,W for 2D); None if absent."""
    return tuple(parse_sizes(v, spatial_dims, n) if v else None
                 for v, n in ((min_xyz, "--min"), (opt_xyz, "--opt"), (max_xyz, "--max")))


@guarded
def build_engine(
    model: Path = typer.Argument(..., help="ONNX model (FP32, FP16 or INT8 Q/DQ) with a seg-edge card."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output plan; the card goes to <plan>.json."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="int8 needs a Q/DQ model."),
    workspace_gb: float = typer.Option(2.0, "--workspace-gb", min=0.1, help="Builder workspace cap (Jetson: 1-2)."),
    min_xyz: str = typer.Option(None, "--min", help="Profile minimum X,Y,Z (2D models: H,W; default: the "
                                "card's window)."),
    opt_xyz: str = typer.Option(None, "--opt", help="Profile optimum X,Y,Z (2D: H,W)."),
    max_xyz: str = typer.Option(None, "--max", help="Profile maximum X,Y,Z (2D: H,W)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Largest window batch the engine accepts."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="Timing cache file, reused and updated."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Build a TensorRT engine on this GPU (plans are tied to GPU and TensorRT version)."""
    from seg_edge.artifact import load_artifact
    from seg_edge.export.tensorrt import BuildOptions, build_engine as run
    from seg_edge.runtime.sessions.plans import make_profile

    card = load_artifact(model).card
    sizes = profile_sizes(card.inputs.spatial_dims, min_xyz, opt_xyz, max_xyz)
    profile = make_profile(card, batch, *sizes)
    meta = run(model, out_path, BuildOptions(precision, workspace_gb, profile, timing_cache),
               log=lambda s: err.print(s, highlight=False, markup=False))
    if json_out:
        out.print_json(dumps(meta))
        return
    info = meta["tensorrt"]
    out.print(f"wrote {out_path} ({info['precision']}, TensorRT {info['version']}, {info['gpu']} "
              f"sm {info['compute_capability']}, {info['build_seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
