"""One way to run cases: ``run_cases(jobs, segmenter, policy)`` reads, segments and writes each case and
reports it (done, skipped, or failed with a one-line reason). ``seg-edge predict`` (one case or a folder),
``seg-edge serve``'s workers and the Ray actors all call it and only render what it reports.

A case's outputs are written in one place (``outputs.write_case``): checked before any work, staged, renamed
into place as a set with the label map last, so a label map's presence marks a finished case and a finished
case is skipped unless ``overwrite`` (``jobs.finished``, the one rule for it).

One case runs load → network → write in the calling thread. Several run as a pipeline, so that the network
never waits for files: while case n runs on the network (the calling thread), a loader thread reads and
preprocesses case n+1 and a writer thread postprocesses and writes case n-1. At most ``IN_FLIGHT`` cases hold
their input arrays at once (the loader waits for a permit before reading), so memory stays bounded whatever
the batch size. Results come in job order; any failure of one case (ours or not) is recorded and the others
run. KeyboardInterrupt, SystemExit and ``Stop`` end the run (staged files removed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg_edge.runtime.io import Case
from seg_edge.runtime.jobs import Job, failure_reason, finished, read_case
from seg_edge.runtime.outputs import check_targets, report_dict, write_case
from seg_edge.runtime.segmenter import Prepared, Segmentation, Segmenter

IN_FLIGHT = 2  # cases whose inputs (images, network tensor) may be in memory together
SKIPPED = "output exists (use --overwrite)"
log = logging.getLogger(__name__)
OnWindow = Callable[[int, int], None]


class Stop(Exception):
    """Raise it from an ``on_window`` callback to stop the run between windows (a server stopping, a job
    deleted): it leaves ``run_cases`` as it is, never recorded as the case's failure."""


@dataclass(frozen=True)
class OutputPolicy:
    """How outputs are written: ``overwrite`` existing ones (else a finished case is skipped), also a
    ``preview`` picture; ``public`` rewrites the report before it is written (the server puts its clients'
    file names in place of its own paths). Probabilities follow the segmenter's options."""

    overwrite: bool = False
    preview: bool = False
    public: Callable[[dict[str, Any], Job], dict[str, Any]] | None = None


@dataclass
class CaseResult:
    """What became of one job: ``status`` done, skipped or failed; ``reason`` why it was skipped or failed
    (one line; ``error`` the exception, in this process only); when done, ``report`` the case's report (timings
    with write and total), ``volumes_ml`` unrounded and ``files`` the files written, label map last. No arrays:
    it is small enough to travel (Ray)."""

    job: Job
    status: str
    reason: str | None = None
    report: dict[str, Any] | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.report["timings_s"]) if self.report else {}


def run_cases(jobs: Iterable[Job], segmenter: Segmenter, policy: OutputPolicy | None = None, *,
              on_window: OnWindow | None = None, first: Future[Case] | None = None) -> Iterator[CaseResult]:
    """Run every job with ``segmenter``, writing by ``policy``; one result per job, in job order.

    ``first``: the case of the first job to run, already being read (``jobs.start_loading``, e.g. while the
    model loaded); ``on_window(done, total)``: the network's progress through a case's windows."""
    policy = policy or OutputPolicy()
    jobs = list(jobs)
    skip = [finished(job, policy.overwrite) for job in jobs]  # decided once, before any case runs
    todo = [job for job, skipped in zip(jobs, skip) if not skipped]
    run = _pipelined if len(todo) > 1 else _one_by_one
    results = run(segmenter, todo, policy, on_window, first)
    for job, skipped in zip(jobs, skip):
        yield CaseResult(job, "skipped", SKIPPED) if skipped else next(results)


def _failed(job: Job, exc: BaseException) -> CaseResult:
    log.debug("case %s failed", job.case_id, exc_info=exc)
    return CaseResult(job, "failed", failure_reason(exc), error=exc)


def _one_by_one(segmenter: Segmenter, todo: list[Job], policy: OutputPolicy, on_window: OnWindow | None,
                first: Future[Case] | None) -> Iterator[CaseResult]:
    for i, job in enumerate(todo):
        try:
            result = _run_one(segmenter, job, policy, on_window, first if i == 0 else None)
        except Stop:
            raise
        except Exception as exc:  # isolation: one case's defect or crash never ends the run
            result = _failed(job, exc)
        yield result


