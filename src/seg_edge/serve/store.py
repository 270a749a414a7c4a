"""The server's job store on disk: one private folder per job, its record in ``job.json``.

``<data>/jobs/<id>/`` holds ``job.json`` (written atomically at every change of status),
``inputs/`` (the uploaded files, mode 0700, removed when the job has run) and, once done,
``labels.nii.gz``, ``report.json``, ``preview.png`` (and ``probabilities.nii.gz`` if asked).
A folder without a readable ``job.json`` is an upload that never finished: removed at start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from seg_edge.errors import InputError
from seg_edge.runtime.atomic import TEMP_PREFIX, write_text_atomic

FINISHED = ("done", "failed")
RESULT_FILES = {"labels.nii.gz": "application/gzip", "report.json": "application/json",
                "preview.png": "image/png", "probabilities.nii.gz": "application/gzip"}
log = logging.getLogger(__name__)


class JobStore:
    """Job records in memory, mirrored to disk; every method is safe to call from any thread."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InputError(f"{self.root}: cannot create the data folder ({exc.strerror})") from None
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._held = open(self.root / "serve.lock", "a+")  # noqa: SIM115 (held while the server runs)
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._held.close()
            raise InputError(f"{self.root}: another seg-edge server uses this data folder "
                             "(expected one server per --data folder)") from None

    def close(self) -> None:
        """Release the data folder for another server."""
        if not self._held.closed:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held.close()

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def create(self) -> tuple[str, Path]:
        """A new job id and its private folder with an empty ``inputs/`` (no record yet)."""
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        folder.mkdir(mode=0o700)
        (folder / "inputs").mkdir(mode=0o700)
        return job_id, folder

    def add(self, record: dict) -> dict:
        with self._lock:
            self._records[record["id"]] = record
            self._persist(record)
        return dict(record)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            record = self._records.get(job_id)
            return None if record is None else dict(record)

    def update(self, job_id: str, persist: bool = True, **changes) -> dict | None:
        """Change a record (``persist``: also on disk; progress ticks stay in memory)."""
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return None
            record.update(changes)
            if persist:
                self._persist(record)
            return dict(record)

    def remove(self, job_id: str) -> None:
        """Forget a job and delete its folder (inputs and results)."""
        with self._lock:
            self._records.pop(job_id, None)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def discard(self, folder: Path) -> None:
        """Delete the folder of an upload that was refused (no record was made)."""
        shutil.rmtree(folder, ignore_errors=True)

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [r["status"] for r in self._records.values()]
        return {s: statuses.count(s) for s in ("queued", "running", "done", "failed")}

    def listing(self) -> list[dict]:
        with self._lock:
            return sorted((dict(r) for r in self._records.values()), key=lambda r: r["created"])

    def _persist(self, record: dict) -> None:
        folder = self.folder(record["id"])
        if folder.is_dir():  # a job deleted while it ran is not brought back
            write_text_atomic(folder / "job.json", json.dumps(record, indent=2))

    def recover(self) -> list[str]:
        """Load the records on disk; unfinished jobs whose inputs remain are queued again (their ids,
        oldest first), the others fail; half-made uploads and stray temporary files are removed."""
        requeue = []
        for folder in sorted(self.jobs_dir.iterdir()):
            record = _read_record(folder)
            if record is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for stray in folder.glob(TEMP_PREFIX + "*"):
                stray.unlink(missing_ok=True)
            if record["status"] not in FINISHED:
                if (folder / "inputs").is_dir():
                    record.update(status="queued", progress=0.0, stage="queued")
                    requeue.append(record)
                else:
                    record.update(status="failed", error="interrupted by a server restart before it finished")
            with self._lock:
                self._records[record["id"]] = record
                self._persist(record)
        return [r["id"] for r in sorted(requeue, key=lambda r: r["created"])]


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("id") != folder.name or "status" not in record:
        return None
    return record


def now() -> float:
    return round(time.time(), 3)
