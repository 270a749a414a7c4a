"""Regions → labels nesting, the inverse mapping, NVIDIA's ET rule and the sigmoid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from seg_edge.card import ETRule
from seg_edge.errors import InputError
from seg_edge.runtime.postprocess import SLAB, apply_et_rule, sigmoid
from seg_edge.runtime.regions import et_label, labels_to_regions, regions_to_labels

T = (0.5, 0.5, 0.5)


def nvidia_to_lbl(probs: np.ndarray, et: int, rule: bool = True) -> np.ndarray:
    """Independent transcription of NVIDIA's BraTS21 ``to_lbl`` (DeepLearningExamples, notebook)."""
    from scipy.ndimage import label

    enh = probs[2]
    c1, c2, c3 = probs[0] > 0.5, probs[1] > 0.5, probs[2] > 0.5
    pred = (c1 > 0).astype(np.uint8)
    pred[(c2 == False) * (c1 == True)] = 2  # noqa: E712
    pred[(c3 == True) * (c1 == True)] = et  # noqa: E712
    if not rule:
        return pred
    components, n = label(pred == et)
    for et_idx in range(1, n + 1):
        _, counts = np.unique(pred[components == et_idx], return_counts=True)
        if 1 < counts[0] and counts[0] < 8 and np.mean(enh[components == et_idx]) < 0.9:
            pred[components == et_idx] = 1
    et_mask = pred == et
    if 0 < et_mask.sum() and et_mask.sum() < 73 and np.mean(enh[et_mask]) < 0.9:
        pred[et_mask] = 1
    return pred


# ----------------------------------------------------------------------------------- label scheme

def test_et_label():
    assert et_label("brats2021") == 4
    assert et_label("brats2023") == 3
    with pytest.raises(InputError, match="brats2021"):
        et_label("brats2019")


# ------------------------------------------------------------------------------ regions → labels

@pytest.mark.parametrize("et", [4, 3])
def test_regions_to_labels_nesting(et):
    #          bg   ED   NCR  ET   ET∉WT TC∉WT  ET∈WT∖TC
    wt = np.array([0.1, 0.9, 0.9, 0.9, 0.2, 0.3, 0.8])
    tc = np.array([0.1, 0.2, 0.9, 0.9, 0.2, 0.9, 0.1])
    en = np.array([0.1, 0.1, 0.3, 0.9, 0.9, 0.1, 0.7])
    labels = regions_to_labels(np.stack([wt, tc, en]), T, et)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 2, 1, et, 0, 0, et])


