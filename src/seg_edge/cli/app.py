"""The Typer application: its options, its one-line usage errors, the commands it registers, the entry point.

The consoles and ``guarded`` (an error → one line + exit code) are in ``cli.console``; the table of errors
is ``seg_edge.errors``."""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.markup import escape

from seg_edge import __version__
from seg_edge.cli.console import err, out, settings

# Typer ≥ 0.23 vendors click: find its exception base through a public class rather than importing it.
_ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(typer.core.TyperGroup):
    """Click's usage errors (bad option values, unknown options) as one line, like every other error."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a command: its help, as click shows it
                exc.show()
            else:
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


# rich_markup_mode=None: help texts are plain text, not rich markup. In markup a value such as
# "HOST:PORT[/MODEL]" is a closing tag, and --help crashed with rich's MarkupError; escaping each text
# would have to be remembered in every command, and markdown mode rewrites '*' and '_'. Set on the root,
# it holds for every command and sub-group (Typer passes the root's mode down).
app = typer.Typer(name="seg-edge", cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Segment brain-tumour MRI with a 3D U-Net on edge hardware.")


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
    settings["debug"] = debug


def _register() -> None:
    from seg_edge.cli import (bench, build_engine, evaluate, export, export_triton, import_cmd, info, lint, listen,
                              parity, predict, quantize, serve, synth, train, tune)

    for module in (predict, export, export_triton, import_cmd, info, quantize, build_engine, lint, parity, bench, synth,
                   train, evaluate, serve, listen, tune):
        module.register(app)


_register()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so staged outputs and temporary files are removed."""
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: exits through SystemExit with the command's code, as any Python program
    (non-daemon threads joined, atexit handlers run, streams flushed, modules torn down)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    finally:
        # The interpreter's teardown after a predict spent 0.3-0.4 s (machine under load; py-spy: in the final
        # garbage collections of Py_FinalizeEx, not in a runtime's destructor) re-scanning every object the
        # command left. Frozen objects are skipped by those collections and still freed as modules are
        # cleared; only reference cycles left at exit go uncollected, which the process's end reclaims.
        gc.freeze()
