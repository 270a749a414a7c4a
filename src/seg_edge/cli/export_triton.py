"""``seg-edge export-triton``: a Triton Inference Server model repository for a model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from seg_edge.cli.console import guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps
from seg_edge.choices import TritonBackend, TritonDevice


@guarded
def export_triton(
    model: Path = typer.Argument(..., help="ONNX model with a seg-edge card, or a TensorRT plan with its .json card."),
    repo: Path = typer.Option(..., "--repo", help="Model repository folder; the model goes to REPO/<name>/."),
    backend: TritonBackend = typer.Option(TritonBackend.onnxruntime, "--backend", help="Triton backend: "
                                          "onnxruntime (with TensorRT acceleration on a GPU), tensorrt_plan (a plan "
                                          "from build-engine) or openvino (CPU)."),
    max_batch: int = typer.Option(4, "--max-batch", min=0, help="Largest batch of windows the server forms "
                                  "(dynamic batching); 0: no batching."),
    instances: int = typer.Option(1, "--instances", min=1, help="Model instances (per GPU, or on the CPU)."),
    device: TritonDevice = typer.Option(None, "--device", help="Instance kind: gpu (default) or cpu (openvino: "
                                        "always cpu)."),
    name: str = typer.Option(None, "--name", help="Triton model name (default: from the card's name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace REPO/<name>/."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write REPO/<name>/config.pbtxt, REPO/<name>/1/model.onnx (or model.plan) and the card beside them."""
    from seg_edge.export.triton import CARD_FILE, TritonOptions, write_triton_repo

    options = TritonOptions(backend, max_batch, instances, device, name, overwrite=overwrite)
    folder = write_triton_repo(model, repo, options)
    files = sorted(str(p.relative_to(repo)) for p in folder.rglob("*") if p.is_file())
    if json_out:
        out.print_json(dumps({"model": folder.name, "folder": str(folder), "files": files, "card": CARD_FILE,
                              "config": (folder / "config.pbtxt").read_text()}))
        return
    out.print(f"wrote {escape(str(folder))}: {', '.join(map(escape, files))}")
    out.print(f"serve: tritonserver --model-repository {escape(str(repo))}   then: seg-edge predict CASE "
              f"--model {escape(str(model))} --backend triton --url HOST:8001/{escape(folder.name)}")


def register(app: typer.Typer) -> None:
    app.command("export-triton")(export_triton)
