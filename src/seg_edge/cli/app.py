"""Typer application, the error table (exception → one line + exit code) and the entry point."""

from __future__ import annotations

import atexit
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from seg_edge import __version__
from seg_edge.errors import (ArtifactError, BackendUnavailable, InputError, ParityError, SegEdgeError,
                             SessionError)

# Off a terminal (a CI log, a file, a pipe) rich lays out for 80 columns, and the parity, bench and
# summary tables then cut their cells ("SynBraTS_3007_0…", "5.0e-…"): lay out for OFF_TERMINAL_WIDTH
# instead, unless COLUMNS says otherwise. Tables stay as narrow as their contents.
OFF_TERMINAL_WIDTH = 200


def _width(stream: Any) -> int | None:
    if os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()):
        return None  # rich's own choice: the terminal's width, or COLUMNS
    return OFF_TERMINAL_WIDTH


err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))
out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
BUG_HINT = " — this is a bug in seg-edge: rerun with --debug and report the traceback"


# Typer ≥ 0.23 vendors click: find its exception base through a public class rather than importing it.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(typer.core.TyperGroup):
    """Click's usage errors (bad option values, unknown options) as one line, like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                err.print(f"[bold red]input error:[/] {escape(' '.join(exc.format_message().split()))}")
            sys.exit(exc.exit_code)
        except RuntimeError as exc:
            if type(exc).__name__ != "Abort":
                raise
            err.print("[bold red]interrupted[/]")
            sys.exit(130)
        if result == 130:
            err.print("[bold red]interrupted:[/] nothing was written for the unfinished case")
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(name="seg-edge", cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, help="Segment brain-tumour MRI with a 3D U-Net on edge hardware.")
_state = {"debug": False}

# exception class → (label, exit code). Usage errors are Typer's (exit 2).
ERROR_TABLE: list[tuple[type[BaseException], str, int]] = [
    (InputError, "input error", 2),
    (ArtifactError, "model error", 2),
    (BackendUnavailable, "backend unavailable", 3),
    (ParityError, "parity error", 1),
    (SessionError, "backend error", 1),
    (SegEdgeError, "error", 1),
]


def exit_for(exc: BaseException) -> tuple[str, int]:
    for cls, label, code in ERROR_TABLE:
        if isinstance(exc, cls):
            return label, code
    return "internal error", 70


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; known errors become one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # the one place where every failure is turned into a message
            if _state["debug"]:
                raise
            label, code = exit_for(exc)
            message = str(exc) if isinstance(exc, SegEdgeError) else f"{type(exc).__name__}: {exc}"
            hint = "" if isinstance(exc, SegEdgeError) else BUG_HINT
            err.print(f"[bold red]{label}:[/] {escape(message)}{escape(hint)}", highlight=False)
            raise typer.Exit(code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"seg-edge {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """seg-edge: export, quantize and run a brain-tumour U-Net; segment NIfTI scans."""
    _state["debug"] = debug


def _register() -> None:
    from seg_edge.cli import (bench, build_engine, evaluate, export, export_triton, import_cmd, info, lint, parity,
                              predict, quantize, serve, synth, train, tune)

    for module in (predict, export, export_triton, import_cmd, info, quantize, build_engine, lint, parity, bench, synth,
                   train, evaluate, serve, tune):
        module.register(app)


_register()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so staged outputs and temporary files are removed."""
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    _exit(code)


def _exit(code: object) -> NoReturn:
    """End the process as a normal exit does — non-daemon threads joined, atexit handlers run (Ray's
    shutdown, temporary files, logging), stdout and stderr flushed — but without the interpreter's
    teardown of every module and object after that: 0.13 s (median of 8) after a single-case predict,
    spent in the ML runtimes' destructors, for nothing the command still needs."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    # the first two steps of CPython's own finalisation (Py_FinalizeEx), by their (undocumented) names:
    # threading's exit hooks (idle thread-pool workers are told to stop) and the join of non-daemon
    # threads, then the atexit handlers
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream
            pass
    os._exit(code)
