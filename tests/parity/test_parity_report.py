"""``seg-edge parity --report``: the table and, per case and backend, where labels differ (highlighted)."""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from seg_edge.cli.app import app

Image = pytest.importorskip("PIL.Image", reason="Pillow (the preview extra) is not installed")


def _pictures(html: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _magenta(picture: np.ndarray) -> int:
    """Highlighted pixels in the slice panels (the legend column, 250 px at the right, has a magenta swatch)."""
    return int(np.all(picture[:, :-250] == (255, 0, 255), axis=2).sum())


def test_report_highlights_the_voxels_that_changed(tmp_path, edge_onnx, edge_checkpoint, case_dir):
    model = onnx.load(str(edge_onnx))
    first = next(t for t in model.graph.initializer if len(t.dims) == 5)
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(3.0), first.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = tmp_path / "parity.html"
    result = CliRunner().invoke(app, ["parity", str(broken), str(case_dir), "--reference", str(edge_checkpoint),
                                      "--report", str(report), "--json"])
    assert result.exit_code == 1, result.output  # the perturbed weights fail parity; the report is still written
    text = report.read_text()
    assert "FAIL" in text and case_dir.name in text and "<script" not in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # self-contained
    changed = int(re.search(r"(\d+) voxels differ \(magenta\)", text).group(1))
    assert changed > 0
    (picture,) = _pictures(text)
    assert _magenta(picture) > 0  # the changed voxels are drawn, in the slices where they are


def test_report_folder_must_exist(tmp_path, edge_onnx, case_dir):
    result = CliRunner().invoke(app, ["parity", str(edge_onnx), str(case_dir), "--report",
                                      str(tmp_path / "missing" / "r.html")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not os.path.exists(tmp_path / "missing")
