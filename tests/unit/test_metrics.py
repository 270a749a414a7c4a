"""Region metrics against MONAI, BraTS empty-mask conventions, and folder evaluation."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from seg_edge.errors import InputError
from seg_edge.evaluation.evaluate import evaluate, label_files
from seg_edge.evaluation.metrics import EMPTY_HD95, METRICS, hd95, region_metrics, summarize

torch = pytest.importorskip("torch")
from monai.metrics import compute_dice, compute_hausdorff_distance  # noqa: E402

SPACING = (1.0, 1.2, 2.0)
# MONAI's own internal call of a deprecated argument, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")


def blob(rng: np.random.Generator, shape=(40, 36, 30), smooth=3.0, level=0.6) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    field /= field.std()
    return field > level


def monai_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    t = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    return float(compute_dice(t(pred), t(truth), include_background=True)[0, 0])


def monai_hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    t = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    return float(compute_hausdorff_distance(t(pred), t(truth), include_background=True, percentile=95,
                                            spacing=spacing)[0, 0])


# --------------------------------------------------------------------------------- vs MONAI

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spacing", [SPACING, (1.0, 1.0, 1.0)])
def test_dice_and_hd95_match_monai(seed, spacing):
    rng = np.random.default_rng(seed)
    truth = blob(rng)
    pred = blob(rng, level=0.5) | ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 3)))
    pred &= ~blob(rng, level=1.2)
    assert pred.any() and truth.any() and not np.array_equal(pred, truth)
    m = region_metrics(pred, truth, spacing)
    assert m["dice"] == pytest.approx(monai_dice(pred, truth), rel=1e-4)
    ref = monai_hd95(pred, truth, spacing)
    assert ref > 0
    assert m["hd95"] == pytest.approx(ref, rel=1e-4)


def test_hd95_is_symmetric_and_uses_spacing():
    truth = np.zeros((30, 30, 30), dtype=bool)
    truth[10:20, 10:20, 10:20] = True
    pred = np.zeros_like(truth)
    pred[10:20, 10:20, 13:23] = True  # shifted by 3 voxels along z
    assert hd95(pred, truth, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(pred, truth, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(truth, pred, (1.0, 1.0, 2.0)) == pytest.approx(hd95(pred, truth, (1.0, 1.0, 2.0)))
    assert hd95(pred, truth, (1.0, 1.0, 2.0)) == pytest.approx(monai_hd95(pred, truth, (1.0, 1.0, 2.0)), rel=1e-4)


def test_hd95_mask_touching_border_matches_monai(rng):
    truth = blob(rng, shape=(24, 20, 16), level=0.2)
    pred = np.roll(truth, 2, axis=0)
    assert truth[0].any() or truth[-1].any()
    assert hd95(pred, truth, SPACING) == pytest.approx(monai_hd95(pred, truth, SPACING), rel=1e-4)


def test_identical_masks():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:5, 3:6, 1:7] = True
    m = region_metrics(mask, mask, SPACING)
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["hd95"] == 0.0
    assert m["sensitivity"] == m["specificity"] == m["precision"] == m["accuracy"] == 1.0


# --------------------------------------------------------------------------- empty conventions

def test_both_empty():
    empty = np.zeros((6, 6, 6), dtype=bool)
    m = region_metrics(empty, empty, SPACING)
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["iou"] == 1.0
    assert m["sensitivity"] == 1.0 and m["precision"] == 1.0 and m["specificity"] == 1.0
    assert set(m) == set(METRICS)


@pytest.mark.parametrize("which", ["pred", "truth"])
def test_one_empty(which):
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    pred, truth = (empty, full) if which == "pred" else (full, empty)
    m = region_metrics(pred, truth, SPACING)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95"] == EMPTY_HD95 == 373.13
    # 373.13 is the diagonal of the 240×240×155 BraTS grid in mm
    assert math.isclose(math.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2), EMPTY_HD95, abs_tol=0.01)


# -------------------------------------------------------------------------- hand-computed counts

def test_confusion_metrics_hand_computed():
    # 2×2×3 = 12 voxels; TP 3, FP 2, FN 1, TN 6
    pred = np.zeros((2, 2, 3), dtype=bool)
    truth = np.zeros((2, 2, 3), dtype=bool)
    pred.flat[[0, 1, 2, 3, 4]] = True
    truth.flat[[0, 1, 2, 5]] = True
    m = region_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(6 / 9)
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(9 / 12)


# ------------------------------------------------------------------------------------ summarize

def test_summarize_mean_and_population_std():
    def case(d):
        return {r: {m: d * (i + 1) for i, m in enumerate(METRICS)} for r in ("WT", "TC", "ET")}

    cases = [case(0.2), case(0.5), case(0.8)]
    s = summarize(cases)
    assert set(s) == {"WT", "TC", "ET"}
    for i, metric in enumerate(METRICS):
        values = np.array([0.2, 0.5, 0.8]) * (i + 1)
        assert s["TC"][metric]["mean"] == pytest.approx(values.mean())
        assert s["TC"][metric]["std"] == pytest.approx(np.sqrt(((values - values.mean()) ** 2).mean()))


def test_summarize_no_cases_is_nan():
    s = summarize([])
    assert math.isnan(s["WT"]["dice"]["mean"]) and math.isnan(s["ET"]["hd95"]["std"])


# ------------------------------------------------------------------------------------- evaluate

AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


def save_labels(labels: np.ndarray, path: Path, affine=AFFINE, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(labels.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def tumour(shift: int = 0, et: int = 4) -> np.ndarray:
    labels = np.zeros((24, 22, 14), dtype=np.uint8)
    labels[4:18, 5:17, 2:12] = 2
    labels[7:15, 8:14, 4:10] = 1
    labels[9 + shift:13 + shift, 9:13, 5:9] = et
    return labels


def test_evaluate_folders_matched_by_case_id(tmp_path):
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    truth_a, truth_b = tumour(), tumour()
    pred_a = truth_a.copy()                 # perfect
    pred_b = tumour(shift=2)                # ET shifted by 2 voxels along x
    pred_b[4:8] = 0                         # and a WT/TC slab missed
    save_labels(pred_a, pred_dir / "caseA.nii.gz")
    save_labels(pred_b, pred_dir / "caseB_pred.nii.gz")
    save_labels(pred_a, pred_dir / "caseC.nii.gz")          # no ground truth
    save_labels(truth_a, truth_dir / "caseA" / "caseA_seg.nii.gz")
    save_labels(truth_b, truth_dir / "caseB" / "caseB_seg.nii.gz")
    (truth_dir / "caseB" / "caseB_flair.nii.gz").write_bytes(b"")  # images next to the labels are ignored

    assert set(label_files(pred_dir)) == {"caseA", "caseB", "caseC"}
    result = evaluate(pred_dir, truth_dir, 4)
    assert [c["case_id"] for c in result["cases"]] == ["caseA", "caseB"]
    assert result["unmatched"] == ["caseC"]
    a, b = result["cases"]
    for region in ("WT", "TC", "ET"):
        assert a[region]["dice"] == 1.0 and a[region]["hd95"] == 0.0
        assert b[region]["dice"] < 1.0
    # the second case's metrics equal region_metrics on the same masks with the file's spacing
    from seg_edge.runtime.regions import labels_to_regions
    for name, pr, tr in zip(("WT", "TC", "ET"), labels_to_regions(pred_b, 4), labels_to_regions(truth_b, 4)):
        expected = region_metrics(pr, tr, (1.0, 1.2, 2.0))
        for metric in METRICS:
            assert b[name][metric] == pytest.approx(expected[metric])
    # ET shifted by 2 voxels along x (1 mm): 95th-percentile distance is 2 mm
    assert b["ET"]["hd95"] == pytest.approx(2.0)
    for region in ("WT", "TC", "ET"):
        for metric in METRICS:
            values = np.array([a[region][metric], b[region][metric]])
            assert result["summary"][region][metric]["mean"] == pytest.approx(values.mean())
            assert result["summary"][region][metric]["std"] == pytest.approx(values.std())


def test_evaluate_single_files(tmp_path):
    truth = save_labels(tumour(), tmp_path / "t" / "x_seg.nii.gz")
    pred = save_labels(tumour(shift=1), tmp_path / "p" / "whatever.nii.gz")
    result = evaluate(pred, truth, 4)
    assert len(result["cases"]) == 1 and result["cases"][0]["case_id"] == "x"
    assert result["cases"][0]["WT"]["dice"] == 1.0
    assert result["cases"][0]["ET"]["dice"] < 1.0


def test_evaluate_with_brats2023_labels(tmp_path):
    save_labels(tumour(et=3), tmp_path / "p" / "c1.nii.gz")
    save_labels(tumour(et=3), tmp_path / "t" / "c1_seg.nii.gz")
    result = evaluate(tmp_path / "p", tmp_path / "t", 3)
    assert result["cases"][0]["ET"]["dice"] == 1.0


def test_label_3_under_et4_mentions_brats2023(tmp_path):
    save_labels(tumour(et=3), tmp_path / "p" / "c1.nii.gz")
    save_labels(tumour(et=4), tmp_path / "t" / "c1_seg.nii.gz")
    with pytest.raises(InputError, match="brats2023"):
        evaluate(tmp_path / "p", tmp_path / "t", 4)


def test_evaluate_no_common_ids(tmp_path):
    save_labels(tumour(), tmp_path / "p" / "a.nii.gz")
    save_labels(tumour(), tmp_path / "t" / "b_seg.nii.gz")
    with pytest.raises(InputError, match="no case ids in common"):
        evaluate(tmp_path / "p", tmp_path / "t", 4)


def test_evaluate_rejects_shape_and_affine_mismatch(tmp_path):
    save_labels(tumour()[:-1], tmp_path / "p" / "a.nii.gz")
    save_labels(tumour(), tmp_path / "t" / "a_seg.nii.gz")
    with pytest.raises(InputError, match="shape"):
        evaluate(tmp_path / "p", tmp_path / "t", 4)
    save_labels(tumour(), tmp_path / "p2" / "a.nii.gz", affine=np.eye(4))
    with pytest.raises(InputError, match="affine"):
        evaluate(tmp_path / "p2", tmp_path / "t", 4)


def test_evaluate_accepts_case_folders(case_dir, tmp_path):
    """A BraTS case folder (or a folder of them) as ground truth: its *_seg file is used."""
    pred = tmp_path / f"{case_dir.name}.nii.gz"
    shutil.copy(case_dir / f"{case_dir.name}_seg.nii.gz", pred)
    for truth in (case_dir, case_dir.parent):
        result = evaluate(tmp_path, truth, 4)
        assert [c["case_id"] for c in result["cases"]] == [case_dir.name]
        assert result["cases"][0]["WT"]["dice"] == 1.0
