"""The server's queue: worker threads, each holding one loaded Segmenter, taking one job at a time.

A worker runs a job's case through the same pieces as ``seg-edge predict`` (``load_case``,
``Segmenter.predict``, ``write_volume``, ``report_dict``) and stages the results in the job's
folder, the label map last. One session per worker and one job per worker at a time: never two
cases on a network at once. Stopping the server interrupts a running job between windows; it
stays queued on disk and runs again after a restart.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_edge.runtime.io import load_case, write_volume
from seg_edge.runtime.jobs import Job, failure_reason, preview_png, report_dict
from seg_edge.runtime.outputs import StagedOutputs
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.serve.store import JobStore, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """How ``seg-edge serve`` runs: the model and backend, the workers, the data folder, the upload limit."""

    model: Path
    data: Path
    backend: str = "onnxruntime"
    threads: int | None = None
    workers: int = 1
    max_upload_mb: float = 200.0


class Interrupted(Exception):
    """A running job stopped between windows: the server is stopping, or the job was deleted."""


def job_options(record: dict) -> SegmenterOptions:
    opts = record["options"]
    return SegmenterOptions(overlap=opts.get("overlap"), label_scheme=opts.get("label_scheme"),
                            probabilities=bool(opts.get("probabilities")))


def job_source(record: dict, folder: Path) -> tuple[dict[str, Path] | Path, tuple[str, ...] | None]:
    """Where a job's stored inputs are (paths are kept relative to its folder in the record)."""
    inputs = record["inputs"]
    if "stack" in inputs:
        return folder / inputs["stack"], tuple(record["options"]["modalities"])
    return {m: folder / rel for m, rel in inputs.items()}, None


def public_report(report: dict, record: dict, model_name: str) -> dict:
    """The predict report with server paths replaced by the clients' file names."""
    report["inputs"] = dict(record["names"])
    report["output"] = "labels.nii.gz"
    report["model"]["path"] = model_name
    report["job_id"] = record["id"]
    return report


def run_case(segmenter: Segmenter, record: dict, folder: Path, on_window) -> dict:
    """Segment a job's case and stage its results in ``folder``; the record's new fields."""
    t0 = time.perf_counter()
    source, file_order = job_source(record, folder)
    case = load_case(source, segmenter.card.modalities, file_order)
    case.case_id = record["case_id"]
    t1 = time.perf_counter()
    seg = segmenter.predict(case, on_window)
    seg.timings = {"load": t1 - t0, **seg.timings}
    t2 = time.perf_counter()
    job = Job(record["case_id"], source, folder / "labels.nii.gz")
    names = ["probabilities.nii.gz"] if seg.probabilities is not None else []
    targets = [folder / n for n in (*names, "preview.png", "report.json", "labels.nii.gz")]
    with StagedOutputs(targets, overwrite=True) as staged:
        if seg.probabilities is not None:
            write_volume(np.moveaxis(seg.probabilities, 0, -1).astype(np.float32), case,
                         staged.temp(folder / "probabilities.nii.gz"))
        staged.temp(folder / "preview.png").write_bytes(preview_png(seg, case, segmenter))
        seg.timings["write"] = time.perf_counter() - t2
        seg.timings["total"] = time.perf_counter() - t0
        report = public_report(report_dict(seg, job, segmenter), record, segmenter.artifact.path.name)
        staged.temp(folder / "report.json").write_text(json.dumps(report, indent=2))
        write_volume(seg.labels.astype(np.uint8), case, staged.temp(folder / "labels.nii.gz"))
        staged.commit()
    return {"volumes_ml": seg.volumes_ml, "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
            "warnings": [_public(w, record, folder) for w in seg.warnings], "label_scheme": seg.label_scheme,
            "labels": report["labels"], "et_relabelled_voxels": seg.et_relabelled_voxels,
            "files": ["labels.nii.gz", "report.json", "preview.png", *names]}


def _public(text: str, record: dict, folder: Path) -> str:
    for field, rel in record["inputs"].items():
        text = text.replace(str(folder / rel), record["names"][field])
    return text.replace(str(folder), "upload")


class WorkerPool:
    """``config.workers`` threads, each with its own Segmenter (one session), fed from one queue."""

    def __init__(self, store: JobStore, config: ServeConfig):
        self.store, self.config = store, config
        self.segmenters: list[Segmenter] = []
        try:
            for _ in range(config.workers):
                self.segmenters.append(Segmenter.open(config.model, config.backend, config.threads))
        except BaseException:
            self.close()
            raise
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.stopping = threading.Event()
        self.cancelled: set[str] = set()
        self.threads: list[threading.Thread] = []

    @property
    def card(self):
        return self.segmenters[0].card

    def start(self, pending: list[str]) -> None:
        for job_id in pending:
            self.queue.put(job_id)
        for index in range(len(self.segmenters)):
            thread = threading.Thread(target=self._loop, args=(index,), name=f"seg-edge-worker-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next window; its folder is removed by the worker."""
        self.cancelled.add(job_id)

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt running jobs between windows (they stay queued on disk) and end the threads."""
        self.stopping.set()
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout)
        self.close()

    def close(self) -> None:
        for segmenter in self.segmenters:
            segmenter.close()

    def _loop(self, index: int) -> None:
        while not self.stopping.is_set():
            job_id = self.queue.get()
            if job_id is None:
                return
            record = self.store.get(job_id)
            if record is None or record["status"] != "queued":
                continue  # deleted while it waited
            self._run(index, record)

    def _run(self, index: int, record: dict) -> None:
        job_id, folder = record["id"], self.store.folder(record["id"])
        self.store.update(job_id, status="running", stage="segmenting", worker=index, started=now(), progress=0.0)

        def on_window(done: int, total: int) -> None:
            if self.stopping.is_set() or job_id in self.cancelled:
                raise Interrupted
            self.store.update(job_id, persist=False, progress=round(done / max(total, 1), 4))

        base = self.segmenters[index]
        try:
            result = run_case(Segmenter(base.artifact, base.session, job_options(record)), record, folder, on_window)
        except Interrupted:
            if job_id in self.cancelled:
                self.store.remove(job_id)
                self.cancelled.discard(job_id)
            else:
                self.store.update(job_id, status="queued", stage="queued", progress=0.0)
            return
        except Exception as exc:  # a job's failure is recorded; the worker goes on with the next
            log.warning("job %s failed", job_id, exc_info=True)
            self.store.update(job_id, status="failed", stage="failed", finished=now(),
                              error=_public(failure_reason(exc), record, folder))
        else:
            self.store.update(job_id, status="done", stage="done", progress=1.0, finished=now(), **result)
        shutil.rmtree(folder / "inputs", ignore_errors=True)
        if job_id in self.cancelled:  # deleted while its results were being written
            self.store.remove(job_id)
            self.cancelled.discard(job_id)
