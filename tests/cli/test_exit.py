"""The entry point ends the process as a normal exit does, minus the interpreter's teardown (cli.app._exit)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, threading, time
from concurrent.futures import ThreadPoolExecutor
from seg_edge.cli.app import _exit

atexit.register(lambda: print("atexit ran", flush=True))
pool = ThreadPoolExecutor(1)  # never shut down: its idle worker must not hold the exit
pool.submit(time.sleep, 0.01).result()
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
print("buffered, not flushed", end="")
_exit({code!r})
"""


def _run(code):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(code=code)], capture_output=True, text=True, timeout=60)


def test_exit_joins_threads_runs_atexit_and_flushes():
    result = _run(3)
    assert result.returncode == 3
    assert "thread finished" in result.stdout and "atexit ran" in result.stdout
    assert "buffered, not flushed" in result.stdout


def test_exit_with_a_message_or_none():
    result = _run("no model given")
    assert result.returncode == 1 and "no model given" in result.stderr
    assert _run(None).returncode == 0
