"""``seg-edge evaluate --report``: one self-contained HTML page (table, Dice box plots, worst cases' pictures)."""

from __future__ import annotations

import base64
import io
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app

Image = pytest.importorskip("PIL.Image", reason="Pillow (the preview extra) is not installed")


@pytest.fixture()
def predictions(cases_dir, tmp_path):
    """Predictions made from the ground truth: two exact, one with its tumour core erased (the worst)."""
    folder = tmp_path / "pred"
    folder.mkdir()
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    for case in cases:
        shutil.copy(case / f"{case.name}_seg.nii.gz", folder / f"{case.name}.nii.gz")
    worst = cases[1].name
    img = nib.load(str(folder / f"{worst}.nii.gz"))
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 1] = 2
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), str(folder / f"{worst}.nii.gz"))
    return folder, worst, [c.name for c in cases]


def test_report_ranks_cases_and_draws_the_worst(predictions, cases_dir, tmp_path):
    folder, worst, names = predictions
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["evaluate", str(folder), str(cases_dir), "--report", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "<script" not in text and not re.search(r"(src|href)=\"(https?:)?//", text)  # self-contained
    rows = re.findall(r"<tr><td>(SynBraTS_[0-9_]+)</td>", text)
    assert sorted(rows) == sorted(names) and rows[0] == worst  # worst first
    assert text.count("<svg") == 1 and text.count("<rect") == 3  # one box per region
    pictures = re.findall(r'<figure><img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    assert [alt for alt, _ in pictures][0] == worst and len(pictures) == 3
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(pictures[0][1]))).convert("RGB")).astype(int)
    # the ground truth row has necrosis (red, label 1) where the prediction row has none
    top, bottom = picture[: picture.shape[0] // 2, :-250], picture[picture.shape[0] // 2:, :-250]

    def red(part):
        return int(((part[..., 0] - part[..., 1] > 60) & (part[..., 0] - part[..., 2] > 60)).sum())

    assert red(bottom) > 20 and red(top) == 0, (red(top), red(bottom))


def test_report_folder_must_exist(predictions, cases_dir, tmp_path):
    folder, _, _ = predictions
    result = CliRunner().invoke(app, ["evaluate", str(folder), str(cases_dir), "--report",
                                      str(tmp_path / "nope" / "r.html")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
