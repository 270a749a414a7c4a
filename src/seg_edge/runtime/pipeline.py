"""A batch of cases as a pipeline: the network never waits for files.

While case n runs on the network (the calling thread), a loader thread reads and preprocesses case
n+1 and a writer thread postprocesses and writes case n-1. At most ``IN_FLIGHT`` cases hold their
input arrays at once (the loader waits for a permit before reading), so memory stays bounded
whatever the batch size. Results come back in job order, each case isolated as in ``run_batch``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from seg_edge.runtime import jobs as single
from seg_edge.runtime.io import Case
from seg_edge.runtime.jobs import Job, JobResult, failure_reason, to_run, write_outputs
from seg_edge.runtime.outputs import check_targets
from seg_edge.runtime.segmenter import Prepared, Segmenter

IN_FLIGHT = 2  # cases whose inputs (images, network tensor) may be in memory together
log = logging.getLogger(__name__)


def _loader(segmenter: Segmenter, jobs: list[Job], file_order, overwrite: bool, preview: bool,
            permits: threading.Semaphore, ready: queue.Queue, stop: threading.Event,
            first: Future | None = None) -> None:
    """Load and preprocess each job in turn into ``ready``: (job, case, prepared, error).
    ``first``: the first job's case, already being read (``jobs.start_loading``)."""
    for i, job in enumerate(jobs):
        permits.acquire()
        if stop.is_set():
            return
        try:
            check_targets(job.targets(segmenter.options.probabilities, preview), overwrite)
            t0 = time.perf_counter()
            case = (first.result() if i == 0 and first is not None  # as run_job loads
                    else single.load_case(job.source, segmenter.card.modalities, file_order))
            case.case_id = job.case_id
            load_s = time.perf_counter() - t0
            prepared = segmenter.prepare(case)
            prepared.timings = {"load": load_s, **prepared.timings}
            if not preview:  # the writer needs the case's geometry, not its images
                case.images = None
            ready.put((job, case, prepared, None))
        except Exception as exc:  # the batch goes on; the main thread records the failure
            permits.release()
            ready.put((job, None, None, exc))


def _finish_and_write(segmenter: Segmenter, job: Job, case: Case, prepared: Prepared, logits, overwrite: bool,
                      preview: bool) -> JobResult:
    """Postprocess and write one case; ``total`` is the sum of its stages (they overlap other cases')."""
    seg = segmenter.finish(case, logits, prepared.inverse, prepared.timings)
    t0 = time.perf_counter()
    write_outputs(seg, case, job, segmenter, overwrite, preview)
    seg.timings["write"] = time.perf_counter() - t0
    seg.timings["total"] = sum(seg.timings.values())
    return JobResult(job, "done", seg, timings=seg.timings)


def run_pipelined(segmenter: Segmenter, jobs: list[Job], file_order=None, overwrite: bool = False,
                  on_case: Callable[[JobResult], None] | None = None, preview: bool = False,
                  first: Future | None = None) -> list[JobResult]:
    """Every job through load → network → write with the three stages overlapped; failures are recorded.

    ``first``: the case of the first job to run (``to_run(jobs, overwrite)[0]``), already being read
    while the model loaded (``jobs.start_loading``)."""
    todo = to_run(jobs, overwrite)
    results: dict[Job, JobResult] = {j: JobResult(j, "skipped") for j in jobs if j not in todo}
    permits, ready, stop = threading.Semaphore(IN_FLIGHT), queue.Queue(), threading.Event()
    loader = threading.Thread(target=_loader, args=(segmenter, todo, file_order, overwrite, preview, permits,
                                                    ready, stop, first), daemon=True, name="seg-edge-loader")
    loader.start()
    pending: tuple[Job, Future] | None = None
    if todo:
        segmenter.warm_up()  # while the loader reads the first case
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="seg-edge-writer") as writer:
            for _ in todo:
                job, case, prepared, error = ready.get()
                future = None
                if error is None:
                    try:
                        logits = segmenter.network(prepared)
                        future = writer.submit(_finish_and_write, segmenter, job, case, prepared, logits,
                                               overwrite, preview)
                    except Exception as exc:
                        error = exc
                    if not preview or future is None:  # the inputs are no longer needed
                        permits.release()
                if pending is not None:
                    _collect(pending, results, on_case, permits, preview)
                pending = (job, future) if future is not None else None
                if error is not None:
                    log.debug("case %s failed", job.case_id, exc_info=error)
                    results[job] = JobResult(job, "failed", error=failure_reason(error))
                    if on_case:
                        on_case(results[job])
            if pending is not None:
                _collect(pending, results, on_case, permits, preview)
    finally:
        stop.set()
        permits.release()  # a loader waiting for a permit sees ``stop`` and ends
    return [results[j] for j in jobs]


def _collect(pending: tuple[Job, Future], results: dict, on_case, permits: threading.Semaphore,
             preview: bool) -> None:
    job, future = pending
    try:
        results[job] = future.result()
    except Exception as exc:  # isolation: a failed write ends this case only
        log.debug("case %s failed", job.case_id, exc_info=True)
        results[job] = JobResult(job, "failed", error=failure_reason(exc))
    finally:
        if preview:
            permits.release()
    if on_case:
        on_case(results[job])
