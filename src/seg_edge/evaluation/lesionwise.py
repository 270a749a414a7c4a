"""Lesion-wise scores of one region: instances, matching, per-lesion and per-case figures.

``panoptica_region`` follows the current official evaluation (brats-evaluation over panoptica 2.1.7):

- instances are the 26-connected components of each mask (panoptica ``ConnectedComponentsInstanceApproximator``,
  cc3d's default connectivity);
- matching is one-to-one and maximises the summed Dice (``MaxBipartiteMatching``: Hungarian assignment on
  1 − Dice over the pairs that overlap with Dice ≥ 1e-6; a pair left at the default cost is no match);
- each matched pair gets Dice, NSD (tolerance = smallest spacing) and HD95 in mm (``evaluation.surface``);
- TP = matched pairs, FP = predicted instances left over, FN = reference instances left over; precision
  TP/(TP+FP), recall TP/(TP+FN) (NaN without instances to divide by), F1 = TP/(TP + (FP+FN)/2), 0 when TP = 0
  and NaN when there is no instance at all (panoptica ``rq``);
- the lesion-wise Dice/NSD/HD95 are the mean and population std over matched pairs only (panoptica ``sq_*``);
  with no match they take the edge-case values of the bundled configs: Dice 0, NSD 0, HD95 inf, std NaN —
  and NaN throughout when neither mask has an instance;
- the global figures compare the two whole masks **without** the voxel spacing (panoptica calls the metric
  without it): Dice, HD95 in voxels, NSD at a 0.5-voxel tolerance; when the masks share no voxel they take the
  same edge-case values (NaN when both are empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from seg_edge.evaluation import surface

_CONNECT_26 = np.ones((3, 3, 3), dtype=bool)
NAN = float("nan")
INF = float("inf")


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a boolean mask: (labels 1..n, n)."""
    labels, n = ndimage.label(mask, structure=_CONNECT_26)
    return labels, int(n)


@dataclass
class Lesion:
    """One instance: its component number in its own mask, voxels and volume (mm³)."""

    index: int
    voxels: int
    volume_mm3: float


@dataclass
class Pair:
    """A matched reference and predicted instance with their figures."""

    reference: Lesion
    prediction: Lesion
    dice: float
    nsd: float
    hd95: float


@dataclass
class RegionScore:
    """Every figure of one region of one case, with the per-lesion detail behind them."""

    region: str
    n_ref: int
    n_pred: int
    pairs: list[Pair] = field(default_factory=list)
    missed: list[Lesion] = field(default_factory=list)
    false_positives: list[Lesion] = field(default_factory=list)
    global_dice: float = NAN
    global_nsd: float = NAN
    global_hd95: float = NAN

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_ref - self.tp

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else NAN

    @property
    def recall(self) -> float:
        return self.tp / self.n_ref if self.n_ref else NAN

    @property
    def f1(self) -> float:
        if self.tp == 0:
            return 0.0 if self.n_pred + self.n_ref > 0 else NAN
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)

    def _edge(self, metric: str) -> float:
        if self.n_pred + self.n_ref == 0:
            return NAN
        return INF if metric == "hd95" else 0.0

    def lesion_mean(self, metric: str) -> float:
        """Mean of ``metric`` over matched pairs; the edge-case value with none."""
        if not self.pairs:
            return self._edge(metric)
        return float(np.average([getattr(p, metric) for p in self.pairs]))

    def lesion_std(self, metric: str) -> float:
        """Population std of ``metric`` over matched pairs; NaN with none."""
        if not self.pairs:
            return NAN
        return float(np.std([getattr(p, metric) for p in self.pairs]))


def _dice_pairs(ref_cc: np.ndarray, pred_cc: np.ndarray, n_pred: int,
                ref_sizes: np.ndarray, pred_sizes: np.ndarray) -> list[tuple[int, int, float]]:
    """(reference, prediction, Dice) of every overlapping pair of instances, from one pass over the overlap."""
    both = (ref_cc > 0) & (pred_cc > 0)
    keys, counts = np.unique(ref_cc[both].astype(np.int64) * (n_pred + 1) + pred_cc[both], return_counts=True)
    out = []
    for key, inter in zip(keys.tolist(), counts.tolist()):
        r, p = divmod(key, n_pred + 1)
        out.append((r, p, 2.0 * inter / (int(ref_sizes[r]) + int(pred_sizes[p]))))
    return out


