"""``seg-edge train``: train a preset on BraTS-format case folders."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.choices import TrainPrecision as Precision
from seg_edge.cli.console import err, guarded, out


@guarded
def train(
    data: Path = typer.Argument(..., help="Folder of BraTS-format case folders with *_seg labels."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, log.csv, split.json)."),
    preset: str = typer.Option("edge", "--preset", help="Network preset."),
    patch: int = typer.Option(64, "--patch", min=16, help="Training patch edge (voxels)."),
    batch: int = typer.Option(2, "--batch", min=1, help="Patches per step."),
    epochs: int = typer.Option(40, "--epochs", min=1),
    iters: int = typer.Option(250, "--iters-per-epoch", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: torch's default)."),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop after the epoch that passes this (0: none)."),
    precision: Precision = typer.Option(Precision.auto, "--precision",
                                        help="auto (bf16 autocast on CPU, fp16 on CUDA) or fp32."),
) -> None:
    """Train with Dice + BCE, Adam and ReduceLROnPlateau; resumes from OUT/last.pt if present."""
    from seg_edge.model.train import TrainConfig, train as run

    cfg = TrainConfig(str(data), str(out_dir), preset, patch, batch, epochs, iters, lr, seed, threads,
                      max_minutes, precision=precision.value)
    best = run(cfg, log=lambda s: err.print(s, highlight=False))
    out.print(f"best checkpoint: {best}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
