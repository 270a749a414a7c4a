"""``seg-edge listen``: the DICOM node's studies as jobs on the server's job store, segmented by its worker, the
SEG and SR sent back.

``<data>/incoming/<study key>/`` holds what the node receives (``seg_edge.dicom.inbox``); ``<data>/jobs/<id>/``
is ``serve``'s job store (``serve.store.JobStore``; one process per data folder, its lock). When a study is
complete (the quiet period), its record is written (``kind: dicom-study``, status ``queued``) and *then* its
folder is renamed into the job's ``inputs/study``: a crash between the two leaves a queued record without a
study, which the next start removes (the study is still in the inbox and completes again). A worker of
``serve.jobs.WorkerPool`` runs the job: ``segment_study`` (``seg_edge.dicom.study``) into the job's folder,
``segmented: true`` recorded, then the SEG and SR sent with one C-STORE association, and the record says
``done`` (``stage: sent``, ``sent_to``) or ``failed`` with the stage and a one-line ``error``.

After a restart (``kill -9`` included): instances on disk stay; a study whose quiet period elapsed while down
completes at once; a job interrupted while segmenting is segmented again (its first run wrote nothing: outputs
are staged and renamed as a set), a job already segmented is only sent. Inputs are deleted once the results
are sent; a failed job keeps them (and its results, if any) for a look or a resend by hand.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg_edge.dicom.inbox import Inbox
from seg_edge.dicom.node import Node, NodeConfig, SendError, send_files
from seg_edge.errors import SegEdgeError, error_label
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.serve.jobs import ServeConfig, WorkerPool
from seg_edge.serve.store import JobStore, now

log = logging.getLogger(__name__)

KIND = "dicom-study"
STUDY_FOLDER = "study"  # the study's instances inside the job's inputs/

# segment_study(folder, segmenter, *, out, options) -> a result with .seg and .sr (paths), .files, .volumes_ml
SegmentStudy = Callable[..., Any]
SendFiles = Callable[..., None]


@dataclass(frozen=True, kw_only=True)
class ListenConfig:
    """The node (``NodeConfig``), the data folder, the quiet period, and the model as ``serve`` opens it."""

    node: NodeConfig
    data: Path
    model: Path
    quiet_seconds: float = 5.0
    backend: str | None = None
    threads: int | None = None
    use_profile: bool = True


def default_segment() -> SegmentStudy:
    """``seg_edge.dicom.study.segment_study`` (imported when the node starts: it needs SimpleITK and pydicom)."""
    from seg_edge.dicom.study import segment_study

    return segment_study


class Listener:
    """The node, its inbox, the job store and one worker. ``options``: what ``segment`` takes as options (a
    ``StudyOptions``); ``segment`` and ``send`` are replaceable (tests give their own)."""

    def __init__(self, config: ListenConfig, *, options: Any, segment: SegmentStudy | None = None,
                 send: SendFiles = send_files) -> None:
        if config.quiet_seconds <= 0:
            raise ValueError("quiet_seconds must be positive")  # the CLI checks its option; a caller's bug
        self.config, self.options, self.send = config, options, send
        self.segment = segment
        self.store: JobStore | None = None
        self.pool: WorkerPool | None = None
        self.node: Node | None = None
        self.inbox: Inbox | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The DICOM port bound."""
        return self.node.port if self.node is not None else self.config.node.port

    def start(self) -> None:
        """Recover the data folder, start the worker, bind the port, start watching for complete studies."""
        segment = self.segment or default_segment()
        self.segment = segment
        self.store = JobStore(self.config.data)
        try:
            pending = self._recover(self.store)
            self.inbox = Inbox(self.config.data / "incoming", quiet_seconds=self.config.quiet_seconds)
            serve_config = ServeConfig(model=self.config.model, data=self.config.data, backend=self.config.backend,
                                       threads=self.config.threads, workers=1, use_profile=self.config.use_profile)
            self.pool = WorkerPool(self.store, serve_config, handlers={KIND: self._run})
            self.pool.start(pending)
            self.node = Node(self.config.node, self.inbox)
            self.node.start()
            self._watcher = threading.Thread(target=self._watch, name="seg-edge-listen-watch", daemon=True)
            self._watcher.start()
        except BaseException:
            self.stop()
            raise
        if pending:
            log.info("%d unfinished job(s) queued again", len(pending))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop receiving and watching; a running job is left unfinished on disk (it resumes at the next start)."""
        self._stopping.set()
        if self.node is not None:
            self.node.stop()
        if self._watcher is not None:
            self._watcher.join(timeout)
        if self.pool is not None:
            self.pool.stop(timeout)
        if self.store is not None:
            self.store.close()

    def jobs(self) -> list[dict]:
        """The job records, oldest first."""
        return self.store.listing() if self.store is not None else []

    def _recover(self, store: JobStore) -> list[str]:
        pending = store.recover()
        for record in store.listing():  # sent, then stopped before its received study was deleted
            if record.get("kind") == KIND and record["status"] == "done":
                shutil.rmtree(store.folder(record["id"]) / "inputs", ignore_errors=True)
        for job_id in list(pending):
            record = store.get(job_id) or {}
            if record.get("kind") == KIND and not (store.folder(job_id) / "inputs" / STUDY_FOLDER).is_dir():
                # stopped between writing the record and moving the study in: the study is still in the inbox
                store.remove(job_id)
                pending.remove(job_id)
        return pending

    def _watch(self) -> None:
        inbox, tick = self.inbox, min(0.2, self.config.quiet_seconds / 4)
        while inbox is not None and not self._stopping.wait(tick):
            for key in inbox.due():
                try:
                    self._complete(key)
                except OSError as exc:  # left in the inbox on disk; the next start tries again
                    log.error("study %s: could not be made a job (%s)", key, exc.strerror or exc)

    def _complete(self, key: str) -> None:
        store, inbox, pool = self.store, self.inbox, self.pool
        if store is None or inbox is None or pool is None:
            return
        sender = inbox.sender(key)
        job_id, folder = store.create()
        store.add({"id": job_id, "kind": KIND, "status": "queued", "stage": "queued", "progress": 0.0,
                   "created": now(), "study": key, "attempts": 0, "segmented": False, "sent": False,
                   "sender": None if sender is None else {"aet": sender.aet, "address": sender.address}})
        count = inbox.take(key, folder / "inputs" / STUDY_FOLDER)
        store.update(job_id, instances=count)
        log.info("study %s: complete (%d instance(s), %.1f s quiet) → job %s", key, count,
                 self.config.quiet_seconds, job_id[:8])
        pool.submit(job_id)

    def _run(self, index: int, record: dict) -> None:
        """The worker's handler for a dicom-study job: segment once, send, record."""
        store, pool = self.store, self.pool
        if store is None or pool is None:
            return
        job_id, key = record["id"], record["study"]
        folder = store.folder(job_id)
        try:
            if not (record.get("segmented") and _results_present(record, folder)):
                self._segment(index, record, folder)
            else:
                log.info("job %s (study %s): segmented before the restart; sending only", job_id[:8], key)
            dest = self._send(job_id, folder)
        except Exception as exc:  # recorded in one line; the worker goes on with the next job
            if pool.stopping.is_set():
                return  # interrupted by a stop: left unfinished on disk, resumed at the next start
            stage = (store.get(job_id) or {}).get("stage", "running")
            line = _one_line(exc, folder, key)
            store.update(job_id, status="failed", failed_stage=stage, error=line, finished=now())
            log.warning("job %s (study %s): failed while %s: %s", job_id[:8], key, stage, line)
            if error_label(exc)[0] == "internal error":
                log.debug("job %s: traceback", job_id[:8], exc_info=exc)
            return
        store.update(job_id, status="done", stage="sent", sent=True, sent_to=str(dest), finished=now())
        log.info("job %s (study %s): SEG and SR sent to %s", job_id[:8], key, dest)
        shutil.rmtree(folder / "inputs", ignore_errors=True)

    def _segment(self, index: int, record: dict, folder: Path) -> None:
        store, pool = self.store, self.pool
        if store is None or pool is None or self.segment is None:
            return
        job_id, key = record["id"], record["study"]
        store.update(job_id, status="running", stage="segmenting", attempts=int(record.get("attempts", 0)) + 1,
                     started=now())
        log.info("job %s (study %s): segmenting", job_id[:8], key)
        start = time.perf_counter()
        result = self.segment(folder / "inputs" / STUDY_FOLDER, study_segmenter(pool.segmenters[index]),
                              out=folder / f"{key}.nii.gz", options=self.options)
        seconds = round(time.perf_counter() - start, 3)
        store.update(job_id, segmented=True, stage="segmented", segment_s=seconds,
                     results={"seg": Path(result.seg).name, "sr": Path(result.sr).name},
                     files=[Path(p).name for p in result.files],
                     volumes_ml={k: float(v) for k, v in dict(result.volumes_ml).items()})
        log.info("job %s (study %s): segmented in %.1f s", job_id[:8], key, seconds)

    def _send(self, job_id: str, folder: Path) -> Any:
        store = self.store
        if store is None:
            raise SendError("the node is stopping")
        record = store.get(job_id) or {}
        sender = record.get("sender") or {}
        aet = str(sender.get("aet", ""))
        dest = self.config.node.reply_address(aet)
        if dest is None:
            raise SendError(f"no address to send study {record['study']}'s results to: the calling AE {aet!r} has "
                            f"no --peer {aet or 'AET'}@HOST:PORT and no --send-to was given")
        store.update(job_id, status="running", stage="sending")
        results = record["results"]
        self.send([folder / results["seg"], folder / results["sr"]], dest, calling_aet=self.config.node.aet)
        return dest


def study_segmenter(base: Segmenter) -> Segmenter:
    """The worker's model and session with the options a study needs, as ``predict STUDY_DIR`` opens it: the
    probabilities (the labels go back to the reference series' grid through them), the tuned profile's settings
    where one is in force."""
    options = SegmenterOptions(probabilities=True)
    segmenter = Segmenter(base.artifact, base.session,
                          options.with_profile(base.profile) if base.profile is not None else options)
    segmenter.profile_note, segmenter.profile = base.profile_note, base.profile
    return segmenter


def _results_present(record: dict, folder: Path) -> bool:
    results = record.get("results") or {}
    return bool(results) and all((folder / name).is_file() for name in results.values())


def _one_line(exc: BaseException, folder: Path, key: str) -> str:
    """The error in one line, the job's folder named by the study's key (no server paths in the record)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.replace(str(folder / "inputs" / STUDY_FOLDER), f"study {key}").replace(str(folder), f"job of {key}")
    return text if isinstance(exc, SegEdgeError) else f"{error_label(exc)[0]}: {type(exc).__name__}: {text}"
