"""Evaluate predicted label maps against ground truth, matched by case id."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from seg_edge.errors import InputError
from seg_edge.runtime.atomic import atomic_write
from seg_edge.evaluation.metrics import METRICS, region_metrics, summarize
from seg_edge.runtime.io import is_case_folder, is_nifti, read_labels, strip_nifti
from seg_edge.runtime.regions import LABEL_HINT, LABEL_TAGS, REGIONS, find_label_file, labels_to_regions

_ID_SUFFIXES = LABEL_TAGS + ("_pred", "_label", "_labels")


def _case_id(path: Path) -> str:
    stem = strip_nifti(path.name)
    for suffix in _ID_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def label_files(path: Path) -> dict[str, Path]:
    """case id → label file, from one file, a flat folder, or a folder of BraTS case folders."""
    if path.is_file():
        return {_case_id(path): path}
    if not path.is_dir():
        raise InputError(f"{path}: not found (expected a label NIfTI or a folder of them)")
    own = find_label_file(path) if is_case_folder(path) else None
    if own is not None:  # a single BraTS case folder (images + label)
        return {path.name: own}
    found: dict[str, Path] = {}
    for item in sorted(path.iterdir()):
        if item.is_file() and is_nifti(item) and not item.name.startswith("."):
            if "_probabilities" in item.name:
                continue
            found[_case_id(item)] = item
        elif item.is_dir() and (label := find_label_file(item)) is not None:
            found[item.name] = label
    if not found:
        raise InputError(f"{path}: no label maps found (expected *.nii.gz, or case folders <id>/ "
                         f"holding {LABEL_HINT})")
    return found


def evaluate_case(pred: Path, truth: Path, et: int) -> dict:
    """Metrics per region for one prediction against its ground truth."""
    p_labels, p_img = read_labels(pred, et)
    t_labels, t_img = read_labels(truth, et)
    if p_labels.shape != t_labels.shape:
        raise InputError(f"{pred}: shape {p_labels.shape} differs from ground truth {truth} {t_labels.shape}")
    if not np.allclose(p_img.affine, t_img.affine, atol=1e-3):
        raise InputError(f"{pred}: affine differs from ground truth {truth} (expected the same grid)")
    spacing = tuple(float(z) for z in t_img.header.get_zooms()[:3])
    # every figure depends on the voxels around the labels only (the true negatives are counted from the whole
    # image): the regions are made on the box around both maps' labels
    box = label_box(p_labels, t_labels)
    p_regions, t_regions = labels_to_regions(p_labels[box], et), labels_to_regions(t_labels[box], et)
    result: dict = {"case_id": _case_id(truth)}
    for name, pr, tr in zip(REGIONS, p_regions, t_regions):
        result[name] = region_metrics(pr, tr, spacing, total=p_labels.size)
    return result


def label_box(a: np.ndarray, b: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """The box around the non-zero voxels of either label map, grown by ``margin`` within the array (all of it
    when both are empty). From two projections of ``a | b`` rather than a scan per label."""
    either = a | b
    plane = either.any(axis=2)
    ranges = [np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0)),
              np.flatnonzero(either.any(axis=(0, 1)))]
    if ranges[0].size == 0:
        return tuple(slice(0, n) for n in a.shape)
    return tuple(slice(max(int(r[0]) - margin, 0), min(int(r[-1]) + 1 + margin, n)) for r, n in zip(ranges, a.shape))


def evaluate(pred: Path, truth: Path, et: int) -> dict:
    """``{"cases": [...], "summary": {region: {metric: {mean, std}}}, "unmatched": [...],
    "files": {case_id: (prediction, ground truth)}}`` over cases found in both."""
    preds, truths = label_files(pred), label_files(truth)
    if pred.is_file() and truth.is_file():
        preds, truths = {"case": pred}, {"case": truth}
    common = sorted(set(preds) & set(truths))
    if not common:
        raise InputError(f"{pred}: no case ids in common with {truth} "
                         f"(found e.g. {sorted(preds)[:2]} vs {sorted(truths)[:2]})")
    cases, files = [], {}
    for cid in common:
        row = evaluate_case(preds[cid], truths[cid], et)
        row["case_id"] = cid if cid != "case" else _case_id(truth)
        cases.append(row)
        files[row["case_id"]] = (preds[cid], truths[cid])
    unmatched = sorted(set(preds) ^ set(truths))
    return {"cases": cases, "summary": summarize(cases, REGIONS), "unmatched": unmatched, "files": files}


def write_csv(result: dict, path: Path) -> None:
    """One row per case and region with every metric (written atomically)."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "region", *METRICS])
        for case in result["cases"]:
            for region in REGIONS:
                writer.writerow([case["case_id"], region, *(f"{case[region][m]:.6g}" for m in METRICS)])
