"""``seg-edge info``: print a model's card (checked against its graph) and the graph's inputs/outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.app import guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps, model_path


@guarded
def info(model: Path = typer.Argument(None, help="ONNX model or TensorRT plan (default: the shipped model)."),
         json_out: bool = JSON_OPTION) -> None:
    """Show what a model expects and produces (its seg-edge card)."""
    from seg_edge.artifact import load_artifact

    artifact = load_artifact(model_path(model))
    card = dataclasses.asdict(artifact.card)
    graph = {"inputs": [dataclasses.asdict(t) for t in artifact.inputs],
             "outputs": [dataclasses.asdict(t) for t in artifact.outputs]}
    if json_out:
        out.print_json(dumps({"path": str(artifact.path), "kind": artifact.kind,
                              "size_bytes": artifact.path.stat().st_size, "card": card,
                              **({"graph": graph} if artifact.kind == "onnx" else {})}))
        return
    table = Table(title=f"{artifact.path} ({artifact.kind}, {artifact.path.stat().st_size / 1e6:.1f} MB)",
                  title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in card.items():
        if key == "provenance":
            continue
        table.add_row(key, escape(value if isinstance(value, str) else json.dumps(value)))
    for what, tensors in (("graph.input", artifact.inputs), ("graph.output", artifact.outputs)):
        for tensor in tensors:
            table.add_row(what, escape(tensor.describe()))
    for key, value in card["provenance"].items():
        table.add_row(f"provenance.{key}", escape(value if isinstance(value, str) else json.dumps(value)))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
