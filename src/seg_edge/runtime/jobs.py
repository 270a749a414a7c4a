"""Turn a predict request into jobs (one per case), run them, and write their outputs."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg_edge.errors import InputError, SegEdgeError
from seg_edge.runtime.io import NIFTI_SUFFIXES, Case, has_modality_files, load_case, strip_nifti, write_volume
from seg_edge.runtime.outputs import StagedOutputs, check_name_length, check_targets

if TYPE_CHECKING:  # the segmenter's imports (scipy.ndimage, backends) are not needed to plan or read cases
    from seg_edge.runtime.segmenter import Segmentation, Segmenter

DEFAULT_OUT = Path("predictions")
log = logging.getLogger(__name__)


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

    @property
    def preview(self) -> Path:
        return self.out.with_name(strip_nifti(self.out.name) + "_preview.png")

    def targets(self, probabilities: bool, preview: bool = False) -> list[Path]:
        """Every file this job writes, the label map last (its presence marks a finished case)."""
        return [*([self.probabilities] if probabilities else []), *([self.preview] if preview else []),
                self.report, self.out]


@dataclass
class JobResult:
    job: Job
    status: str  # done | skipped | failed
    segmentation: Segmentation | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report: dict | None = None  # the case's report, where it ran elsewhere (engines/ray.py: no arrays travel)


# Suffixes of files that are not label maps: such an --out is a mistake, not a folder name.
FILE_SUFFIXES = frozenset(
    "png jpg jpeg gif bmp tif tiff svg pdf json txt csv tsv npy npz nrrd nhdr mha mhd mgz mgh dcm img hdr "
    "h5 hdf5 gz zip tar onnx plan engine pt pth".split())


def output_kind(out: Path | None) -> str:
    """'file' for a NIfTI file name, 'folder' for a folder; InputError for another kind of file."""
    if out is None:
        return "folder"
    check_name_length(out)
    if out.name.lower().endswith(NIFTI_SUFFIXES):
        if out.is_dir():
            raise InputError(f"{out}: is a folder (expected a .nii.gz or .nii file name to write)")
        return "file"
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder (expected a .nii.gz or .nii file name, or a folder)")
    if not out.is_dir() and out.suffix.lower().lstrip(".") in FILE_SUFFIXES:
        raise InputError(f"{out}: output name must end in .nii.gz or .nii (or name a folder)")
    return "folder"


def _case_id(source: Path) -> str:
    if source.is_dir():
        return source.name
    return source.name[:-4] if source.name.lower().endswith(".npy") else strip_nifti(source.name)


def plan_jobs(source: Path | None, files: dict[str, Path] | None, out: Path | None) -> tuple[list[Job], bool]:
    """Jobs for the request and whether it is a batch (a folder of case folders).

    A folder holding modality files is one case (its defects are reported, even if it also has
    subfolders such as ``derivatives/``); a folder without them but with subfolders is a batch.
    """
    kind = output_kind(out)
    if files:
        if source is not None:
            raise InputError(f"{source}: give either INPUT or --flair/--t1/--t1ce/--t2, not both")
        cid = strip_nifti(files.get("flair", next(iter(files.values()))).name)  # the model says which it needs
        for tag in ("_flair", "-t2f"):
            cid = cid.removesuffix(tag)
        return [Job(cid, files, _single_out(out, kind, cid))], False
    if source is None:
        raise InputError("no input: give a case folder, a 4D NIfTI, a .npy stack or --flair/--t1/--t1ce/--t2")
    if not source.exists():
        raise InputError(f"{source}: not found (expected a case folder, a folder of cases, a 4D NIfTI or .npy)")
    if source.is_dir() and not has_modality_files(source):
        subs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subs:
            if kind == "file":
                raise InputError(f"{out}: a batch needs an output folder, not a file name")
            folder = out or DEFAULT_OUT
            return [Job(p.name, p, folder / f"{p.name}.nii.gz") for p in subs], True
    return [Job(_case_id(source), source, _single_out(out, kind, _case_id(source)))], False


def _single_out(out: Path | None, kind: str, case_id: str) -> Path:
    if kind == "file":
        return out  # type: ignore[return-value]
    return (out or DEFAULT_OUT) / f"{case_id}.nii.gz"


def report_dict(seg: Segmentation, job: Job, segmenter: Segmenter) -> dict:
    card = segmenter.card
    return {
        "case_id": seg.case_id,
        "output": str(job.out),
        "inputs": {m: str(p) for m, p in (job.source.items() if isinstance(job.source, dict)
                                          else [("input", job.source)])},
        "model": {"name": card.name, "path": str(segmenter.artifact.path), "precision": card.precision,
                  "source_sha256": card.provenance.get("source_sha256") or card.provenance.get("checkpoint_sha256"),
                  "backend": segmenter.session.name},
        "label_scheme": seg.label_scheme,
        "labels": {"NCR": 1, "ED": 2, "ET": segmenter.et},
        "volumes_ml": {k: round(v, 3) for k, v in seg.volumes_ml.items()},
        "et_relabelled_voxels": seg.et_relabelled_voxels,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "warnings": seg.warnings,
    }


def preview_png(seg: Segmentation, case: Case, segmenter: Segmenter) -> bytes:
    """The case's preview picture (FLAIR and T1ce with the labels; needs Pillow) as PNG bytes."""
    from seg_edge.runtime.pictures import encode_png, preview_image

    images = dict(zip(segmenter.card.modalities, case.images))
    title = f"{seg.case_id}: {segmenter.card.name}, {segmenter.session.name}"
    return encode_png(preview_image(images, seg.labels, case.affine, case.spacing, seg.volumes_ml,
                                    segmenter.et, title))


