"""The layer rules in .importlinter hold, and they catch a forbidden import when one is added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(),
                                reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts on the ``seg_edge`` package found in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache", "--no-logo"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = _lint(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module,line,expected", [
    ("runtime/sessions/base.py", "from seg_edge.export import tensorrt",
     "seg_edge.runtime.sessions.base -> seg_edge.export.tensorrt"),
    ("runtime/preprocess.py", "import torch", "seg_edge.runtime is not allowed to import torch"),
    ("model/networks.py", "from seg_edge.cli import app", "seg_edge.model is not allowed to import seg_edge.cli"),
    ("serve/jobs.py", "import torch", "seg_edge.serve is not allowed to import torch"),
    ("serve/app.py", "from seg_edge.evaluation import parity", "seg_edge.serve is not allowed to import torch"),
    ("runtime/jobs.py", "from seg_edge.serve import app", "seg_edge.runtime.jobs -> seg_edge.serve.app"),
    ("engines/ray.py", "import torch", "seg_edge.engines is not allowed to import torch"),
    ("dicom/__init__.py", "import torch", "seg_edge.dicom is not allowed to import torch"),
    ("dicom/__init__.py", "from seg_edge.serve import app", "seg_edge.dicom -> seg_edge.serve"),
    ("runtime/io.py", "import pydicom", "seg_edge.runtime is not allowed to import pydicom"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, expected):
    copy = tmp_path / "src" / "seg_edge"
    shutil.copytree(ROOT / "src" / "seg_edge", copy, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n\ndef _added():\n    {line}\n")
    result = _lint(tmp_path / "src", tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout
