"""One CSV row per case with the official package's column names, and the rows for missing cases and summaries.

The names, their order and every rule here come from brats-evaluation 0.0.10 ``metrics_parser.py``:
``parse_seg_results`` (gli, ped, men, men-rt, goat) and ``parse_mets_results`` (mets; volume threshold
20 mm³ between small and large lesions, Dice 0.1 to count a lesion as detected); ``_handle_missing_data``
(373 in every HD95 column that is not a std, 0 elsewhere, for a ground truth without prediction);
``_calculate_mean_std_median`` (pandas: NaN skipped, sample std).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from seg_edge.evaluation.challenges import PANOPTICA_HD95_PENALTY, Challenge
from seg_edge.evaluation.lesionwise import NAN, RegionScore, finite_or
from seg_edge.runtime.atomic import atomic_write

_INSTANCE = ("tp", "fp", "fn", "prec", "rec", "f1")


def _all_instance(s: RegionScore, k: str) -> dict[str, float]:
    values = (s.tp, s.fp, s.fn, s.precision, s.recall, s.f1)
    return {f"all_instance_{name}_{k}": v for name, v in zip(_INSTANCE, values)}


def _global(s: RegionScore, k: str) -> dict[str, float]:
    return {f"global_dsc_{k}": s.global_dice, f"global_nsd_{k}": s.global_nsd,
            f"global_hd95_{k}": finite_or(s.global_hd95, PANOPTICA_HD95_PENALTY)}


def seg_columns(s: RegionScore, k: str) -> dict[str, float]:
    """``parse_seg_results``'s columns of one region (lesion-wise = matched pairs only, inf kept)."""
    row = _all_instance(s, k) | _global(s, k)
    for metric, short in (("dice", "dsc"), ("nsd", "nsd"), ("hd95", "hd95")):
        row[f"lesionwise_{short}_mean_{k}"] = s.lesion_mean(metric)
        row[f"lesionwise_{short}_std_{k}"] = s.lesion_std(metric)
    return row


def _mets_lists(s: RegionScore, large_mm3: float, detect: float) -> dict:
    large: dict[str, list[float]] = {"dice": [], "hd95": [], "nsd": []}
    det = {"large_tp": 0, "large_fn": 0, "small_tp": 0, "small_fn": 0}
    seen = {"large": False, "small": False}
    for pair in s.pairs:
        size = "large" if pair.reference.volume_mm3 >= large_mm3 else "small"
        seen[size] = True
        if size == "large":
            for m in large:
                large[m].append(getattr(pair, m))
        det[f"{size}_tp" if pair.dice >= detect else f"{size}_fn"] += 1
    for lesion in s.missed:
        size = "large" if lesion.volume_mm3 >= large_mm3 else "small"
        seen[size] = True
        det[f"{size}_fn"] += 1
        if size == "large":
            large["dice"].append(0.0)
            large["nsd"].append(0.0)
            large["hd95"].append(PANOPTICA_HD95_PENALTY)
    for m, penalty in (("dice", 0.0), ("nsd", 0.0), ("hd95", PANOPTICA_HD95_PENALTY)):
        large[m].extend([penalty] * s.fp)
    return {"large": large, "det": det, "seen": seen}


def _detection(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """(precision, recall, F1) with 0 where the parser divides by zero."""
    prec = tp / (tp + fp) if tp + fp > 0 else 0.0
    rec = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else 0.0
    return prec, rec, f1


def mets_columns(s: RegionScore, k: str, large_mm3: float, detect: float) -> dict[str, float]:
    """``parse_mets_results``'s columns of one region."""
    lists = _mets_lists(s, large_mm3, detect)
    large, det, seen = lists["large"], lists["det"], lists["seen"]
    row = _all_instance(s, k)
    names = ("tp", "fp", "fn", "prec", "rec", "f1")
    if seen["large"]:
        tp, fn = det["large_tp"], det["large_fn"]
        row |= dict(zip((f"large_instance_{n}_{k}" for n in names), (tp, s.fp, fn, *_detection(tp, s.fp, fn))))
    else:
        row |= {f"large_instance_{n}_{k}": NAN for n in names}
    for metric, short in (("dice", "dsc"), ("hd95", "hd95"), ("nsd", "nsd")):
        values = [v for v in large[metric] if not math.isinf(v)]
        empty = PANOPTICA_HD95_PENALTY if metric == "hd95" else 0.0
        ok = s.n_ref > 0 and seen["large"]
        row[f"lesionwise_{short}_mean_{k}"] = (float(np.mean(values)) if values else empty) if ok else NAN
        row[f"lesionwise_{short}_std_{k}"] = (float(np.std(values)) if values else 0.0) if ok else NAN
    small = ("tp", "fn", "fp", "prec", "rec", "f1")
    if seen["small"]:
        tp, fn = det["small_tp"], det["small_fn"]
        prec, rec, f1 = _detection(tp, s.fp, fn)
        row |= dict(zip((f"small_instance_{n}_{k}" for n in small), (tp, fn, s.fp, prec, rec, f1)))
    else:
        row |= {f"small_instance_{n}_{k}": NAN for n in small}
    return row | _global(s, k)


def case_row(subject: str, scores: dict[str, RegionScore], challenge: Challenge) -> dict:
    """The official CSV row of one case: ``subject_id`` then each region's columns in the config's order."""
    row: dict = {"subject_id": subject}
    for key in challenge.region_keys:
        if challenge.parser == "mets":
            row |= mets_columns(scores[key], key, challenge.large_volume_mm3, challenge.detection_dice)
        else:
            row |= seg_columns(scores[key], key)
    return row


def missing_row(subject: str, columns: list[str]) -> dict:
    """A ground truth without prediction: 373 in HD95 columns (not their std), 0 elsewhere."""
    return {"subject_id": subject} | {c: (PANOPTICA_HD95_PENALTY if "hd95" in c and "std" not in c else 0)
                                      for c in columns if c != "subject_id"}


def summary_rows(rows: list[dict]) -> list[dict]:
    """``mean``, ``std`` (sample) and ``median`` of every column over ``rows``, NaN skipped (pandas' rules)."""
    columns = [c for c in rows[0] if c != "subject_id"]
    out = []
    for name in ("mean", "std", "median"):
        summary: dict = {"subject_id": name}
        for c in columns:
            values = np.array([float(r[c]) for r in rows], dtype=float)
            values = values[~np.isnan(values)]
            summary[c] = _summary(values, name)
        out.append(summary)
    return out


def _summary(values: np.ndarray, how: str) -> float:
    if how == "std":
        if values.size < 2:
            return NAN
        with np.errstate(invalid="ignore"):
            return float(np.std(values, ddof=1))
    if values.size == 0:
        return NAN
    with np.errstate(invalid="ignore"):
        return float(np.mean(values) if how == "mean" else np.median(values))


def _cell(value: object) -> str:
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(v)


def write_rows(rows: list[dict], path: Path) -> None:
    """The rows as CSV with the first row's columns (written atomically)."""
    columns = list(rows[0])
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in columns])