def write_outputs(seg: Segmentation, case: Case, job: Job, segmenter: Segmenter, overwrite: bool,
                  preview: bool = False) -> None:
    """Stage probabilities, preview, report and label map, then rename them into place, the label map last."""
    with StagedOutputs(job.targets(seg.probabilities is not None, preview), overwrite) as staged:
        if seg.probabilities is not None:
            write_volume(np.moveaxis(seg.probabilities, 0, -1).astype(np.float32), case,
                         staged.temp(job.probabilities))
        if preview:
            staged.temp(job.preview).write_bytes(preview_png(seg, case, segmenter))
        staged.temp(job.report).write_text(json.dumps(report_dict(seg, job, segmenter), indent=2))
        write_volume(seg.labels.astype(np.uint8), case, staged.temp(job.out))
        staged.commit()


def to_run(jobs: list[Job], overwrite: bool) -> list[Job]:
    """The jobs a batch runs: all with ``overwrite``, else those whose label map does not exist yet."""
    return [j for j in jobs if overwrite or not j.out.exists()]


def start_loading(job: Job, modalities: tuple[str, ...], file_order: tuple[str, ...] | None = None) -> Future:
    """Read ``job``'s case in a background thread, e.g. while the model loads; hand the future to
    ``run_job(..., loading=...)``, which waits for it (its errors are raised there)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="seg-edge-prefetch")
    future = pool.submit(load_case, job.source, modalities, file_order)
    pool.shutdown(wait=False)
    return future


def run_job(segmenter: Segmenter, job: Job, file_order: tuple[str, ...] | None = None,
            overwrite: bool = False, on_window=None, preview: bool = False, loading: Future | None = None) -> JobResult:
    """Load, segment and write one case (``preview``: also ``<case>_preview.png``); SegEdgeError propagates.

    ``loading``: the case already being read (``start_loading``); the ``load`` timing is then the wait for it.
    """
    check_targets(job.targets(segmenter.options.probabilities, preview), overwrite)
    t0 = time.perf_counter()
    if loading is not None:
        segmenter.warm_up()
    case = loading.result() if loading is not None else load_case(job.source, segmenter.card.modalities, file_order)
    case.case_id = job.case_id
    t1 = time.perf_counter()
    seg = segmenter.predict(case, on_window)
    seg.timings = {"load": t1 - t0, **seg.timings}
    t2 = time.perf_counter()
    write_outputs(seg, case, job, segmenter, overwrite, preview)
    seg.timings["write"] = time.perf_counter() - t2
    seg.timings["total"] = time.perf_counter() - t0
    return JobResult(job, "done", seg, timings=seg.timings)


def failure_reason(exc: BaseException) -> str:
    """One line for a case that failed: our message, or the exception's type and text."""
    text = str(exc) if isinstance(exc, SegEdgeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def run_batch(segmenter: Segmenter, jobs: list[Job], file_order=None, overwrite: bool = False,
              on_case=None, preview: bool = False) -> list[JobResult]:
    """Run every job; any failure of one case (ours or not) is recorded and the batch goes on."""
    results = []
    for job in jobs:
        if job.out.exists() and not overwrite:
            result = JobResult(job, "skipped")
        else:
            try:
                result = run_job(segmenter, job, file_order, overwrite, preview=preview)
            except Exception as exc:  # isolation: one case's defect or crash never ends the batch
                log.debug("case %s failed", job.case_id, exc_info=True)
                result = JobResult(job, "failed", error=failure_reason(exc))
        results.append(result)
        if on_case:
            on_case(result)
    return results
