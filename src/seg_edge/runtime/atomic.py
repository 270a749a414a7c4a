"""Atomic file writes: a temporary file in the target's folder, renamed into place on success.

The one implementation every writer in seg-edge uses (label maps, reports, ONNX files, plans).
Temporary names are short (``.seg-edge-XXXXXXXX<suffix>``) so that a target name near the
file-system limit still has room, and they keep the target's NIfTI/gzip suffix because
nibabel decides compression by the name it writes to.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".seg-edge-"


def default_file_mode() -> int:
    """Permissions a new file gets under the current umask (mkstemp files start at 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_suffix(name: str) -> str:
    """The suffix a temporary stand-in for ``name`` needs (lower-cased: writers match it exactly)."""
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".onnx", ".json", ".plan", ".engine", ".csv"):
        if lower.endswith(suffix):
            return suffix
    return ".tmp"


def make_temp(target: Path) -> Path:
    """Create an empty, private temporary file beside ``target`` and return its path."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=temp_suffix(target.name))
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, else it is removed.

    The folder must exist. Cleanup also runs on KeyboardInterrupt and SystemExit.
    """
    target = Path(target)
    tmp = make_temp(target)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, payload: bytes) -> None:
    """Write ``payload`` to ``target`` atomically."""
    with atomic_write(target) as tmp:
        tmp.write_bytes(payload)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))
