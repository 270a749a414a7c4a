"""The server's queue: worker threads, each holding one loaded Segmenter, taking one job at a time.

A worker runs a job's case with ``runner.run_cases``, the function ``seg-edge predict`` and the Ray actors
run cases with, on a Segmenter opened as ``predict`` opens it (the card's tuned profile in force where it
applies, said in the job's report), and its outputs go to the job's folder, staged and renamed as a set,
the label map last. One session per worker and one job per worker at a time: never two cases on a network
at once. Stopping the server interrupts a running job between windows; it stays queued on disk and runs
again after a restart.
"""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seg_edge.runtime.jobs import Job
from seg_edge.runtime import runner
from seg_edge.runtime.runner import CaseResult, OutputPolicy, Stop
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.serve.store import JobStore, now

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How ``seg-edge serve`` runs: the model and backend (None: as ``predict`` chooses, the tuned profile's
    where it applies, else onnxruntime), the workers, the data folder, the upload limit."""

    model: Path
    data: Path
    backend: str | None = None
    threads: int | None = None
    workers: int = 1
    max_upload_mb: float = 200.0
    use_profile: bool = True


class Interrupted(Stop):
    """A running job stopped between windows: the server is stopping, or the job was deleted."""


def job_options(record: dict, base: Segmenter) -> SegmenterOptions:
    """The job's options over the worker's configuration (the tuned profile's, where one is in force)."""
    opts = record["options"]
    options = SegmenterOptions(overlap=opts.get("overlap"), label_scheme=opts.get("label_scheme"),
                               probabilities=bool(opts.get("probabilities")))
    return options.with_profile(base.profile) if base.profile is not None else options


def job_of(record: dict, folder: Path) -> Job:
    """The job's case (its stored inputs; paths are kept relative to its folder in the record) and outputs."""
    inputs = record["inputs"]
    if "stack" in inputs:
        source: Path | dict[str, Path] = folder / inputs["stack"]
        order: tuple[str, ...] | None = tuple(record["options"]["modalities"])
    else:
        source, order = {m: folder / rel for m, rel in inputs.items()}, None
    return Job(record["case_id"], source, folder / "labels.nii.gz", order, plain_names=True)


def public_report(report: dict, job: Job, record: dict, model_name: str) -> dict:
    """The report with server paths replaced by the clients' file names."""
    folder = job.out.parent
    report = {**report, "inputs": dict(record["names"]), "output": job.out.name, "job_id": record["id"],
              "model": {**report["model"], "path": model_name},
              "warnings": [_public(w, record, folder) for w in report["warnings"]]}
    for key in ("probabilities", "preview"):
        if key in report:
            report[key] = ({**report[key], "file": Path(report[key]["file"]).name} if isinstance(report[key], dict)
                           else Path(report[key]).name)
    return report


def record_fields(result: CaseResult) -> dict:
    """A done job's new record fields, from the runner's result."""
    report = result.report or {}
    fields = {k: report[k] for k in ("timings_s", "warnings", "label_scheme", "labels", "et_relabelled_voxels",
                                     "configuration")}
    return {**fields, "volumes_ml": result.volumes_ml, "files": [p.name for p in result.files]}


def _public(text: str, record: dict, folder: Path) -> str:
    for field, rel in record["inputs"].items():
        text = text.replace(str(folder / rel), record["names"][field])
    return text.replace(str(folder), "upload")


# A job of another kind than an upload (its record's ``kind``; seg-edge listen's "dicom-study"): called with the
# worker's index (its Segmenter is ``pool.segmenters[index]``) and the record, it runs the job and records it.
JobHandler = Callable[[int, dict], None]


class WorkerPool:
    """``config.workers`` threads, each with its own Segmenter (one session), fed from one queue. ``handlers``:
    the runners of other kinds of job, by the record's ``kind`` (a record without one is an upload)."""

    def __init__(self, store: JobStore, config: ServeConfig, handlers: dict[str, JobHandler] | None = None):
        self.store, self.config = store, config
        self.handlers = dict(handlers or {})
        self.segmenters: list[Segmenter] = []
        try:
            for _ in range(config.workers):  # opened as predict opens it: the same configuration
                self.segmenters.append(Segmenter.open_profiled(config.model, config.backend, config.threads,
                                                               use_profile=config.use_profile))
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
            kind = record.get("kind")
            if kind is None:
                self._run(index, record)
            elif kind in self.handlers:
                self.handlers[kind](index, record)
            else:  # left as it is on disk for the program that runs such jobs
                log.warning("job %s: a %r job, not run by this server", job_id, kind)

    def _run(self, index: int, record: dict) -> None:
        job_id, folder = record["id"], self.store.folder(record["id"])
        self.store.update(job_id, status="running", stage="segmenting", worker=index, started=now(), progress=0.0)

        def on_window(done: int, total: int) -> None:
            if self.stopping.is_set() or job_id in self.cancelled:
                raise Interrupted
            self.store.update(job_id, persist=False, progress=round(done / max(total, 1), 4))

        base = self.segmenters[index]
        segmenter = Segmenter(base.artifact, base.session, job_options(record, base))
        segmenter.profile_note, segmenter.profile = base.profile_note, base.profile
        job = job_of(record, folder)
        policy = OutputPolicy(overwrite=True, preview=True, public=functools.partial(
            public_report, record=record, model_name=base.artifact.path.name))
        try:
            [result] = runner.run_cases([job], segmenter, policy, on_window=on_window)
        except Interrupted:
            if job_id in self.cancelled:
                self.store.remove(job_id)
                self.cancelled.discard(job_id)
            else:
                self.store.update(job_id, status="queued", stage="queued", progress=0.0)
            return
        if result.status == "failed":  # recorded; the worker goes on with the next
            log.warning("job %s failed", job_id, exc_info=result.error)
            self.store.update(job_id, status="failed", stage="failed", finished=now(),
                              error=_public(result.reason or "", record, folder))
        else:
            self.store.update(job_id, status="done", stage="done", progress=1.0, finished=now(),
                              **record_fields(result))
        shutil.rmtree(folder / "inputs", ignore_errors=True)
        if job_id in self.cancelled:  # deleted while its results were being written
            self.store.remove(job_id)
            self.cancelled.discard(job_id)
