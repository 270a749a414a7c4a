"""BraTS 2023 lesion-wise scores, as published with the challenge (rachitsaluja/BraTS-2023-Metrics,
``brats_2023_metrics/surface_distance/brats_metrics.py``), implemented from that definition:

- lesions are 26-connected components; the ground truth is dilated ``dilation`` times with the 18-connected
  element, and ground-truth components that fall in one component of the dilated mask form one lesion
  (a satellite joins its lesion);
- a predicted component touching a lesion's own dilation is that lesion's (a prediction may serve two lesions);
  the lesion's Dice and HD95 compare it with the union of its predicted components;
- a lesion of volume (mm³) ≤ the threshold is left out of the counts and scores, but its predicted components are
  not false positives; a predicted component touching no lesion is a false positive;
- per case and region: lesion-wise Dice = Σ Dice / (lesions + FP); HD95 = (Σ HD95 + 374·FP) / (lesions + FP),
  a lesion with no prediction has HD95 inf → 374; 0/0 gives Dice 1, HD95 0;
- HD95 is DeepMind's surface-distance definition: surface elements on the voxel-corner grid weighted by their area
  (marching-cubes table of the ``surface-distance`` package), 95 % of the area from each side, the larger side;
- the "legacy" figures of that code: whole-region Dice (1 when both empty), HD95 (0 when both empty, 374 when one
  is), sensitivity and specificity with its ε, ground-truth volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from seg_edge.errors import MissingExtra
from seg_edge.evaluation.challenges import BRATS2023_HD95_PENALTY
from seg_edge.evaluation.lesionwise import components
from seg_edge.evaluation.surface import nearest_distances, union_box

_CONNECT_18 = ndimage.generate_binary_structure(3, 2)
_CORNER_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
COLUMNS = ("Labels", "Num_TP", "Num_FP", "Num_FN", "Sensitivity", "Specificity", "Legacy_Dice", "Legacy_HD95",
           "GT_Complete_Volume", "Lesion_Wise_Score_Dice", "Lesion_Wise_Score_HD95")


def surfel_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (mm²) of the surface element of each 2×2×2 neighbour code at ``spacing`` (DeepMind's table)."""
    try:
        from surface_distance.lookup_tables import create_table_neighbour_code_to_surface_area
    except ModuleNotFoundError as exc:
        raise MissingExtra("surface_distance", "--challenge brats2023 (its HD95)") from exc
    return np.asarray(create_table_neighbour_code_to_surface_area(spacing), dtype=np.float64)


