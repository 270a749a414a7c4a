"""A runtime-only environment, as ``pip install .`` makes it: a real venv holding seg-edge's core
dependencies (pyproject's ``dependencies`` and what they require, nothing from any extra) and seg-edge
itself from this checkout.

Built without the network and in about a second: the core distributions are linked from the test's own
environment (where they are already installed), found through their installed metadata, and the
project's ``src`` is put on the path by a ``.pth`` file, as an editable install does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = "seg-edge"
SRC = Path(__file__).resolve().parents[2] / "src"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_closure() -> list[metadata.Distribution]:
    """seg-edge's core requirements and theirs, transitively; no extra of any of them."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in metadata.requires(PROJECT) or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or one for another platform or Python
        key = _norm(req.name)
        if key in seen:
            continue
        seen[key] = dist = metadata.distribution(req.name)
        todo.extend(Requirement(r) for r in dist.requires or [])
    return list(seen.values())


def _top_entries(dist: metadata.Distribution, site: Path) -> set[Path]:
    """The entries of site-packages a distribution installed (packages, modules, .libs folders, its dist-info)."""
    entries = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth"):
            entries.add(site / parts[0])
    return {e for e in entries if e.exists() and e.name != "__pycache__"}


def build(root: Path) -> Path:
    """Create the runtime-only venv at ``root``; return its interpreter."""
    here = Path(sysconfig.get_paths()["purelib"])
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in core_closure():
        for entry in _top_entries(dist, here):
            (site / entry.name).symlink_to(entry)
    (site / "seg_edge_src.pth").write_text(f"{SRC}\n")
    return python


if __name__ == "__main__":  # python tests/cli/runtime_env.py DIR: build one by hand
    print(build(Path(sys.argv[1])))
