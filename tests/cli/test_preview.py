"""``seg-edge predict --preview`` and the picture it draws (runtime.pictures, Pillow only)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.runtime.io import load_case
from seg_edge.runtime.pictures import Volume3D, legend, preview_image, tumour_centre

PIL = pytest.importorskip("PIL.Image", reason="Pillow (the preview extra) is not installed")
runner = CliRunner()
MODALITIES = ("flair", "t1", "t1ce", "t2")


def _truth(case: Path) -> np.ndarray:
    return np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj)


def test_predict_writes_the_preview_with_the_outputs(case_dir, edge_onnx, tmp_path):
    result = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(tmp_path),
                                 "--preview"])
    assert result.exit_code == 0, result.output
    preview = tmp_path / f"{case_dir.name}_preview.png"
    image = PIL.open(preview)
    assert image.format == "PNG" and image.width > 600 and image.height > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{case_dir.name}.nii.gz", f"{case_dir.name}.json", preview.name])
    again = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(tmp_path),
                                "--preview"])
    assert again.exit_code == 2 and "output exists" in again.stderr


def test_preview_without_pillow_is_one_line(case_dir, edge_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails as if it were not installed
    result = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(tmp_path),
                                 "--preview"])
    assert result.exit_code == 3
    assert result.stderr.strip() == ("missing extra: drawing pictures needs pillow, which is not installed; it comes "
                                     "with seg-edge's 'preview' extra: pip install -e '.[preview]' in a clone, or "
                                     "pip install 'seg-edge[preview]'")
    assert list(tmp_path.iterdir()) == []


def test_preview_shows_each_label_in_its_colour(case_dir):
    case = load_case(case_dir, MODALITIES)
    truth = _truth(case_dir)
    images = dict(zip(MODALITIES, case.images))
    volumes = {"NCR": 1.0, "ED": 2.0, "ET": 3.0, "WT": 6.0, "TC": 4.0}
    with_labels = np.asarray(preview_image(images, truth, case.affine, case.spacing, volumes, 4, "t"))
    without = np.asarray(preview_image(images, np.zeros_like(truth), case.affine, case.spacing, volumes, 4, "t"))
    changed = np.any(with_labels != without, axis=2)
    assert changed.sum() > 200  # the overlay is drawn
    for row in legend(4):
        colour = np.array([int(row["colour"][i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
        # blended at 45 % over grey: the changed pixels lean towards each label's colour
        lean = (with_labels[changed].astype(float) - without[changed]) @ (colour - colour.mean())
        assert (lean > 0).sum() > 20, row["name"]


def test_slices_go_through_the_largest_tumour_component():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[20:26, 10:16, 30:36] = 2  # the tumour
    labels[0, 0, 0] = 1  # a stray voxel far away
    assert tumour_centre(labels) == (22, 12, 32)
    assert tumour_centre(np.zeros_like(labels)) == (20, 20, 20)


def test_display_is_ras_whatever_the_stored_axes():
    data = np.ones((4, 5, 6), np.float32)
    data[0, 0, 0] = 5.0
    swapped = np.array([[0.0, -1.0, 0, 0], [-2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # stored axes: y, x, z
    vol = Volume3D.canonical({"x": data}, {"l": np.zeros((4, 5, 6), np.uint8)}, swapped, (2.0, 1.0, 3.0))
    assert vol.images["x"].shape == (5, 4, 6) and vol.spacing == (1.0, 2.0, 3.0)
    # the first stored voxel is the most right and most anterior one: after RAS it sits at the far end of x and y
    assert tuple(np.argwhere(vol.images["x"] == 5.0)[0]) == (4, 3, 0)
