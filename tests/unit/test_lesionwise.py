"""Lesion-wise scores on shapes whose answers are known in advance: the official package's rules (panoptica,
``--challenge gli|mets|…``) and the 2023 code's (``--challenge brats2023``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg_edge.evaluation.brats2023 import brats2023_region
from seg_edge.evaluation.challenge_table import mets_columns, missing_row, seg_columns, summary_rows
from seg_edge.evaluation.lesionwise import components, match, panoptica_region

ONE = (1.0, 1.0, 1.0)
SHAPE = (48, 48, 48)


def box(mask: np.ndarray, lo: tuple[int, int, int], size: int) -> np.ndarray:
    mask[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return mask


def empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=bool)


def b2023(truth, pred, spacing=ONE):
    pytest.importorskip("surface_distance", reason="the brats2023 extra (surface-distance) is not installed")
    return brats2023_region("WT", truth, pred, spacing, dilation=3, threshold_mm3=50.0).figures


# ------------------------------------------------------------------------------ instances and matching

def test_components_are_26_connected():
    m = empty()
    m[5, 5, 5] = m[6, 6, 6] = True  # corner to corner
    m[20, 20, 20] = True
    assert components(m)[1] == 2


def test_matching_is_one_to_one_and_maximises_dice():
    # reference 1 overlaps both predictions; reference 2 only prediction 1: the best total pairs 1↔2 and 2↔1
    pairs = [(1, 1, 0.6), (1, 2, 0.5), (2, 1, 0.4)]
    assert match(pairs, 2, 2, 1e-6) == [(1, 2), (2, 1)]
    # a pair under the threshold is no match
    assert match([(1, 1, 0.05)], 1, 1, 0.1) == []


# ------------------------------------------------------- one lesion split by a gap narrower than the dilation

@pytest.mark.parametrize("gap, lesions_2023", [(2, 1), (8, 2)])
def test_split_lesion(gap, lesions_2023):
    # two 4×4×4 blocks (64 mm³ each) along x, ``gap`` voxels apart; the prediction is the truth
    pytest.importorskip("surface_distance", reason="the brats2023 extra (surface-distance) is not installed")
    truth = box(box(empty(), (10, 10, 10), 4), (14 + gap, 10, 10), 4)
    r = brats2023_region("WT", truth, truth.copy(), ONE, dilation=3, threshold_mm3=50.0)
    # 3 dilations of the 18-connected element grow each block 3 voxels: a gap of 2 closes, one of 8 does not
    assert len(r.lesions) == lesions_2023
    assert r.figures["Num_TP"] == lesions_2023 and r.figures["Num_FP"] == 0 and r.figures["Num_FN"] == 0
    assert r.figures["Lesion_Wise_Score_Dice"] == pytest.approx(1.0)
    assert r.figures["Lesion_Wise_Score_HD95"] == pytest.approx(0.0)
    if lesions_2023 == 1:
        assert r.lesions[0].predicted == [1, 2] and r.lesions[0].volume_mm3 == 128.0
    # the official package has no dilation: two instances whatever the gap
    s = panoptica_region("wt", truth, truth.copy(), ONE)
    assert (s.n_ref, s.tp, s.fp, s.fn) == (2, 2, 0, 0)


def test_split_prediction_of_one_lesion():
    # one 6×6×6 lesion predicted as two halves 1 voxel apart: the official matching takes the better half and
    # calls the other a false positive; 2023 gives the lesion both halves
    truth = box(empty(), (10, 10, 10), 6)
    pred = truth.copy()
    pred[13, :, :] = False  # x 10..12 and 14..15: 108 and 72 voxels
    s = panoptica_region("wt", truth, pred, ONE)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.pairs[0].prediction.voxels == 108 and s.pairs[0].dice == pytest.approx(2 * 108 / (216 + 108))
    f = b2023(truth, pred)
    assert (f["Num_TP"], f["Num_FP"], f["Num_FN"]) == (1, 0, 0)
    assert f["Lesion_Wise_Score_Dice"] == pytest.approx(2 * 180 / (216 + 180))


# --------------------------------------------------- false-positive specks, small lesions, a missed lesion

def specks_case():
    """Truth: a 5×5×5 lesion L (125 mm³) and a 2×2×2 lesion S (8 mm³) far apart. Prediction: L exactly, a
    one-voxel speck and a 3×3×3 speck (27 mm³), both far from everything."""
    truth = box(box(empty(), (5, 5, 5), 5), (35, 35, 35), 2)
    pred = box(box(empty(), (5, 5, 5), 5), (5, 35, 35), 3)
    pred[35, 5, 40] = True
    return truth, pred


def test_specks_official():
    truth, pred = specks_case()
    s = panoptica_region("wt", truth, pred, ONE)
    assert (s.n_ref, s.n_pred, s.tp, s.fp, s.fn) == (2, 3, 1, 2, 1)
    assert (s.precision, s.recall, s.f1) == pytest.approx((1 / 3, 1 / 2, 1 / (1 + 1 + 0.5)))
    # lesion-wise: matched pairs only
    assert (s.lesion_mean("dice"), s.lesion_mean("nsd"), s.lesion_mean("hd95")) == (1.0, 1.0, 0.0)
    assert sorted(x.voxels for x in s.false_positives) == [1, 27]
    assert [x.voxels for x in s.missed] == [8]
    # mets parser: L is large (>= 20 mm³), S small; every false positive, however small, costs the large list
    row = mets_columns(s, "wt", 20.0, 0.1)
    assert (row["large_instance_tp_wt"], row["large_instance_fp_wt"], row["large_instance_fn_wt"]) == (1, 2, 0)
    assert row["large_instance_f1_wt"] == pytest.approx(2 / (2 + 2))
    assert row["lesionwise_dsc_mean_wt"] == pytest.approx(1 / 3)
    assert row["lesionwise_hd95_mean_wt"] == pytest.approx((0 + 373 + 373) / 3)
    assert row["lesionwise_dsc_std_wt"] == pytest.approx(np.std([1, 0, 0]))
    assert (row["small_instance_tp_wt"], row["small_instance_fn_wt"], row["small_instance_fp_wt"]) == (0, 1, 2)
    assert (row["small_instance_prec_wt"], row["small_instance_rec_wt"], row["small_instance_f1_wt"]) == (0, 0, 0)


def test_specks_2023():
    truth, pred = specks_case()
    f = b2023(truth, pred)
    # S (8 mm³ ≤ 50) is left out: not a miss; both specks (no lesion near them) are false positives
    assert (f["Num_TP"], f["Num_FP"], f["Num_FN"]) == (1, 2, 0)
    assert f["Lesion_Wise_Score_Dice"] == pytest.approx(1 / 3)
    assert f["Lesion_Wise_Score_HD95"] == pytest.approx(2 * 374 / 3)
    # a speck within reach of the left-out S belongs to S: neither a false positive nor counted
    pred[33, 35, 35] = True
    f = b2023(truth, pred)
    assert (f["Num_TP"], f["Num_FP"], f["Num_FN"]) == (1, 2, 0)


def test_missed_lesion():
    truth = box(box(empty(), (5, 5, 5), 5), (30, 30, 30), 5)
    pred = box(empty(), (5, 5, 5), 5)
    f = b2023(truth, pred)
    assert (f["Num_TP"], f["Num_FP"], f["Num_FN"]) == (1, 0, 1)
    assert f["Lesion_Wise_Score_Dice"] == pytest.approx(0.5)
    assert f["Lesion_Wise_Score_HD95"] == pytest.approx(374 / 2)
    s = panoptica_region("wt", truth, pred, ONE)
    assert (s.tp, s.fp, s.fn, s.recall) == (1, 0, 1, 0.5)
    assert s.lesion_mean("dice") == 1.0  # the official lesion-wise mean leaves the miss out
    assert s.global_dice == pytest.approx(2 * 125 / 375)


# ------------------------------------------------------------------------------------------- empty masks

def test_both_empty():
    s = panoptica_region("wt", empty(), empty(), ONE)
    row = seg_columns(s, "wt")
    assert row["all_instance_tp_wt"] == row["all_instance_fp_wt"] == row["all_instance_fn_wt"] == 0
    nan_columns = [c for c in row if c.split("_")[0] in ("global", "lesionwise") or c.endswith(("prec_wt", "rec_wt",
                                                                                                 "f1_wt"))]
    assert all(math.isnan(row[c]) for c in nan_columns)
    mets = mets_columns(s, "wt", 20.0, 0.1)
    assert all(math.isnan(mets[c]) for c in mets if c.startswith(("large", "small", "lesionwise", "global")))
    f = b2023(empty(), empty())
    assert (f["Legacy_Dice"], f["Legacy_HD95"], f["Sensitivity"]) == (1.0, 0.0, 1.0)
    assert (f["Lesion_Wise_Score_Dice"], f["Lesion_Wise_Score_HD95"]) == (1.0, 0.0)


def test_empty_prediction():
    truth = box(empty(), (5, 5, 5), 5)
    row = seg_columns(panoptica_region("wt", truth, empty(), ONE), "wt")
    assert (row["all_instance_fn_wt"], row["all_instance_rec_wt"], row["all_instance_f1_wt"]) == (1, 0.0, 0.0)
    assert math.isnan(row["all_instance_prec_wt"])
    assert (row["global_dsc_wt"], row["global_nsd_wt"], row["global_hd95_wt"]) == (0.0, 0.0, 373.0)
    assert (row["lesionwise_dsc_mean_wt"], row["lesionwise_nsd_mean_wt"]) == (0.0, 0.0)
    assert math.isinf(row["lesionwise_hd95_mean_wt"]) and math.isnan(row["lesionwise_dsc_std_wt"])
    f = b2023(truth, empty())
    assert (f["Legacy_Dice"], f["Legacy_HD95"], f["Num_FN"]) == (0.0, 374.0, 1)
    assert (f["Lesion_Wise_Score_Dice"], f["Lesion_Wise_Score_HD95"]) == (0.0, 374.0)


def test_empty_truth():
    pred = box(empty(), (5, 5, 5), 2)
    row = seg_columns(panoptica_region("wt", empty(), pred, ONE), "wt")
    assert (row["all_instance_fp_wt"], row["all_instance_prec_wt"], row["all_instance_f1_wt"]) == (1, 0.0, 0.0)
    assert math.isnan(row["all_instance_rec_wt"])
    assert (row["global_dsc_wt"], row["global_hd95_wt"], row["lesionwise_dsc_mean_wt"]) == (0.0, 373.0, 0.0)
    mets = mets_columns(panoptica_region("wt", empty(), pred, ONE), "wt", 20.0, 0.1)
    assert math.isnan(mets["lesionwise_dsc_mean_wt"]) and math.isnan(mets["large_instance_tp_wt"])
    f = b2023(empty(), pred)
    assert (f["Legacy_Dice"], f["Legacy_HD95"], f["Sensitivity"], f["Num_FP"]) == (0.0, 374.0, 0.0, 1)
    assert (f["Lesion_Wise_Score_Dice"], f["Lesion_Wise_Score_HD95"]) == (0.0, 374.0)


def test_missing_case_and_summary_rows():
    row = missing_row("x-seg.nii.gz", ["subject_id", "global_hd95_wt", "lesionwise_hd95_std_wt", "global_dsc_wt"])
    assert row == {"subject_id": "x-seg.nii.gz", "global_hd95_wt": 373.0, "lesionwise_hd95_std_wt": 0,
                   "global_dsc_wt": 0}
    mean, std, median = summary_rows([{"subject_id": "a", "v": 1.0}, {"subject_id": "b", "v": float("nan")},
                                      {"subject_id": "c", "v": 4.0}, {"subject_id": "d", "v": 10.0}])
    assert (mean["v"], median["v"]) == (5.0, 4.0)
    assert std["v"] == pytest.approx(np.std([1, 4, 10], ddof=1))  # pandas: sample std, NaN skipped


def test_anisotropic_volumes_and_thresholds():
    # a 3×3×3 lesion is 27 mm³ at 1 mm but 54 mm³ at (1, 1, 2): under the 50 mm³ threshold, then over it
    truth = box(empty(), (5, 5, 5), 3)
    assert b2023(truth, empty())["Num_FN"] == 0
    assert b2023(truth, empty(), (1.0, 1.0, 2.0))["Num_FN"] == 1


# the package imports scipy.ndimage.filters/morphology (deprecated names): its warnings, not ours
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.2, 2.5), (0.7, 1.0, 1.3)])
def test_2023_hd95_equals_deepminds_surface_distance(spacing):
    """The 2023 code's HD95 is DeepMind's ``compute_robust_hausdorff(compute_surface_distances(…), 95)``: checked
    against that package's own functions on random blobs."""
    sdm = pytest.importorskip("surface_distance.metrics", reason="the brats2023 extra is not installed")
    from scipy import ndimage

    from seg_edge.evaluation.brats2023 import robust_hd95

    rng = np.random.default_rng(sum(int(10 * s) for s in spacing))
    for _ in range(4):
        f, g = (ndimage.gaussian_filter(rng.standard_normal((40, 36, 30)), 3) for _ in range(2))
        a, b = f > 0.8 * f.std(), (f + 0.4 * g) > 0.9 * f.std()
        assert a.any() and b.any() and not np.array_equal(a, b)
        with np.errstate(all="ignore"):
            expected = sdm.compute_robust_hausdorff(sdm.compute_surface_distances(a, b, spacing), 95)
        assert robust_hd95(a, b, spacing) == pytest.approx(expected, abs=1e-9)
