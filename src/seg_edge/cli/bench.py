"""``seg-edge bench``: network latency per window and end-to-end stage times on a case."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, THREADS_OPTION, Backend, PrecisionHint, dumps, parse_sizes

Cell = Callable[..., str]  # one table cell from a result


def _shape(text: str | None, batch: int, spatial_dims: int = 3) -> tuple[int, ...] | None:
    """N,C,<spatial> from ``--shape C,<spatial>``: as many spatial sizes as the model has axes."""
    return None if text is None else (batch,) + parse_sizes(text, spatial_dims, "--shape", channels=True)


def _shapes(text: str | None, batch: int, models: list[Path]) -> dict[Path, tuple[int, ...] | None]:
    """``--shape`` parsed per model, the count of sizes taken from each model's card."""
    if text is None:
        return {m: None for m in models}
    from seg_edge.artifact import load_artifact

    return {m: _shape(text, batch, load_artifact(m).card.inputs.spatial_dims) for m in dict.fromkeys(models)}


@guarded
def bench(
    models: list[Path] = typer.Argument(..., help="One or more ONNX models (compared side by side)."),
    backend: list[Backend] = typer.Option([Backend.onnxruntime], "--backend", help="Backend(s); all pairs run."),
    case: Path = typer.Option(None, "--case", help="Also time the whole pipeline on this case folder."),
    shape: str = typer.Option(None, "--shape", help="Network input C,X,Y,Z (2D models: C,H,W; default: "
                              "channels × the card's patch)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Windows per network call."),
    warmup: int = typer.Option(2, "--warmup", min=0),
    iters: int = typer.Option(10, "--iters", min=1, help="Timed network calls."),
    runs: int = typer.Option(3, "--runs", min=1, help="End-to-end runs per pair (median reported)."),
    cold_start: bool = typer.Option(True, "--cold-start/--no-cold-start", help="Time a fresh predict process."),
    compare: bool = typer.Option(False, "--compare", help="Add ratios against the first model/backend."),
    threads: int = THREADS_OPTION,
    precision_hint: list[PrecisionHint] = typer.Option(None, "--precision-hint", help="OpenVINO precision(s); "
                                                       "several compare side by side."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Benchmark latency (network only, and end to end with --case); ratios with --compare."""
    from seg_edge.evaluation.bench import bench_network, bench_pipeline

    hints: list[str | None] = [h.value for h in dict.fromkeys(precision_hint or [])] or [None]
    pairs = [(m, b.value, h) for m in models for b in dict.fromkeys(backend)
             for h in (hints if b.value == "openvino" else [None])]
    dims = _shapes(shape, batch, models)
    network, pipeline = [], []
    for model, name, hint in pairs:
        err.print(f"network: {escape(str(model))} / {name}{' ' + hint if hint else ''}")
        network.append(bench_network(model, name, dims[model], warmup, iters, threads, hint))
        if case is not None:
            err.print(f"pipeline: {escape(str(model))} / {name} on {escape(case.name)}")
            pipeline.append(bench_pipeline(model, name, case, runs, threads, cold_start, hint))
    if json_out:
        out.print_json(dumps({"network": [{**dataclasses.asdict(r), **r.stats()} for r in network],
                              "pipeline": [dataclasses.asdict(r) for r in pipeline]}))
        return
    out.print(_network_table(network, compare))
    if pipeline:
        out.print(_pipeline_table(pipeline, compare))


def _label(r) -> str:
    return escape(f"{Path(r.model).name}\n{r.backend}")


def _table(title: str, results: list[Any], rows: list[tuple[str, Cell]]) -> Table:
    """Metrics down, model/backend pairs across: fits a terminal for a handful of pairs."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("", no_wrap=True)
    for r in results:
        table.add_column(_label(r), justify="right", no_wrap=True)
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in results))
    return table


def _network_table(results, compare: bool) -> Table:
    base = results[0].stats()["mean_s"]
    rows: list[tuple[str, Cell]] = [(f"{k} (s)", lambda r, k=k: f"{r.stats()[k + '_s']:.3f}")
            for k in ("mean", "p50", "p90", "p99", "min", "max")]
    rows += [("windows/s", lambda r: f"{r.stats()['windows_per_s']:.2f}"),
             ("Mvoxel/s", lambda r: f"{r.stats()['mvoxel_per_s']:.2f}"),
             ("GFLOP per call", lambda r: f"{r.gflop:.1f}" if r.gflop else "n/a"),
             ("GFLOP/s", lambda r: f"{r.stats()['gflop_per_s']:.1f}" if r.gflop else "n/a")]
    if compare:
        rows.append(("speed-up vs first", lambda r: f"{base / r.stats()['mean_s']:.2f}×"))
    return _table(f"network only, input {results[0].shape}", results, rows)


def _pipeline_table(results, compare: bool) -> Table:
    base = results[0].stages_s["total"]
    rows: list[tuple[str, Cell]] = [(f"{k} (s)", lambda r, k=k: f"{r.stages_s[k]:.2f}")
            for k in ("load", "preprocess", "inference", "postprocess", "write", "total")]
    rows += [("non-network share", lambda r: f"{100 * (1 - r.stages_s['inference'] / r.stages_s['total']):.1f} %"),
             ("cold start (s)", lambda r: f"{r.cold_start_s:.2f}" if r.cold_start_s else "-"),
             ("peak RSS (MB)", lambda r: f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-")]
    if compare:
        rows.append(("speed-up vs first", lambda r: f"{base / r.stages_s['total']:.2f}×"))
    return _table(f"end to end on {escape(results[0].case)} (median of runs)", results, rows)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
