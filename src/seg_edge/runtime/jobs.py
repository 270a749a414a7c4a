"""Turn a predict request into jobs (one per case), run them, and write their outputs."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.errors import InputError, SegEdgeError
from seg_edge.runtime.io import Case, check_writable, default_file_mode, is_case_folder, load_case, strip_nifti, write_volume
from seg_edge.runtime.segmenter import Segmentation, Segmenter

DEFAULT_OUT = Path("predictions")


@dataclass(frozen=True)
class Job:
    case_id: str
    source: Path | dict[str, Path]
    out: Path

    @property
    def report(self) -> Path:
        return self.out.with_name(strip_nifti(self.out.name) + ".json")

    @property
    def probabilities(self) -> Path:
        return self.out.with_name(strip_nifti(self.out.name) + "_probabilities.nii.gz")


@dataclass
class JobResult:
    job: Job
    status: str  # done | skipped | failed
    segmentation: Segmentation | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _is_file_target(out: Path | None) -> bool:
    return out is not None and out.name.lower().endswith((".nii", ".nii.gz"))


def _case_id(source: Path) -> str:
    return source.name if source.is_dir() else strip_nifti(source.name).removesuffix(".npy")


def plan_jobs(source: Path | None, files: dict[str, Path] | None, out: Path | None) -> tuple[list[Job], bool]:
    """Jobs for the request and whether it is a batch (a folder of case folders)."""
    if files:
        if source is not None:
            raise InputError(f"{source}: give either INPUT or --flair/--t1/--t1ce/--t2, not both")
        missing = [m for m in ("flair", "t1", "t1ce", "t2") if m not in files]
        if missing:
            raise InputError(f"--{missing[0]} missing (all four of --flair --t1 --t1ce --t2 are needed)")
        cid = strip_nifti(files["flair"].name)
        for tag in ("_flair", "-t2f"):
            cid = cid.removesuffix(tag)
        return [Job(cid, files, _single_out(out, cid))], False
    if source is None:
        raise InputError("no input: give a case folder, a 4D NIfTI, a .npy stack or --flair/--t1/--t1ce/--t2")
    if not source.exists():
        raise InputError(f"{source}: not found (expected a case folder, a folder of cases, a 4D NIfTI or .npy)")
    if source.is_dir() and not is_case_folder(source):
        subs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subs:
            if _is_file_target(out):
                raise InputError(f"{out}: a batch needs an output folder, not a file name")
            folder = out or DEFAULT_OUT
            return [Job(p.name, p, folder / f"{p.name}.nii.gz") for p in subs], True
    return [Job(_case_id(source), source, _single_out(out, _case_id(source)))], False


def _single_out(out: Path | None, case_id: str) -> Path:
    if _is_file_target(out):
        return out  # type: ignore[return-value]
    return (out or DEFAULT_OUT) / f"{case_id}.nii.gz"


def _write_json(data: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)


def report_dict(seg: Segmentation, job: Job, segmenter: Segmenter) -> dict:
    card = segmenter.card
    return {
        "case_id": seg.case_id,
        "output": str(job.out),
        "inputs": {m: str(p) for m, p in (job.source.items() if isinstance(job.source, dict)
                                          else [("input", job.source)])},
        "model": {"name": card.name, "path": str(segmenter.artifact.path), "precision": card.precision,
                  "checkpoint_sha256": card.provenance.get("checkpoint_sha256"),
                  "backend": segmenter.session.name},
        "label_scheme": seg.label_scheme,
        "labels": {"NCR": 1, "ED": 2, "ET": segmenter.et},
        "volumes_ml": {k: round(v, 3) for k, v in seg.volumes_ml.items()},
        "et_relabelled_voxels": seg.et_relabelled_voxels,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "warnings": seg.warnings,
    }


def write_outputs(seg: Segmentation, case: Case, job: Job, segmenter: Segmenter) -> None:
    """Probabilities and report first, the label map last: its presence marks a finished case."""
    if seg.probabilities is not None:
        write_volume(np.moveaxis(seg.probabilities, 0, -1).astype(np.float32), case, job.probabilities)
    _write_json(report_dict(seg, job, segmenter), job.report)
    write_volume(seg.labels.astype(np.uint8), case, job.out)


def run_job(segmenter: Segmenter, job: Job, file_order: tuple[str, ...] | None = None,
            overwrite: bool = False, on_window=None) -> JobResult:
    """Load, segment and write one case; SegEdgeError propagates to the caller."""
    check_writable(job.out, overwrite)
    t0 = time.perf_counter()
    case = load_case(job.source, segmenter.card.modalities, file_order)
    case.case_id = job.case_id
    t1 = time.perf_counter()
    seg = segmenter.predict(case, on_window)
    seg.timings = {"load": t1 - t0, **seg.timings}
    t2 = time.perf_counter()
    write_outputs(seg, case, job, segmenter)
    seg.timings["write"] = time.perf_counter() - t2
    seg.timings["total"] = time.perf_counter() - t0
    return JobResult(job, "done", seg, timings=seg.timings)


def run_batch(segmenter: Segmenter, jobs: list[Job], file_order=None, overwrite: bool = False,
              on_case=None) -> list[JobResult]:
    """Run every job; a bad case is recorded as failed and the batch goes on."""
    results = []
    for job in jobs:
        if job.out.exists() and not overwrite:
            result = JobResult(job, "skipped")
        else:
            try:
                result = run_job(segmenter, job, file_order, overwrite)
            except SegEdgeError as exc:
                result = JobResult(job, "failed", error=str(exc))
        results.append(result)
        if on_case:
            on_case(result)
    return results
