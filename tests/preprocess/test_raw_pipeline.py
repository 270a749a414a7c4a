"""The raw-study pipeline on a small synthetic study (seg_edge.preprocess.pipeline): the series land on the
atlas grid co-registered to within 1 mm of the true transforms, the brain mask matches the true one, the
volumes go back to a series' own grid, every QC figure and stage time is reported, and two runs are identical."""

from __future__ import annotations

import json

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

import broken  # noqa: E402  (tests/preprocess/broken.py)

from seg_edge.errors import InputError  # noqa: E402
from seg_edge.preprocess.pipeline import RawOptions, preprocess_study, to_native  # noqa: E402
from seg_edge.preprocess.transforms import matrix_lps  # noqa: E402
from seg_edge.synth.writer import brats_affine  # noqa: E402

ORDER = ("t1", "t1ce", "t2", "flair")  # not the files' alphabetical order: the case must follow it
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def study(raw_studies):
    folder = raw_studies[0]
    pre = preprocess_study(broken.study_files(folder), ORDER, options=RawOptions())
    return folder, pre


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_the_case_is_on_the_atlas_grid_in_the_order_asked(study):
    folder, pre = study
    case = pre.case
    assert case.images.shape == (4, 240, 240, 155)
    assert case.images.dtype == np.float32
    np.testing.assert_allclose(case.affine, brats_affine((240, 240, 155)), atol=1e-4)
    assert list(case.sources) == list(ORDER)
    assert case.sources["t2"] == broken.study_files(folder)["t2"]
    assert "co-registered to t1ce, skull-stripped, resampled to the 240×240×155 atlas grid" in case.warnings
    # skull-stripped: one brain mask for every channel, nothing outside it
    inside = case.images[ORDER.index("t1ce")] > 0
    for channel in case.images:
        assert not np.any(channel[~inside])
    print(f"\ntimings {pre.timings}\nqc {json.dumps(pre.qc)}")
    assert set(pre.timings) == {"read", "skull_strip", "coregister", "atlas", "resample"}
    assert set(pre.qc["series"]) == {"t1", "t2", "flair"}
    for figures in pre.qc["series"].values():
        assert {"metric", "brain_metric", "rotation_deg", "translation_mm", "determinant"} <= set(figures)
    assert pre.qc["brain_ml"] == pre.qc["brain"]["volume_ml"] or abs(pre.qc["brain_ml"] - pre.qc["brain"][
        "volume_ml"]) < 0.1


def test_co_registration_is_within_1_mm_of_the_truth(study):
    """Mean displacement error over the true brain's voxels (reference grid) of each series_from_reference
    against the true one: W_series @ inv(W_t1ce) from truth.json (RAS), taken to LPS. The mean over the three
    series within 1 mm (the issue's acceptance), each within 1.5 mm: this half-scale study's T2 and FLAIR have
    8 and 10 mm slices (measured 0.86 and 1.00 mm; at full scale, 4 and 5 mm slices, 0.21-0.47 and 0.64-0.75)."""
    folder, pre = study
    truth = json.loads((folder / "truth" / "truth.json").read_text())
    worlds = {m: np.asarray(v["world_from_atlas_ras"]) for m, v in truth["series"].items()}
    brain = sitk.ReadImage(str(folder / "truth" / "native_brain.nii.gz"))
    index = np.argwhere(sitk.GetArrayFromImage(brain) > 0)[::10, ::-1]
    points = np.c_[[brain.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in index], np.ones(len(index))]
    reference_from_atlas = matrix_lps(pre.series_from_atlas["t1ce"])
    errors = {}
    for modality in ("t1", "t2", "flair"):
        true = LPS @ worlds[modality] @ np.linalg.inv(worlds["t1ce"]) @ LPS
        found = matrix_lps(pre.series_from_atlas[modality]) @ np.linalg.inv(reference_from_atlas)
        errors[modality] = float(np.linalg.norm((points @ (found - true).T)[:, :3], axis=1).mean())
    print(f"\nco-registration error (mean over brain voxels, mm): { {m: round(e, 3) for m, e in errors.items()} }")
    assert sum(errors.values()) / len(errors) <= 1.0
    assert max(errors.values()) <= 1.5
    assert errors["t1"] <= 0.5  # a 3D series at 2 mm


def test_the_brain_mask_matches_the_true_one(study):
    folder, pre = study
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "truth" / "native_brain.nii.gz"))) > 0
    found = sitk.GetArrayFromImage(pre.brain_native) > 0
    dice = _dice(truth, found)
    print(f"\nbrain mask Dice {dice:.4f} against truth/native_brain ({pre.qc['brain_ml']:.0f} mL found)")
    assert dice >= 0.93


def test_to_native_brings_the_atlas_grid_back_to_each_series(study):
    folder, pre = study
    brain_atlas = (pre.case.images[ORDER.index("t1ce")] > 0).astype(np.float32)[None]
    back = to_native(brain_atlas, pre)
    assert back.shape == (1, *sitk.GetArrayFromImage(pre.reference).shape[::-1])
    dice = _dice(back[0] >= 0.5, sitk.GetArrayFromImage(pre.brain_native).transpose(2, 1, 0) > 0)
    flair = to_native(brain_atlas, pre, "flair")
    assert flair.shape[1:] == tuple(pre.grids["flair"].GetSize())
    print(f"\nbrain mask atlas grid → reference grid: Dice {dice:.4f} with the mask made there")
    assert dice >= 0.97
    with pytest.raises(InputError, match=r"an atlas-grid volume of shape \(240, 240, 155\) \(expected \(C, 240"):
        to_native(brain_atlas[0], pre)
    with pytest.raises(InputError, match=r"series 'dwi' \(expected one of"):
        to_native(brain_atlas, pre, "dwi")


def test_two_runs_give_identical_arrays(study):
    folder, pre = study
    again = preprocess_study(broken.study_files(folder), ORDER, options=RawOptions())
    np.testing.assert_array_equal(again.case.images, pre.case.images)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.brain_native), sitk.GetArrayFromImage(pre.brain_native))
    for modality in ORDER:
        np.testing.assert_array_equal(matrix_lps(again.series_from_atlas[modality]),
                                      matrix_lps(pre.series_from_atlas[modality]))
