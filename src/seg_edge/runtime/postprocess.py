"""Logits → probabilities, and NVIDIA's ET clean-up rule (regions ⇄ labels live in ``runtime.regions``)."""

from __future__ import annotations

import numpy as np

from seg_edge.card import ETRule, Outputs


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in float32, without overflow for large negative logits."""
    from scipy import special  # imported on first use: scipy is ~0.2 s of a cold start

    return special.expit(np.asarray(logits, dtype=np.float32))


def apply_et_rule(labels: np.ndarray, et_prob: np.ndarray, rule: ETRule, et: int) -> int:
    """NVIDIA's clean-up in place: doubtful small ET becomes NCR. Returns voxels relabelled."""
    if not rule.enabled:
        return 0
    mask = labels == et
    if not mask.any():
        return 0
    from scipy import ndimage

    components, n = ndimage.label(mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sums = np.bincount(components.ravel(), weights=et_prob.ravel(), minlength=n + 1)
    # every doubtful small component at once: a lookup from component index to "relabel"
    doubtful = (sizes > 1) & (sizes < rule.component_max_voxels) & (sums / np.maximum(sizes, 1) < rule.max_mean_prob)
    doubtful[0] = False
    changed = int(sizes[doubtful].sum())
    if changed:
        hit = doubtful[components]
        labels[hit] = 1
        mask &= ~hit
    total = int(mask.sum())
    if 0 < total < rule.total_max_voxels and float(et_prob[mask].mean()) < rule.max_mean_prob:
        labels[mask] = 1
        changed += total
    return changed


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (0) in float32, shifted by the maximum for stability."""
    from scipy import special

    return special.softmax(np.asarray(logits, dtype=np.float32), axis=0)


# outputs.kind → logits-to-probabilities function; the card refuses kinds missing here.
ACTIVATIONS = {"sigmoid": sigmoid, "softmax": softmax}


def label_values(et: int) -> dict[str, int]:
    """BraTS label name → the value written (ET's value depends on the label scheme)."""
    return {"background": 0, "NCR": 1, "ED": 2, "ET": et}


def to_labels(probs: np.ndarray, outputs: Outputs, et: int) -> np.ndarray:
    """(K, …) probabilities → uint8 BraTS labels, by the card's output rule (docs/CARD.md).

    softmax: the label of the arg-max class. sigmoid, ``sequential``: each ``[region, label]``
    of ``order`` in turn paints its region (later ones overwrite); ``nested``: the same, but
    every region after the first counts only inside the first (NVIDIA: TC and ET inside WT).
    """
    values = label_values(et)
    if outputs.kind == "softmax":
        lut = np.array([values[name] for name in outputs.channels], dtype=np.uint8)
        return lut[np.argmax(probs, axis=0)]
    masks = {name: probs[i] > t for i, (name, t) in enumerate(zip(outputs.channels, outputs.thresholds))}
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    first = masks[outputs.order[0][0]]
    for region, label in outputs.order:
        inside = masks[region] if outputs.rule == "sequential" else masks[region] & first
        labels[inside] = values[label]
    return labels


def et_probability(probs: np.ndarray, outputs: Outputs) -> np.ndarray | None:
    """The ET probability map (sigmoid channel or softmax class named ET), or None."""
    return probs[list(outputs.channels).index("ET")] if "ET" in outputs.channels else None