def match(pairs: list[tuple[int, int, float]], n_ref: int, n_pred: int,
          threshold: float) -> list[tuple[int, int]]:
    """One-to-one matches maximising summed Dice: (reference, prediction) component numbers, by reference."""
    # panoptica MaxBipartiteMatching: cost 1 − Dice for pairs with Dice >= threshold, 1 + 1e-6 otherwise
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    for r, p, d in pairs:
        if d >= threshold:
            cost[r - 1, p - 1] = 1.0 - d
    rows, cols = linear_sum_assignment(cost)
    return sorted((int(r) + 1, int(c) + 1) for r, c in zip(rows, cols) if cost[r, c] < 1.0)


def _pair_figures(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float, float]:
    box = surface.union_box(ref, pred)
    ref, pred = ref[box], pred[box]
    inter = int(np.count_nonzero(ref & pred))
    dice = 2.0 * inter / (int(np.count_nonzero(ref)) + int(np.count_nonzero(pred)))
    from_ref, from_pred = surface.surface_distances(ref, pred, spacing)
    return dice, surface.nsd(from_ref, from_pred, min(spacing)), surface.hd95(from_ref, from_pred)


def _global(score: RegionScore, ref: np.ndarray, pred: np.ndarray) -> None:
    if not np.any(ref & pred):
        score.global_dice, score.global_nsd, score.global_hd95 = (score._edge(m) for m in ("dice", "nsd", "hd95"))
        return
    total = int(np.count_nonzero(ref)) + int(np.count_nonzero(pred))
    score.global_dice = 2.0 * int(np.count_nonzero(ref & pred)) / total
    from_ref, from_pred = surface.surface_distances(ref, pred, (1.0, 1.0, 1.0))
    score.global_nsd = surface.nsd(from_ref, from_pred, 0.5)
    score.global_hd95 = surface.hd95(from_ref, from_pred)


def panoptica_region(name: str, reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...],
                     *, matching_threshold: float = 1e-6) -> RegionScore:
    """Every figure of one region (boolean masks of one shape) by the current official definition."""
    box = surface.union_box(reference, prediction)
    if box is None:
        return RegionScore(region=name, n_ref=0, n_pred=0)
    reference, prediction = reference[box], prediction[box]
    ref_cc, n_ref = components(reference)
    pred_cc, n_pred = components(prediction)
    score = RegionScore(region=name, n_ref=n_ref, n_pred=n_pred)
    voxel_mm3 = float(np.prod(spacing))
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    matches = (match(_dice_pairs(ref_cc, pred_cc, n_pred, ref_sizes, pred_sizes), n_ref, n_pred,
                     matching_threshold) if n_ref and n_pred else [])
    objects_ref, objects_pred = ndimage.find_objects(ref_cc), ndimage.find_objects(pred_cc)

    def lesion(sizes: np.ndarray, i: int) -> Lesion:
        return Lesion(index=i, voxels=int(sizes[i]), volume_mm3=int(sizes[i]) * voxel_mm3)

    for r, p in matches:
        sub = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                    for a, b in zip(objects_ref[r - 1], objects_pred[p - 1]))
        dice, nsd, hd = _pair_figures(ref_cc[sub] == r, pred_cc[sub] == p, spacing)
        score.pairs.append(Pair(lesion(ref_sizes, r), lesion(pred_sizes, p), dice, nsd, hd))
    matched_ref, matched_pred = {r for r, _ in matches}, {p for _, p in matches}
    score.missed = [lesion(ref_sizes, r) for r in range(1, n_ref + 1) if r not in matched_ref]
    score.false_positives = [lesion(pred_sizes, p) for p in range(1, n_pred + 1) if p not in matched_pred]
    _global(score, reference, prediction)
    return score


def finite_or(value: float, penalty: float) -> float:
    """``value``, or ``penalty`` where it is infinite (the parsers' inf → 373)."""
    return penalty if math.isinf(value) else value