def test_regions_to_labels_thresholds_are_strict_and_per_region():
    probs = np.array([[0.5, 0.51, 0.7, 0.7], [0.9, 0.9, 0.61, 0.59], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(regions_to_labels(probs, (0.5, 0.6, 0.5), 4), [0, 1, 1, 2])


@pytest.mark.parametrize("et", [4, 3])
def test_regions_to_labels_matches_nvidia_transcription(rng, et):
    probs = rng.random((3, 14, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(regions_to_labels(probs, T, et), nvidia_to_lbl(probs, et, rule=False))


@pytest.mark.parametrize("et", [4, 3])
def test_labels_regions_round_trip(rng, et):
    # nested regions: ET ⊂ TC ⊂ WT
    wt = rng.random((12, 11, 9)) < 0.6
    tc = wt & (rng.random(wt.shape) < 0.6)
    en = tc & (rng.random(wt.shape) < 0.5)
    regions = np.stack([wt, tc, en])
    labels = regions_to_labels(regions.astype(np.float32), T, et)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, et}
    back = labels_to_regions(labels, et)
    assert back.dtype == bool and back.shape == regions.shape
    np.testing.assert_array_equal(back, regions)


@pytest.mark.parametrize("et", [4, 3])
def test_labels_to_regions_definition(et):
    labels = np.array([0, 1, 2, et], dtype=np.uint8)
    np.testing.assert_array_equal(labels_to_regions(labels, et), [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]])


# ------------------------------------------------------------------------------------- ET rule

def _grid_with_big_et(et: int = 4):
    """A 20³ grid with a 5×5×5 = 125-voxel confident ET block (keeps the total-size step quiet)."""
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.zeros(labels.shape, dtype=np.float32)
    labels[1:6, 1:6, 1:6] = et
    prob[1:6, 1:6, 1:6] = 0.99
    return labels, prob


def test_small_doubtful_component_becomes_necrosis():
    labels, prob = _grid_with_big_et()
    labels[10, 10, 10:15] = 4
    prob[10, 10, 10:15] = 0.6
    before = labels.copy()
    changed = apply_et_rule(labels, prob, ETRule(), 4)
    assert changed == 5
    assert np.all(labels[10, 10, 10:15] == 1)
    mask = np.ones(labels.shape, dtype=bool)
    mask[10, 10, 10:15] = False
    np.testing.assert_array_equal(labels[mask], before[mask])


def test_small_confident_component_stays():
    labels, prob = _grid_with_big_et()
    labels[10, 10, 10:15] = 4
    prob[10, 10, 10:15] = 0.95
    before = labels.copy()
    assert apply_et_rule(labels, prob, ETRule(), 4) == 0
    np.testing.assert_array_equal(labels, before)


def test_single_voxel_component_is_not_relabelled_by_component_step():
    labels, prob = _grid_with_big_et()
    labels[15, 15, 15] = 4
    prob[15, 15, 15] = 0.1
    assert apply_et_rule(labels, prob, ETRule(), 4) == 0
    assert labels[15, 15, 15] == 4


def test_component_size_limit_is_exclusive():
    labels, prob = _grid_with_big_et()
    labels[10, 10, 4:11] = 4   # 7 voxels: relabelled
    prob[10, 10, 4:11] = 0.5
    labels[14, 2:10, 10] = 4   # 8 voxels: kept (size must be < 8)
    prob[14, 2:10, 10] = 0.5
    assert apply_et_rule(labels, prob, ETRule(), 4) == 7
    assert np.all(labels[10, 10, 4:11] == 1)
    assert np.all(labels[14, 2:10, 10] == 4)


def test_components_are_face_connected():
    labels, prob = _grid_with_big_et()
    # two 3-voxel bars touching only along an edge: separate components under 6-connectivity
    labels[10, 10, 10:13] = 4
    labels[11, 11, 10:13] = 4
    prob[10, 10, 10:13] = 0.5
    prob[11, 11, 10:13] = 0.95  # the second bar is confident
    assert apply_et_rule(labels, prob, ETRule(), 4) == 3
    assert np.all(labels[10, 10, 10:13] == 1) and np.all(labels[11, 11, 10:13] == 4)


def test_small_total_with_low_mean_is_all_relabelled():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.zeros(labels.shape, dtype=np.float32)
    labels[2:6, 2:6, 2:6] = 3          # 64 voxels < 73
    prob[2:6, 2:6, 2:6] = 0.7
    labels[10, 10, 10] = 3             # + a single voxel: 65 in all
    prob[10, 10, 10] = 0.99
    labels[15:17, 15:17, 15:17] = 2
    changed = apply_et_rule(labels, prob, ETRule(), 3)
    assert changed == 65
    assert not (labels == 3).any()
    assert (labels == 1).sum() == 65 and (labels == 2).sum() == 8


def test_small_total_with_high_mean_stays():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.zeros(labels.shape, dtype=np.float32)
    labels[2:6, 2:6, 2:6] = 4
    prob[2:6, 2:6, 2:6] = 0.93
    assert apply_et_rule(labels, prob, ETRule(), 4) == 0
    assert (labels == 4).sum() == 64


def test_large_et_untouched_even_if_doubtful():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.zeros(labels.shape, dtype=np.float32)
    labels[2:7, 2:7, 2:5] = 4          # 75 voxels >= 73
    prob[2:7, 2:7, 2:5] = 0.55
    before = labels.copy()
    assert apply_et_rule(labels, prob, ETRule(), 4) == 0
    np.testing.assert_array_equal(labels, before)


def test_rule_disabled_does_nothing():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.full(labels.shape, 0.1, dtype=np.float32)
    labels[2:4, 2:4, 2:4] = 4
    labels[10, 10, 10:13] = 4
    before = labels.copy()
    assert apply_et_rule(labels, prob, ETRule(enabled=False), 4) == 0
    np.testing.assert_array_equal(labels, before)


def test_no_et_is_a_no_op():
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    assert apply_et_rule(labels, np.zeros(labels.shape, np.float32), ETRule(), 4) == 0


def test_rule_parameters_are_used():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    prob = np.zeros(labels.shape, dtype=np.float32)
    labels[2:6, 2:6, 2:6] = 4  # 64 voxels
    prob[2:6, 2:6, 2:6] = 0.7
    assert apply_et_rule(labels.copy(), prob, ETRule(total_max_voxels=64), 4) == 0
    assert apply_et_rule(labels.copy(), prob, ETRule(max_mean_prob=0.6), 4) == 0
    assert apply_et_rule(labels.copy(), prob, ETRule(total_max_voxels=65), 4) == 64


@pytest.mark.parametrize("seed", range(4))
def test_et_rule_matches_nvidia_transcription(seed):
    rng = np.random.default_rng(seed)
    probs = np.full((3, 24, 22, 20), 0.05, dtype=np.float32)
    probs[:2, 2:22, 2:20, 2:18] = 0.9   # WT and TC over a block
    # scattered ET blobs of various sizes and confidences
    for _ in range(12):
        c = rng.integers(3, 17, size=3)
        s = rng.integers(1, 4, size=3)
        probs[2, c[0]:c[0] + s[0], c[1]:c[1] + s[1], c[2]:c[2] + s[2]] = rng.choice([0.6, 0.85, 0.95])
    ours = regions_to_labels(probs, T, 4)
    apply_et_rule(ours, probs[2], ETRule(), 4)
    np.testing.assert_array_equal(ours, nvidia_to_lbl(probs, 4))


# -------------------------------------------------------------------------------------- sigmoid

def test_sigmoid_values():
    x = np.array([-100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0], dtype=np.float32)
    with np.errstate(over="ignore"):
        y = sigmoid(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(y, 1.0 / (1.0 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-30)
    assert y[0] == pytest.approx(0.0, abs=1e-40) and y[-1] == 1.0


def test_sigmoid_float64_and_extreme_inputs():
    x = np.array([-1e4, -100.0, 100.0, 1e4])
    with np.errstate(over="ignore"):
        y = sigmoid(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 1.0])


def test_sigmoid_does_not_modify_input():
    x = np.array([[-3.0, 3.0]], dtype=np.float32)
    sigmoid(x)
    np.testing.assert_array_equal(x, [[-3.0, 3.0]])


def test_sigmoid_emits_no_overflow_warning():
    x = np.array([-100.0, 100.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn"):
            sigmoid(x)


def _et_rule_one_component_at_a_time(labels, prob, rule, et):
    """The rule as NVIDIA states it, component by component (the reference for the vectorised one)."""
    from scipy import ndimage

    changed = 0
    components, n = ndimage.label(labels == et)
    for idx in range(1, n + 1):
        part = components == idx
        size = int(part.sum())
        if 1 < size < rule.component_max_voxels and prob[part].sum() / size < rule.max_mean_prob:
            labels[part] = 1
            changed += size
    mask = labels == et
    if 0 < mask.sum() < rule.total_max_voxels and prob[mask].mean() < rule.max_mean_prob:
        labels[mask] = 1
        changed += int(mask.sum())
    return changed


@pytest.mark.parametrize("seed", range(6))
def test_et_rule_matches_the_component_by_component_rule(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=(24, 20, 16), p=[0.5, 0.1, 0.1, 0.3])
    prob = rng.uniform(0.5, 1.0, labels.shape).astype(np.float32)
    rule = ETRule(component_max_voxels=int(rng.integers(3, 40)), total_max_voxels=int(rng.integers(0, 3000)))
    ours, ref = labels.copy(), labels.copy()
    assert apply_et_rule(ours, prob, rule, 4) == _et_rule_one_component_at_a_time(ref, prob, rule, 4)
    assert np.array_equal(ours, ref)
    assert (ours != labels).any()  # random labels: small ET components exist and become NCR


def test_sigmoid_of_a_strided_volume_larger_than_a_slab(rng):
    # the crop of padded logits (a strided view) cut into several slabs: each voxel as float64 computes it
    padded = rng.normal(-2.0, 6.0, size=(3, 44, 62, 72)).astype(np.float32)
    padded[0, 5, 7, 1:5] = [-120.0, -88.5, 88.5, 120.0]  # view[0, 3, 4, :4]
    view = padded[:, 2:42, 3:60, 1:70]
    assert view[0].size > SLAB and not view.flags.c_contiguous  # two slabs per channel
    y = sigmoid(view)
    assert y.shape == view.shape and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, 1.0 / (1.0 + np.exp(-view.astype(np.float64))), rtol=2e-6, atol=1e-37)
    assert y[0, 3, 4, 3] == 1.0 and y[0, 3, 4, 0] == 0.0


def test_region_volumes_from_label_counts():
    from seg_edge.runtime.segmenter import region_volumes

    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0, 0, :3] = 1
    labels[1, :5, 0] = 2
    labels[2, :7, 1] = 3
    vol = region_volumes(labels, 3, (1.0, 1.0, 2.0))  # 2 µL voxels
    assert vol == pytest.approx({"WT": 15 * 0.002, "TC": 10 * 0.002, "ET": 7 * 0.002, "NCR": 3 * 0.002,
                                 "ED": 5 * 0.002})
    assert region_volumes(labels, 4, (1.0, 1.0, 1.0))["ET"] == 0.0  # label 3 is not ET under brats2021


@pytest.mark.parametrize("et", [3, 4])
def test_region_counts_agree_with_the_region_masks(rng, et):
    from seg_edge.runtime.regions import region_counts

    labels = rng.choice(np.array([0, 1, 2, et], dtype=np.uint8), size=(20, 18, 16))
    counts = region_counts(labels, et)
    for name, mask in zip(("WT", "TC", "ET"), labels_to_regions(labels, et)):
        assert counts[name] == int(mask.sum())
    assert (counts["NCR"], counts["ED"]) == (int((labels == 1).sum()), int((labels == 2).sum()))
