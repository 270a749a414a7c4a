"""What every command shares: the two consoles, ``--debug``, and ``guarded`` — an error turned into one line
on stderr and the exit code of its class (the table is ``seg_edge.errors``). Imports no command module, so
that each command module imports on its own."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from seg_edge.errors import MissingExtra, SegEdgeError, error_label

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
settings = {"debug": False}  # set by the app's --debug


def known_error(exc: BaseException) -> SegEdgeError | None:
    """``exc`` as an error seg-edge explains: itself, a missing extra for an absent optional package, or None."""
    if isinstance(exc, SegEdgeError):
        return exc
    if isinstance(exc, ModuleNotFoundError):
        return MissingExtra.from_import(exc)
    return None


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line (rich markup) a failure is shown as, and the exit code."""
    known = known_error(exc)
    if known is not None:
        label, code = error_label(known)
        return f"[bold red]{label}:[/] {escape(str(known))}", code
    label, code = error_label(exc)
    return f"[bold red]{label}:[/] {escape(f'{type(exc).__name__}: {exc}')}{escape(BUG_HINT)}", code


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body; every failure becomes one line on stderr and an exit code (--debug: the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # the one place where every failure is turned into a message
            if settings["debug"]:
                raise
            line, code = error_line(exc)
            err.print(line, highlight=False)
            raise typer.Exit(code) from None

    return wrapper
