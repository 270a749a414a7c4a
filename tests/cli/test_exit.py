"""The entry point ends the process as any Python program does (SystemExit, the interpreter's own
finalisation), and nothing in src/ reaches for CPython's private names to do otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import seg_edge

SRC = Path(seg_edge.__file__).resolve().parent

# A command added for the test beside the real ones; it leaves work for the exit to finish.
SCRIPT = """
import atexit, gc, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from seg_edge.cli.app import app, main

@app.command("leave-work")
def leave_work(message: str = "") -> None:
    atexit.register(lambda: print("atexit ran", "frozen" if gc.get_freeze_count() else "not frozen", flush=True))
    pool = ThreadPoolExecutor(1)  # never shut down: its idle worker must not hold the exit
    pool.submit(time.sleep, 0.01).result()
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
    print("buffered, not flushed", end="")
    if message:
        sys.exit(message)

sys.argv = ["seg-edge", *{argv!r}]
main()
"""


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(argv=list(argv))], capture_output=True, text=True,
                          timeout=60)


def test_exit_joins_threads_runs_atexit_and_flushes():
    result = _run("leave-work")
    assert result.returncode == 0, result.stderr
    assert "thread finished" in result.stdout and "atexit ran" in result.stdout
    assert "buffered, not flushed" in result.stdout
    assert "atexit ran frozen" in result.stdout  # the final collections skip what the command left (cli.app.main)


def test_exit_with_a_message_is_status_1():
    result = _run("leave-work", "--message", "no model given")
    assert result.returncode == 1 and result.stderr.strip() == "no model given"
    assert "thread finished" in result.stdout and "atexit ran" in result.stdout


def test_error_exit_code_reaches_the_process():
    result = _run("info", "/nonexistent/model.onnx")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("model error:") or result.stderr.startswith("input error:"), result.stderr


# module attributes and imports by a private name: sys._getframe, os._exit, threading._shutdown,
# atexit._run_exitfuncs, `from threading import _shutdown` (dunders such as sys.__stdout__ are public)
_STDLIB = r"(?:sys|os|threading|atexit|gc|importlib(?:\.\w+)?|inspect|types|io|signal|multiprocessing|builtins|" \
          r"collections|functools|weakref|warnings|typing|abc|socket|subprocess|concurrent\.futures|asyncio|queue|" \
          r"tempfile|shutil|ctypes|_thread)"
PRIVATE = re.compile(rf"\b{_STDLIB}\._(?!_)\w+|^\s*from {_STDLIB} import [^#\n]*\b_(?!_)\w+", re.MULTILINE)


def test_no_cpython_private_names_in_src():
    found = [f"{path.relative_to(SRC)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
             for path in sorted(SRC.rglob("*.py")) for text in [path.read_text()] for m in PRIVATE.finditer(text)]
    assert not found, "\n".join(found)


def test_the_private_name_check_finds_them():
    for line in ("threading._shutdown()", "atexit._run_exitfuncs()", "os._exit(code)", "frame = sys._getframe(1)",
                 "from threading import _shutdown", "from os import _exit, getpid"):
        assert PRIVATE.search(line), line
    for line in ("sys.__stdout__.flush()", "os.exit_code", "self._exit()", "my_sys._x"):
        assert not PRIVATE.search(line), line
