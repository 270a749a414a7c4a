"""Shared pieces of the scale tests: free loopback ports, a batch folder with one corrupt case, processes
started in their own group and stopped with it, and the CLI run as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

SE = [sys.executable, "-m", "seg_edge"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(root: Path, cases_dir: Path) -> Path:
    """Four good cases (the three fixtures and one again, renamed) and one whose T1ce is not a NIfTI."""
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    for i, src in enumerate(cases + cases[:1]):
        shutil.copytree(src, root / f"case{i}")
    bad = root / "case9_corrupt"
    shutil.copytree(cases[1], bad)
    next(p for p in bad.iterdir() if "_t1ce" in p.name).write_bytes(b"broken")
    return root


def seg_edge(*args, timeout: float = 300, prefix: list[str] = (),
             env: dict | None = None) -> subprocess.CompletedProcess:
    """``seg-edge ARGS`` in its own process (Ray and gRPC keep threads and signal handlers); ``prefix``:
    what runs it (e.g. ``ip netns exec NAME``)."""
    return subprocess.run([*prefix, *SE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})


def labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def same_outputs(a: Path, b: Path, names: list[str]) -> None:
    """The label maps of ``names`` in folders ``a`` and ``b`` hold identical voxels and geometry."""
    for name in names:
        x, y = nib.load(str(a / f"{name}.nii.gz")), nib.load(str(b / f"{name}.nii.gz"))
        assert np.array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj)), name
        assert np.array_equal(x.affine, y.affine) and x.get_data_dtype() == y.get_data_dtype() == np.uint8


def start_group(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """``cmd`` in a new session (its own process group), output to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM to ``proc`` (it stops its own children: ray start --block, PyTriton), then SIGKILL to whatever
    is left of its process group after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their leader
    except ProcessLookupError:
        pass
