"""``evaluate --challenge``: predictions against ground truth scored by one challenge's published rules."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from seg_edge.errors import InputError
from seg_edge.evaluation.challenge_table import case_row, missing_row, summary_rows
from seg_edge.evaluation.challenges import PANOPTICA_HD95_PENALTY, Challenge
from seg_edge.evaluation.evaluate import label_box, label_files
from seg_edge.evaluation.lesionwise import panoptica_region
from seg_edge.runtime.io import read_label_volume

# The official package's subject id inside a file name (brats_evaluation/evaluation.py): 12345-000, 12345, 1234-0.
_SUBJECT = re.compile(r"(\d{5}(?:-\d{3})?|\d{4}-\d{1,3})")


def read_label_map(path: Path, challenge: Challenge) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """(uint8 labels, spacing in mm, affine) of a label file whose values are the challenge's label set."""
    data, img = read_label_volume(path)
    expected = ", ".join(str(v) for v in (0, *challenge.label_values))
    extra = sorted(_values(path, data, expected, challenge.label_values))
    if extra:
        names = ", ".join(f"{v} {n}" for v, n in sorted(challenge.labels.items()))
        raise InputError(f"{path}: labels {extra} found (expected a subset of {expected}: the {challenge.name} "
                         f"label set, {names})")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data.astype(np.uint8), spacing, img.affine


def _values(path: Path, data: np.ndarray, expected: str, allowed: tuple[int, ...]) -> set[int]:
    """The values of a label map outside ``allowed`` (0 is always allowed); InputError unless integers.

    Unsigned 8-bit maps (every BraTS label file) are checked with one table look-up per voxel; the values are
    only listed when some are outside the set."""
    if data.dtype == np.uint8:
        if set(allowed) == set(range(1, max(allowed) + 1)) and int(data.max()) <= max(allowed):
            return set()  # the set is 0..k and nothing is above k: one vectorised max
        table = np.zeros(256, dtype=bool)
        table[[0, *allowed]] = True
        inside = table[data]
        return set() if inside.all() else set(np.unique(data[~inside]).tolist())
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise InputError(f"{path}: label map holds non-integer values (expected labels {expected})")
    return set(np.unique(data).astype(int).tolist()) - {0, *allowed}


def score_case(pred: Path, truth: Path, challenge: Challenge) -> dict[str, Any]:
    """Region key → every figure of that region (a ``RegionScore``, or a ``Region2023`` for brats2023), for one
    prediction against its ground truth."""
    p_labels, _, p_affine = read_label_map(pred, challenge)
    t_labels, spacing, t_affine = read_label_map(truth, challenge)
    if p_labels.shape != t_labels.shape:
        raise InputError(f"{pred}: shape {p_labels.shape} differs from ground truth {truth} {t_labels.shape}")
    if not np.allclose(p_affine, t_affine, atol=1e-3):
        raise InputError(f"{pred}: affine differs from ground truth {truth} (expected the same grid)")
    # every figure depends on the voxels near the tumour only: crop both maps to the box around their labels,
    # grown by the 2023 dilation (a region's own union box is taken again inside)
    margin = challenge.dilation if challenge.method == "brats2023" else 0
    box = label_box(t_labels, p_labels, margin)
    t_crop, p_crop = t_labels[box], p_labels[box]
    if challenge.method == "brats2023":
        from seg_edge.evaluation.brats2023 import brats2023_region

        return {r.key: brats2023_region(r.key, _mask(t_crop, r.labels), _mask(p_crop, r.labels), spacing,
                                        dilation=challenge.dilation, threshold_mm3=challenge.volume_threshold_mm3,
                                        total_voxels=t_labels.size)
                for r in challenge.regions}
    return {r.key: panoptica_region(r.key, _mask(t_crop, r.labels), _mask(p_crop, r.labels), spacing,
                                    matching_threshold=challenge.matching_threshold)
            for r in challenge.regions}