def _run_one(segmenter: Segmenter, job: Job, policy: OutputPolicy, on_window: OnWindow | None,
             loading: Future[Case] | None) -> CaseResult:
    """Load, segment and write one case; ``load`` is the wait for ``loading`` where the case was read ahead."""
    check_targets(job.targets(segmenter.options.probabilities, policy.preview), policy.overwrite)
    t0 = time.perf_counter()
    if loading is not None:
        segmenter.warm_up()
    case = loading.result() if loading is not None else read_case(job, segmenter.card.modalities)
    load_s = time.perf_counter() - t0
    seg = segmenter.predict(case, on_window)
    seg.timings = {"load": load_s, **seg.timings}
    return _write(segmenter, job, case, seg, policy, t0)


def _write(segmenter: Segmenter, job: Job, case: Case, seg: Segmentation, policy: OutputPolicy,
           started: float | None) -> CaseResult:
    """Write the case's outputs as a set; ``total``: since ``started``, or (pipelined, where stages overlap
    other cases') the sum of its stages."""
    t0 = time.perf_counter()
    report = report_dict(seg, job, segmenter, policy.preview)
    if policy.public is not None:
        report = policy.public(report, job)
    files = write_case(seg, case, job, segmenter, report, overwrite=policy.overwrite, preview=policy.preview)
    seg.timings["write"] = time.perf_counter() - t0
    seg.timings["total"] = time.perf_counter() - started if started is not None else sum(seg.timings.values())
    report = {**report, "timings_s": {k: round(v, 4) for k, v in seg.timings.items()}}
    return CaseResult(job, "done", report=report, volumes_ml=dict(seg.volumes_ml), files=files)


Ready = tuple[Job, "Case | None", "Prepared | None", "Exception | None"]


def _loader(segmenter: Segmenter, jobs: list[Job], policy: OutputPolicy, permits: threading.Semaphore,
            ready: queue.Queue[Ready], stop: threading.Event, first: Future[Case] | None) -> None:
    """Load and preprocess each job in turn into ``ready``: (job, case, prepared, error)."""
    for i, job in enumerate(jobs):
        permits.acquire()
        if stop.is_set():
            return
        try:
            check_targets(job.targets(segmenter.options.probabilities, policy.preview), policy.overwrite)
            t0 = time.perf_counter()
            case = first.result() if i == 0 and first is not None else read_case(job, segmenter.card.modalities)
            load_s = time.perf_counter() - t0
            prepared = segmenter.prepare(case)
            prepared.timings = {"load": load_s, **prepared.timings}
            if not policy.preview:  # the writer needs the case's geometry, not its images: released
                case.images = np.empty((0,), np.float32)
            ready.put((job, case, prepared, None))
        except Exception as exc:  # the run goes on; the main thread records the failure
            permits.release()
            ready.put((job, None, None, exc))


def _finish_and_write(segmenter: Segmenter, job: Job, case: Case, prepared: Prepared, logits: np.ndarray,
                      policy: OutputPolicy) -> CaseResult:
    seg = segmenter.finish(case, logits, prepared.inverse, prepared.timings)
    return _write(segmenter, job, case, seg, policy, None)


def _pipelined(segmenter: Segmenter, todo: list[Job], policy: OutputPolicy, on_window: OnWindow | None,
               first: Future[Case] | None) -> Iterator[CaseResult]:
    """Every job through load → network → write with the three stages overlapped."""
    permits, stop = threading.Semaphore(IN_FLIGHT), threading.Event()
    ready: queue.Queue[Ready] = queue.Queue()
    loader = threading.Thread(target=_loader, args=(segmenter, todo, policy, permits, ready, stop, first),
                              daemon=True, name="seg-edge-loader")
    loader.start()
    pending: tuple[Job, Future[CaseResult]] | None = None
    segmenter.warm_up()  # while the loader reads the first case
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="seg-edge-writer") as writer:
            for _ in todo:
                job, case, prepared, error = ready.get()
                future: Future[CaseResult] | None = None
                if error is None and case is not None and prepared is not None:
                    try:
                        logits = segmenter.network(prepared, on_window)
                        future = writer.submit(_finish_and_write, segmenter, job, case, prepared, logits, policy)
                    except Stop:
                        raise
                    except Exception as exc:
                        error = exc
                    if not policy.preview or future is None:  # the inputs are no longer needed
                        permits.release()
                if pending is not None:
                    yield _collect(pending, permits, policy.preview)
                pending = (job, future) if future is not None else None
                if error is not None:
                    yield _failed(job, error)
            if pending is not None:
                yield _collect(pending, permits, policy.preview)
    finally:
        stop.set()
        permits.release()  # a loader waiting for a permit sees ``stop`` and ends


def _collect(pending: tuple[Job, Future[CaseResult]], permits: threading.Semaphore, preview: bool) -> CaseResult:
    job, future = pending
    try:
        return future.result()
    except Exception as exc:  # isolation: a failed write ends this case only
        return _failed(job, exc)
    finally:
        if preview:
            permits.release()