def robust_hd95(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> float:
    """DeepMind's ``compute_robust_hausdorff(compute_surface_distances(truth, pred, spacing), 95)``; inf when
    exactly one mask is empty (the caller decides both-empty)."""
    box = union_box(truth, pred)
    if box is None:
        return float("inf")
    shape = tuple(s.stop - s.start + 1 for s in box)
    codes, borders = [], []
    for mask in (truth, pred):
        padded = np.zeros(shape, dtype=np.uint8)
        padded[:-1, :-1, :-1] = mask[box]
        code = ndimage.correlate(padded, _CORNER_KERNEL, mode="constant", cval=0)
        codes.append(code)
        borders.append((code != 0) & (code != 255))
    if not borders[0].any() or not borders[1].any():
        return float("inf")
    areas = surfel_areas(spacing)
    sampling = np.asarray(spacing, dtype=np.float64)
    points = [np.argwhere(b) for b in borders]
    worst = 0.0
    for own, other in ((0, 1), (1, 0)):
        # the distance transform of the other border, read at this border's corners: the nearest corner found
        # with a k-d tree, the distance computed from the integer offset as the transform computes it
        dist = nearest_distances(points[own], points[other], sampling)
        area = areas[codes[own][borders[own]]]
        order = np.lexsort((area, dist))  # as sorted(zip(distance, area))
        dist, area = dist[order], area[order]
        cum = np.cumsum(area) / np.sum(area)
        idx = int(np.searchsorted(cum, 0.95))
        worst = max(worst, float(dist[min(idx, dist.size - 1)]))
    return worst


@dataclass
class Lesion2023:
    """One ground-truth lesion: volume, its predicted components, Dice and HD95 (374 when missed)."""

    index: int
    volume_mm3: float
    predicted: list[int]
    dice: float
    hd95: float


@dataclass
class Region2023:
    """The 2023 figures of one region of one case."""

    region: str
    threshold_mm3: float
    lesions: list[Lesion2023] = field(default_factory=list)
    false_positives: list[int] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def detail(self) -> dict:
        """Figures and per-lesion detail for ``--json``."""
        out: dict = dict(self.figures)
        out["lesions"] = [{"lesion": x.index, "volume_mm3": x.volume_mm3, "predicted_components": x.predicted,
                           "dice": x.dice, "hd95": x.hd95, "counted": x.volume_mm3 > self.threshold_mm3}
                          for x in self.lesions]
        out["false_positives"] = self.false_positives
        return out


def _merged_lesions(truth: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Ground-truth lesions after merging components that share a component of the dilated mask."""
    dilated = ndimage.binary_dilation(truth, structure=_CONNECT_18, iterations=dilation) if dilation else truth
    dilated_cc, n = components(dilated)
    return np.where(truth, dilated_cc, 0), n


def _legacy_figures(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], total: int) -> dict[str, float]:
    tp = int(np.count_nonzero(truth & pred))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    fp, fn = n_pred - tp, n_truth - tp
    tn = total - n_pred - n_truth + tp
    eps = float(np.finfo(float).eps)
    both_empty = n_pred == 0 and n_truth == 0
    hd = 0.0 if both_empty else robust_hd95(truth, pred, spacing)
    return {"Sensitivity": 1.0 if both_empty else tp / (tp + fn + eps), "Specificity": tn / (tn + fp + eps),
            "Legacy_Dice": 1.0 if both_empty else 2.0 * tp / (n_pred + n_truth),
            "Legacy_HD95": BRATS2023_HD95_PENALTY if np.isinf(hd) else hd,
            "GT_Complete_Volume": n_truth * float(np.prod(spacing))}


def brats2023_region(name: str, truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], *,
                     dilation: int, threshold_mm3: float, total_voxels: int | None = None) -> Region2023:
    """The 2023 lesion-wise figures of one region (boolean masks of one shape). ``total_voxels``: the whole
    image's, for the specificity, when the masks are a crop of it (a crop must keep ``dilation`` voxels
    around every true voxel, or reach the image's edge)."""
    result = Region2023(region=name, threshold_mm3=threshold_mm3)
    figures = _legacy_figures(truth, pred, spacing, truth.size if total_voxels is None else total_voxels)
    box = union_box(truth, pred)
    if box is not None:  # grow the box by the dilation so that cropping changes nothing
        box = tuple(slice(max(s.start - dilation, 0), min(s.stop + dilation, n)) for s, n in zip(box, truth.shape))
        truth, pred = truth[box], pred[box]
    lesions, n_lesions = _merged_lesions(truth, dilation) if box is not None else (truth, 0)
    pred_cc, n_pred = components(pred) if box is not None else (pred, 0)
    voxel_mm3 = float(np.prod(spacing))
    touched: set[int] = set()
    for k, found in enumerate(ndimage.find_objects(lesions) if n_lesions else [], start=1):
        # the lesion's reach (its own dilation) lies within its box grown by the dilation
        near = tuple(slice(max(s.start - dilation, 0), min(s.stop + dilation, n)) for s, n in zip(found, lesions.shape))
        lesion_near = lesions[near] == k
        reach = (ndimage.binary_dilation(lesion_near, structure=_CONNECT_18, iterations=dilation) if dilation
                 else lesion_near)
        hit = sorted(int(v) for v in np.unique(pred_cc[near][reach]) if v)
        touched.update(hit)
        lesion = lesions == k
        matched = np.isin(pred_cc, hit)
        inter = int(np.count_nonzero(matched & lesion))
        dice = 2.0 * inter / (int(np.count_nonzero(matched)) + int(np.count_nonzero(lesion)))
        hd = robust_hd95(lesion, matched, spacing)
        result.lesions.append(Lesion2023(k, int(np.count_nonzero(lesion)) * voxel_mm3, hit, dice,
                                         BRATS2023_HD95_PENALTY if np.isinf(hd) else hd))
    result.false_positives = [p for p in range(1, n_pred + 1) if p not in touched]
    counted = [x for x in result.lesions if x.volume_mm3 > threshold_mm3]
    n_fp = len(result.false_positives)
    denominator = len(counted) + n_fp
    figures |= {"Num_TP": sum(1 for x in counted if x.predicted), "Num_FP": n_fp,
                "Num_FN": sum(1 for x in counted if not x.predicted),
                "Lesion_Wise_Score_Dice": sum(x.dice for x in counted) / denominator if denominator else 1.0,
                "Lesion_Wise_Score_HD95": ((sum(x.hd95 for x in counted) + n_fp * BRATS2023_HD95_PENALTY)
                                           / denominator if denominator else 0.0)}
    result.figures = figures
    return result


def case_rows(subject: str, regions: dict[str, Region2023]) -> list[dict]:
    """The 2023 code's rows for one case (WT, TC, ET), with its ``Case_Name`` column first."""
    return [{"Case_Name": subject, "Labels": key} | {c: r.figures[c] for c in COLUMNS[1:]}
            for key, r in regions.items()]