def _mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """``np.isin(labels, values)`` for uint8 labels, by table look-up (several times faster)."""
    table = np.zeros(256, dtype=bool)
    table[list(values)] = True
    return table[labels]


def pair_files(pred: Path, truth: Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[str, Path]], list[str]]:
    """(case id, prediction, truth) pairs; ground truths without prediction; predictions without truth.

    Ids are seg-edge's (``<id>.nii.gz`` against ``<id>_seg`` / ``<id>-seg`` or case folders); a ground truth
    whose id has no prediction is paired, as the official package pairs them, with the one prediction carrying
    the same BraTS subject number (``BraTS-GLI-00000-000-seg.nii.gz`` ↔ ``…00000-000.nii.gz``).
    """
    preds, truths = label_files(pred), label_files(truth)
    if pred.is_file() and truth.is_file():
        preds = {next(iter(truths)): pred}
    pairs, missing, used = [], [], set()
    by_subject: dict[str, list[str]] = {}
    for name in preds:
        if (m := _SUBJECT.search(name)) is not None:
            by_subject.setdefault(m.group(1), []).append(name)
    for tid in sorted(truths, key=lambda t: truths[t].name):
        pid: str | None = tid if tid in preds else None
        if pid is None and (m := _SUBJECT.search(tid)) is not None and len(by_subject.get(m.group(1), [])) == 1:
            pid = by_subject[m.group(1)][0]
        if pid is None or pid in used:
            missing.append((tid, truths[tid]))
            continue
        used.add(pid)
        pairs.append((tid, preds[pid], truths[tid]))
    if not pairs:
        raise InputError(f"{pred}: no case ids in common with {truth} "
                         f"(found e.g. {sorted(preds)[:2]} vs {sorted(truths)[:2]})")
    return pairs, missing, sorted(set(preds) - used)


