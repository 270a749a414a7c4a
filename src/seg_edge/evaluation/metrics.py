"""Segmentation metrics per region with BraTS conventions for empty masks.

HD95 follows the usual definition (MONAI ``compute_hausdorff_distance(percentile=95)``):
surface voxels are a mask minus its 6-connected erosion; distances are Euclidean in mm
using the voxel spacing; the result is the larger of the two directed 95th percentiles.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg_edge.evaluation.surface import nearest_distances
from seg_edge.runtime.regions import REGIONS, dice

# BraTS: Dice 1 / HD95 0 when both masks are empty; Dice 0 / HD95 373.13 (the diagonal of the
# 240×240×155 grid in mm) when exactly one is.
EMPTY_HD95 = 373.13
METRICS = ("dice", "iou", "hd95", "sensitivity", "specificity", "precision", "accuracy")


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two boolean masks."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return EMPTY_HD95
    union = pred | truth
    lo = [max(int(np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != d)))[0]) - 1, 0)
          for d in range(3)]
    hi = [int(np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != d)))[-1]) + 2 for d in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sp, st = np.argwhere(_surface(pred[box])), np.argwhere(_surface(truth[box]))
    # the nearest surface voxel by k-d tree, the distance as distance_transform_edt computes it: the same
    # figures as the transform of the box, at a cost that grows with the surfaces instead of the box
    sampling = np.asarray(spacing, dtype=np.float64)
    to_truth, to_pred = nearest_distances(sp, st, sampling), nearest_distances(st, sp, sampling)
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def region_metrics(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...],
                   total: int | None = None) -> dict[str, float]:
    """All METRICS for one boolean region mask pair. ``total``: the whole image's voxel count when the masks are
    a crop of it holding every true voxel (for the true negatives); the masks' own size otherwise."""
    size = int(pred.size) if total is None else int(total)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = size - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "dice": dice(pred, truth),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "hd95": hd95(pred, truth, spacing),
        "sensitivity": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "precision": 1.0 if tp + fp == 0 else tp / (tp + fp),
        "accuracy": (tp + tn) / size,
    }


def summarize(cases: list[dict], regions: tuple[str, ...] = REGIONS) -> dict:
    """Mean and std (population) of every metric per region over cases."""
    out: dict = {}
    for region in regions:
        out[region] = {}
        for metric in METRICS:
            values = np.array([c[region][metric] for c in cases], dtype=float)
            out[region][metric] = {"mean": float(values.mean()) if values.size else float("nan"),
                                   "std": float(values.std()) if values.size else float("nan")}
    return out
