"""Logits → probabilities → nested regions → BraTS labels, with NVIDIA's ET clean-up rule."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from seg_edge.artifact import ETRule
from seg_edge.errors import InputError

LABEL_SCHEMES = {"brats2021": 4, "brats2023": 3}


def et_label(scheme: str) -> int:
    if scheme not in LABEL_SCHEMES:
        raise InputError(f"label scheme '{scheme}' (expected one of {', '.join(LABEL_SCHEMES)})")
    return LABEL_SCHEMES[scheme]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in float32, without overflow for large negative logits."""
    return special.expit(np.asarray(logits, dtype=np.float32))


def regions_to_labels(probs: np.ndarray, thresholds: tuple[float, ...], et: int) -> np.ndarray:
    """(3, …) WT/TC/ET probabilities → uint8 labels: ED=2 in WT∖TC, NCR=1 in TC, ET inside WT."""
    wt, tc, en = (probs[i] > thresholds[i] for i in range(3))
    labels = wt.astype(np.uint8)
    labels[wt & ~tc] = 2
    labels[wt & en] = et
    return labels


def apply_et_rule(labels: np.ndarray, et_prob: np.ndarray, rule: ETRule, et: int) -> int:
    """NVIDIA's clean-up in place: doubtful small ET becomes NCR. Returns voxels relabelled."""
    if not rule.enabled:
        return 0
    mask = labels == et
    if not mask.any():
        return 0
    changed = 0
    components, n = ndimage.label(mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sums = np.bincount(components.ravel(), weights=et_prob.ravel(), minlength=n + 1)
    for idx in range(1, n + 1):
        size = int(sizes[idx])
        if 1 < size < rule.component_max_voxels and sums[idx] / size < rule.max_mean_prob:
            labels[components == idx] = 1
            changed += size
    mask = labels == et
    total = int(mask.sum())
    if 0 < total < rule.total_max_voxels and float(et_prob[mask].mean()) < rule.max_mean_prob:
        labels[mask] = 1
        changed += total
    return changed


def labels_to_regions(labels: np.ndarray, et: int) -> np.ndarray:
    """uint8 labels → bool (3, …) WT={1,2,ET}, TC={1,ET}, ET={ET}."""
    return np.stack([np.isin(labels, (1, 2, et)), np.isin(labels, (1, et)), labels == et])