def evaluate_challenge(pred: Path, truth: Path, challenge: Challenge, *, keep_missing: bool = True,
                       workers: int | None = None) -> dict:
    """Score every pair; ``{"challenge", "cases": [{case_id, subject_id, prediction, truth, regions}], "rows",
    "summary", "missing", "unmatched"}`` where ``rows`` are the official CSV rows (ground truths without a
    prediction get the penalty row when ``keep_missing``) and ``summary`` the mean/std/median rows. ``workers``:
    cases scored at once (default: the CPU count, at most 8)."""
    if challenge.method == "brats2023":  # a missing package is found before any file is read
        from seg_edge.evaluation.brats2023 import surfel_areas

        surfel_areas((1.0, 1.0, 1.0))
    pairs, missing, unmatched = pair_files(pred, truth)
    cases: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    # cases in threads: inflating the files, the look-ups, labelling and the k-d trees release the GIL
    with ThreadPoolExecutor(max_workers=max(1, min(workers or (os.cpu_count() or 1), 8))) as pool:
        scored = list(pool.map(lambda pair: score_case(pair[1], pair[2], challenge), pairs))
    for (cid, p, t), scores in zip(pairs, scored):
        cases.append({"case_id": cid, "subject_id": t.name, "prediction": p, "truth": t, "regions": scores})
        if challenge.method == "panoptica":
            rows.append(case_row(t.name, scores, challenge))
    if challenge.method != "panoptica":
        from seg_edge.evaluation.brats2023 import case_rows

        rows = [row for case in cases for row in case_rows(case["subject_id"], case["regions"])]
    elif keep_missing:
        rows += [missing_row(t.name, list(rows[0])) for _, t in missing]
    # the 2023 code writes per-case rows only (one per region): it has no summary rows to reproduce
    summary = summary_rows(rows) if challenge.method == "panoptica" else []
    return {"challenge": challenge, "cases": cases, "rows": rows, "summary": summary,
            "missing": [tid for tid, _ in missing], "unmatched": unmatched}


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.array(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        return float(np.mean(v)), float(np.std(v))


def region_summary(result: dict) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The terminal table: (metric, one "mean ± std over cases" per region) rows, and the regions' keys.

    Per-case std columns are left to the CSV and JSON; infinite values (no match) count as the penalty."""
    challenge = result["challenge"]
    keys = list(challenge.region_keys)
    per_region: dict[str, dict[str, list[float]]] = {k: {} for k in keys}
    if challenge.method == "panoptica":
        for row in result["rows"][:len(result["cases"])]:
            for column, value in row.items():
                for k in keys:
                    if column.endswith(f"_{k}") and "_std_" not in column:
                        per_region[k].setdefault(column[: -len(k) - 1], []).append(_finite(value))
    else:
        for row in result["rows"]:
            for column, value in row.items():
                if column not in ("Case_Name", "Labels"):
                    per_region[row["Labels"]].setdefault(column, []).append(_finite(value))
    stems = list(per_region[keys[0]])
    lines = []
    for stem in stems:
        digits = 2 if "hd95" in stem.lower() or "volume" in stem.lower() else 4
        cells = []
        for k in keys:
            mean, std = _mean_std(per_region[k].get(stem, []))
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append((stem, cells))
    return lines, keys


def _finite(value: object) -> float:
    v = float(value)  # type: ignore[arg-type]
    return PANOPTICA_HD95_PENALTY if np.isinf(v) else v


def _plain(value: object) -> object:
    """JSON-safe: NaN → None, ±inf → "inf"/"-inf", numpy scalars → Python numbers."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if np.isnan(v):
            return None
        return ("inf" if v > 0 else "-inf") if np.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value


def _lesion(lesion) -> dict:
    return {"component": lesion.index, "voxels": lesion.voxels, "volume_mm3": lesion.volume_mm3}


def region_detail(score) -> dict:
    """One region's figures and per-lesion detail (matched pairs, false positives, missed lesions)."""
    if hasattr(score, "detail"):
        return {k: _plain(v) if not isinstance(v, (list, dict)) else v for k, v in score.detail().items()}
    figures = {"tp": score.tp, "fp": score.fp, "fn": score.fn, "precision": score.precision,
               "recall": score.recall, "f1": score.f1, "global_dice": score.global_dice,
               "global_nsd": score.global_nsd, "global_hd95": score.global_hd95}
    for metric in ("dice", "nsd", "hd95"):
        figures[f"lesionwise_{metric}_mean"] = score.lesion_mean(metric)
        figures[f"lesionwise_{metric}_std"] = score.lesion_std(metric)
    out: dict = {k: _plain(v) for k, v in figures.items()}
    out["pairs"] = [{"reference": _lesion(p.reference), "prediction": _lesion(p.prediction),
                     "dice": _plain(p.dice), "nsd": _plain(p.nsd), "hd95": _plain(p.hd95)} for p in score.pairs]
    out["false_positives"] = [_lesion(x) for x in score.false_positives]
    out["missed"] = [_lesion(x) for x in score.missed]
    return out


def to_json(result: dict) -> dict:
    """The ``--json`` document: per case every region's figures and lesions, the CSV rows, the summary."""
    challenge = result["challenge"]
    return {
        "challenge": challenge.name, "method": challenge.method, "source": challenge.source,
        "labels": {str(v): n for v, n in sorted(challenge.labels.items())},
        "regions": {r.key: list(r.labels) for r in challenge.regions},
        "cases": [{"case_id": c["case_id"], "subject_id": c["subject_id"], "prediction": str(c["prediction"]),
                   "truth": str(c["truth"]), "regions": {k: region_detail(s) for k, s in c["regions"].items()}}
                  for c in result["cases"]],
        "rows": [{k: _plain(v) for k, v in row.items()} for row in result["rows"]],
        "summary": [{k: _plain(v) for k, v in row.items()} for row in result["summary"]],
        "missing": result["missing"], "unmatched": result["unmatched"],
    }
