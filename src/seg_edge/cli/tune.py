"""``seg-edge tune``: measure speed against accuracy on held-out cases and write a tuned profile."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, Backend, dumps
from seg_edge.errors import InputError


def _numbers(text: str | None, what: str, kind: type = float) -> tuple:
    if text is None:
        return ()
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        example = "0.5,0.25" if kind is float else "2,1"
        raise InputError(f"{what} '{text}' (expected comma-separated numbers like {example})") from None


def _windows(text: str | None) -> tuple[tuple[int, ...], ...]:
    """``96x96x96,128x128x128`` → ((96, 96, 96), (128, 128, 128))."""
    if text is None:
        return ()
    try:
        return tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise InputError(f"--windows '{text}' (expected sizes like 96x96x96,128x128x128)") from None


def _front_table(result) -> Table:
    table = Table(title="Pareto front (seconds on the first case vs worst-region Dice; synthetic cases)",
                  title_justify="left")
    for col in ("configuration", "s (case 1)", "s/case", "worst Dice", "status"):
        table.add_column(col, justify="left" if col in ("configuration", "status") else "right")
    for t in result.front():
        mark = " ★" if t is result.chosen else ""
        table.add_row(escape(t.label()) + mark, f"{t.seconds[0]:.2f}", f"{t.mean_s:.2f}", f"{t.worst_dice:.4f}",
                      t.status)
    return table


@guarded
def tune(
    model: Path = typer.Argument(..., help="ONNX model with a seg-edge card (the FP32 reference)."),
    cases: Path = typer.Option(..., "--cases", help="Folder of held-out BraTS-format case folders."),
    budget: float = typer.Option(0.01, "--budget", help="Largest worst-region Dice loss vs the reference labels on "
                                 "unseen cases; half of it is kept in reserve on the tune cases."),
    backend: list[Backend] = typer.Option(None, "--backend", help="Backend(s) to try (default: every CPU one "
                                          "that loads here)."),
    variant: list[Path] = typer.Option(None, "--variant", help="Sibling model files to try too (INT8, FP16)."),
    out_path: Path = typer.Option(None, "--out", "-o", help="Tuned copy to write (default: MODEL.tuned.onnx)."),
    plot: Path = typer.Option(None, "--plot", help="Also draw the front as a PNG."),
    report: Path = typer.Option(None, "--report", help="Also write every trial as JSON."),
    threads: str = typer.Option(None, "--threads", help="Thread counts to try, e.g. 2,1 (default: all cores and "
                                "half)."),
    batches: str = typer.Option("1,2", "--batches", help="Windows per network call to try."),
    streams: str = typer.Option("1,2", "--streams", help="Parallel windows (streams sharing the threads) to try."),
    windows: str = typer.Option(None, "--windows", help="Window sizes to try, e.g. 96x96x96,160x192x160 "
                                "(default: the patch, ~4/3, ~5/3, 2× it and the whole crop)."),
    overlaps: str = typer.Option("0.5,0.375,0.25,0.125,0", "--overlaps", help="Overlaps to try (at most the "
                                 "card's)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Find the fastest configuration whose labels stay within --budget of the reference's, and write it
    into a copy of the model as its inference profile (predict uses it on this machine)."""
    from seg_edge.evaluation.tune import TuneOptions, tune as run
    from seg_edge.evaluation.tune_report import plot_front, summary, write_tuned

    if plot:  # drawn after the whole search: a missing matplotlib is told before the search starts
        import matplotlib  # noqa: F401

    options = TuneOptions(budget, tuple(b.value for b in backend or []), tuple(variant or []),
                          threads=_numbers(threads, "--threads", int), batches=_numbers(batches, "--batches", int),
                          streams=_numbers(streams, "--streams", int), windows=_windows(windows),
                          overlaps=_numbers(overlaps, "--overlaps"))
    target = out_path or model.with_name(model.name.removesuffix(".onnx") + ".tuned.onnx")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("tune", total=None)
        result = run(model, cases, options,
                     lambda message, done, total: bar.update(task, description=escape(message[:80]),
                                                             completed=done, total=total))
    data = summary(result)
    if report:
        report.write_text(json.dumps(data, indent=2))
    if plot:
        plot_front(result, plot)
    written = write_tuned(result, target) if result.chosen else None
    data["written"] = str(written) if written else None
    if json_out:
        out.print_json(dumps(data))
    else:
        _render(result, written)
    if written is None:
        raise typer.Exit(1)


def _render(result, written: Path | None) -> None:
    from seg_edge.evaluation.tune import acceptance_threshold

    for name, why in result.skipped:
        err.print(f"[dim]skipped {escape(name)}: {escape(why)}[/]")
    out.print(_front_table(result))
    ref = sum(result.reference_seconds) / len(result.reference_seconds)
    counts = {s: sum(t.status == s for t in result.trials) for s in dict.fromkeys(t.status for t in result.trials)}
    out.print(f"{len(result.trials)} configurations: " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + f"; {result.wall_s:.0f} s on {len(result.cases)} cases")
    if result.chosen is None:
        err.print(f"[bold red]no configuration within budget {result.budget}[/] (Dice ≥ "
                  f"{acceptance_threshold(result.budget):g} on the tune cases); nothing written")
        return
    c = result.chosen
    out.print(f"chosen: {escape(c.label())}: {c.mean_s:.2f} s/case vs reference {ref:.2f} s/case "
              f"({ref / c.mean_s:.2f}×), worst-region Dice {c.worst_dice:.4f}")
    out.print(f"wrote {escape(str(written))}: predict uses its profile on this machine (--reference for the card's)")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
