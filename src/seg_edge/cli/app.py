"""Typer application, the error table (exception → one line + exit code) and the entry point."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from seg_edge import __version__
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError, ParityError, SegEdgeError

app = typer.Typer(name="seg-edge", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Segment brain-tumour MRI with a 3D U-Net on edge hardware.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_state = {"debug": False}

# exception class → (label, exit code). Usage errors are Typer's (exit 2).
ERROR_TABLE: list[tuple[type[BaseException], str, int]] = [
    (InputError, "input error", 2),
    (ArtifactError, "model error", 2),
    (BackendUnavailable, "backend unavailable", 3),
    (ParityError, "parity error", 1),
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
            hint = "" if isinstance(exc, SegEdgeError) else " (run with --debug for the traceback)"
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
    from seg_edge.cli import (bench, build_engine, evaluate, export, info, lint, parity, predict, quantize, synth,
                              train)

    for module in (predict, export, info, quantize, build_engine, lint, parity, bench, synth, train, evaluate):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
