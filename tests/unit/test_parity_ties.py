"""Parity against a framework predictor whose own rounding leaves ties: a label changed where the
reference's probability sits on a decision boundary (nnU-Net's float16 sums give p = 0.5 exactly)
is reported and not judged; a change where the reference decided clearly still fails."""

from __future__ import annotations

import numpy as np

from seg_edge.card import Outputs
from seg_edge.evaluation.parity import compare, decision_ties, judge
from seg_edge.runtime.io import Case
from seg_edge.runtime.segmenter import Segmentation

SEQUENTIAL = Outputs(kind="sigmoid", rule="sequential")


def _case(shape=(12, 12, 12)) -> Case:
    return Case("c", np.zeros((4,) + shape, np.float32), np.eye(4), None, {})


def _segmentation(probs: np.ndarray) -> Segmentation:
    from seg_edge.runtime.postprocess import to_labels

    labels = to_labels(probs, SEQUENTIAL, 4)
    return Segmentation("c", labels, "brats2021", {"WT": 0.0, "TC": 0.0, "ET": 0.0}, {}, probs)


def _reference() -> np.ndarray:
    """WT everywhere in a 6³ block, TC and ET in a 1×3×3 slab of it (9 voxels: ET Dice moves 0.1 per voxel)."""
    probs = np.full((3, 12, 12, 12), 0.1, np.float32)
    probs[0, 3:9, 3:9, 3:9] = 0.9
    probs[1:, 5, 4:7, 4:7] = 0.9
    return probs


def test_decision_ties_sigmoid_and_softmax():
    probs = np.array([[0.5, 0.7], [0.4995, 0.2], [0.1, 0.5008]], np.float32)[:, :, None, None]
    assert decision_ties(probs, SEQUENTIAL, 1e-3)[:, 0, 0].tolist() == [True, True]
    assert decision_ties(probs, SEQUENTIAL, 1e-4)[:, 0, 0].tolist() == [True, False]
    soft = Outputs(kind="softmax", channels=("background", "NCR", "ED", "ET"), rule="argmax")
    classes = np.array([[0.4996, 0.6], [0.5, 0.3], [0.0004, 0.05], [0.0, 0.05]], np.float32)[:, :, None, None]
    assert decision_ties(classes, soft, 1e-3)[:, 0, 0].tolist() == [True, False]


def test_a_change_at_the_references_tie_is_reported_not_judged():
    ref_probs = _reference()
    ref_probs[2, 4, 5, 5] = 0.5  # the reference's ET sits exactly on its threshold: not ET
    ref_probs[1:2, 4, 5, 5] = 0.9
    got_probs = ref_probs.copy()
    got_probs[2, 4, 5, 5] = 0.5001  # float32 sums decide it: ET
    ref, got = _segmentation(ref_probs), _segmentation(got_probs)
    box = (slice(None),) * 3
    strict = judge(compare(_case(), got, ref, "onnxruntime", box, 4), 0.1, 0.999)
    assert strict.labels_changed == 1 and strict.reference_ties == 0 and not strict.passed
    tied = judge(compare(_case(), got, ref, "onnxruntime", box, 4, SEQUENTIAL, 1e-3), 0.1, 0.999)
    assert tied.labels_changed == 1 and tied.reference_ties == 1 and tied.passed
    assert tied.dice["ET"] < 0.999 and tied.dice_outside_ties["ET"] == 1.0


def test_a_change_where_the_reference_decided_still_fails():
    ref_probs = _reference()
    got_probs = ref_probs.copy()
    got_probs[2, 5, 5, 5] = 0.45  # the reference said 0.9: a real difference, whatever the band
    result = judge(compare(_case(), _segmentation(got_probs), _segmentation(ref_probs), "onnxruntime",
                           (slice(None),) * 3, 4, SEQUENTIAL, 1e-3), 1.0, 0.999)
    assert result.reference_ties == 0 and not result.passed
    assert any(f.startswith("ET Dice") for f in result.failures)


def test_parity_result_is_keyword_only():
    import pytest

    from seg_edge.evaluation.parity import ParityResult

    with pytest.raises(TypeError):
        ParityResult("c", "onnxruntime", 0.1, 0.01, 0.05, 1.0, 0, {}, {}, {})  # the mistake it prevents
    result = ParityResult(case_id="c", backend="onnxruntime", max_abs=0.1, mean_abs=0.01, p999_abs=0.05,
                          label_agreement=1.0, labels_changed=0, dice={}, hd95={}, volume_diff_ml={})
    assert result.max_abs == 0.1 and result.passed is False
