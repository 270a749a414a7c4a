"""``seg-edge serve``: the web page and HTTP API (needs the ``serve`` extra: FastAPI, uvicorn, Pillow)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from seg_edge.cli.console import err, guarded
from seg_edge.cli.options import THREADS_OPTION, Backend, model_path
from seg_edge.errors import InputError, MissingExtra


def default_data() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "seg-edge" / "serve"


def _require_extra() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "python_multipart", "PIL"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(missing[0], needed_for="seg-edge serve")


@guarded
def serve(
    model: Path = typer.Option(None, "--model", "-m", help="ONNX model with a seg-edge card (default: shipped)."),
    backend: Backend = typer.Option(None, "--backend", help="Inference backend (default: as predict chooses, the "
                                    "tuned profile's on the machine it was measured on, else onnxruntime)."),
    reference: bool = typer.Option(False, "--reference", help="Run the card's own configuration, not its tuned "
                                   "profile (seg-edge tune)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (the API has no authentication: "
                             "keep it on localhost or behind a proxy that has)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    data: Path = typer.Option(None, "--data", help="Job store: uploads while they wait, results after "
                              "(default: $XDG_DATA_HOME/seg-edge/serve). Finished jobs survive a restart."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", min=0.001, help="Largest file accepted, per "
                                        "file; a larger upload is cut off while it streams."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Cases segmented at once; each worker "
                                "holds its own loaded model and runs one case at a time."),
    threads: int = THREADS_OPTION,
) -> None:
    """Serve the upload-and-view page and the HTTP API (OpenAPI at /docs) with one loaded model per worker."""
    _require_extra()
    import uvicorn

    from seg_edge.serve.app import create_app
    from seg_edge.serve.jobs import ServeConfig

    folder = data or default_data()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder (expected a folder for the job store)")
    config = ServeConfig(model=model_path(model), data=folder, backend=backend.value if backend else None,
                         threads=threads, workers=workers, max_upload_mb=max_upload_mb, use_profile=not reference)
    app = create_app(config)
    note = app.state.pool.segmenters[0].profile_note
    if note:  # the same line predict prints: which configuration the jobs run
        err.print(note, markup=False, highlight=False)
    err.print(f"seg-edge serve: http://{host}:{port}/  (API docs /docs; jobs in {folder}; "
              f"{workers} worker{'s' if workers > 1 else ''}; synthetic-data model, not for clinical use)",
              markup=False, highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
