"""The DICOM node's received instances on disk, one folder per study, and when a study is complete.

``<root>/<study key>/`` holds a study's instances as received (``<SOPInstanceUID>.dcm``, the bytes the sender
sent, with DICOM file meta) and ``sender.json`` (the calling AE title and address of the association that sent
the last instance). The study key is the first 16 hex digits of the StudyInstanceUID's sha256: folders and logs
name a study by it, never by anything about the patient.

Every instance is written to a temporary file, flushed to the disk (fsync), renamed, and the folder's entry
flushed too, before ``write`` returns: the node acknowledges a C-STORE only after that. A study is complete
once no instance of it has arrived for the quiet period and no association that sent it is still open; the
caller then ``take``s the folder (one rename). A late instance of a study already taken starts a new folder.
After a restart the quiet period counts from the newest file's modification time, so a study whose quiet period
elapsed while the node was down is complete at once.

Standard library only: no pydicom here (the node decodes; this module files bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from seg_edge.runtime.atomic import TEMP_PREFIX

SENDER_FILE = "sender.json"
INSTANCE_SUFFIX = ".dcm"
# An association that stays open without sending (a peer that hangs) holds its studies back at most this long
# past the quiet period; pynetdicom's own network timeout (60 s) normally closes it well before.
OPEN_GRACE_S = 300.0
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def study_key(study_uid: str) -> str:
    """How folders, job records and logs name a study: its UID's sha256, 16 hex digits."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:16]


def instance_name(instance_uid: str) -> str:
    """The file name of an instance: its SOPInstanceUID when it is a valid UID, else a hash of it (a name
    that cannot escape the folder)."""
    if len(instance_uid) <= 64 and _UID.fullmatch(instance_uid):
        return instance_uid + INSTANCE_SUFFIX
    return "sha256-" + hashlib.sha256(instance_uid.encode()).hexdigest()[:32] + INSTANCE_SUFFIX


@dataclass(frozen=True)
class Sender:
    """Where a study came from: the association's calling AE title and the peer's IP address."""

    aet: str
    address: str


class Inbox:
    """The studies being received under ``root``; every method is safe to call from any thread."""

    def __init__(self, root: Path, *, quiet_seconds: float) -> None:
        self.root = Path(root)
        self.quiet_seconds = quiet_seconds
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # study key → wall-clock time of its newest instance
        self._open: dict[str, int] = {}  # study key → associations that sent it and are still open
        self._recover()

    def _recover(self) -> None:
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for stray in folder.glob(TEMP_PREFIX + "*"):  # an instance cut off by a crash: never acknowledged
                stray.unlink(missing_ok=True)
            times = [p.stat().st_mtime for p in folder.glob("*" + INSTANCE_SUFFIX)]
            if times:
                self._last[folder.name] = max(times)
            else:
                shutil.rmtree(folder, ignore_errors=True)

    def write(self, study_uid: str, instance_uid: str, payload: bytes, sender: Sender) -> Path:
        """File one instance (``payload``: the DICOM file's bytes) durably; OSError when it cannot be."""
        key = study_key(study_uid)
        with self._lock:
            folder = self.root / key
            if not folder.is_dir():
                folder.mkdir(mode=0o700)
                _fsync_dir(self.root)
            target = folder / instance_name(instance_uid)
            _write_durably(target, payload)
            if self._sender_file(folder) != sender:
                _write_durably(folder / SENDER_FILE, json.dumps({"aet": sender.aet, "address": sender.address})
                               .encode())
            _fsync_dir(folder)
            self._last[key] = time.time()
        return target

    def opened(self, key: str) -> None:
        """An association has begun sending study ``key``: it is not complete before that association closes."""
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1

    def closed(self, key: str) -> None:
        """An association that sent study ``key`` has closed (released, aborted or dropped)."""
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def due(self, now: float | None = None) -> list[str]:
        """The studies now complete (oldest first): quiet for the quiet period, no open association sending."""
        now = time.time() if now is None else now
        with self._lock:
            ready = [(last, key) for key, last in self._last.items()
                     if now - last >= self.quiet_seconds
                     and (key not in self._open or now - last >= self.quiet_seconds + OPEN_GRACE_S)]
        return [key for _, key in sorted(ready)]

    def pending(self) -> list[str]:
        """Every study with instances waiting here."""
        with self._lock:
            return sorted(self._last)

    def sender(self, key: str) -> Sender | None:
        """Who sent study ``key`` (the last association's calling AE and address), None if not recorded."""
        return self._sender_file(self.root / key)

    def take(self, key: str, dest: Path) -> int:
        """Move study ``key``'s folder to ``dest`` (same file system: one rename) and forget it; the number of
        instances moved. An instance arriving afterwards starts the study's folder anew."""
        with self._lock:
            source = self.root / key
            count = sum(1 for _ in source.glob("*" + INSTANCE_SUFFIX))
            os.replace(source, dest)
            _fsync_dir(self.root)
            _fsync_dir(dest.parent)
            self._last.pop(key, None)
        return count

    @staticmethod
    def _sender_file(folder: Path) -> Sender | None:
        try:
            data = json.loads((folder / SENDER_FILE).read_text())
            return Sender(str(data["aet"]), str(data["address"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _write_durably(target: Path, payload: bytes) -> None:
    tmp = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}{INSTANCE_SUFFIX}.part")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
