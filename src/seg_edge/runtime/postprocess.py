"""Logits → probabilities, and NVIDIA's ET clean-up rule (regions ⇄ labels live in ``runtime.regions``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from seg_edge.artifact import ETRule


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in float32, without overflow for large negative logits."""
    return special.expit(np.asarray(logits, dtype=np.float32))


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
