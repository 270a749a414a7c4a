"""A case's outputs written as a set: checked before any work, staged, then renamed into place.

Nothing is created in the output location until the caller stages its files, which happens
after the case has been segmented. Staged files are temporary names in the target folder; on
``commit`` they are renamed into place in order, the label map last, so its presence means the
case is complete. A lock file taken for the commit makes a second process writing the same
label map fail cleanly instead of silently replacing a result. On any error, KeyboardInterrupt
or SystemExit (the CLI turns SIGTERM into one) the temporary files, the lock and any folder the
set created are removed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from seg_edge.errors import InputError
from seg_edge.runtime.atomic import TEMP_PREFIX, default_file_mode, make_temp

NIFTI_NAMES = (".nii.gz", ".nii")


def _name_max(folder: Path) -> int:
    existing = nearest_existing(folder)
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))  # 255 on ext4, xfs, btrfs, tmpfs
    except (OSError, ValueError):
        return 255


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_name_length(path: Path) -> None:
    """InputError if the file system cannot hold ``path``'s name (checked before any stat of it)."""
    limit = _name_max(path.parent)
    if len(path.name.encode()) > limit:
        raise InputError(f"{path}: file name too long for the file system ({len(path.name.encode())} bytes; "
                         f"at most {limit})")


def check_targets(targets: list[Path], overwrite: bool) -> None:
    """InputError before any work if a target exists (without overwrite), is a folder, has a
    name the file system cannot hold, or its folder cannot be created or written."""
    for target in targets:
        check_name_length(target)
        if target.is_dir():
            raise InputError(f"{target}: is a folder (expected a file name to write)")
        if os.path.lexists(target) and not overwrite:
            raise InputError(f"{target}: output exists (use --overwrite to replace it)")
    folder = targets[0].parent
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(f"{folder}: cannot create output folder ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{existing}: output folder is not writable")


class StagedOutputs:
    """Context manager: ``temp(target)`` gives a staging path; ``commit()`` renames all into place.

    ``targets`` are renamed in the order given: put the label map last.
    """

    def __init__(self, targets: list[Path], overwrite: bool):
        self.targets = [Path(t) for t in targets]
        self.overwrite = overwrite
        self.folder = self.targets[0].parent
        self._staged: dict[Path, Path] = {}
        self._created: list[Path] = []
        self._lock: Path | None = None

    def __enter__(self) -> StagedOutputs:
        missing = []
        folder = Path(os.path.abspath(self.folder))
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if path.is_dir():  # another writer made it between our check and mkdir
                    continue
                self._remove_created()
                raise InputError(f"{path}: cannot create output folder (not a folder)") from None
            except OSError as exc:
                self._remove_created()
                raise InputError(f"{path}: cannot create output folder ({exc.strerror})") from None
            self._created.append(path)
        return self

    def temp(self, target: Path) -> Path:
        """A fresh temporary file beside ``target`` (same NIfTI/JSON suffix, lower-cased)."""
        if target not in self.targets:
            raise ValueError(f"{target} is not one of this set's targets")
        self._staged[target] = make_temp(target)
        return self._staged[target]

    def commit(self) -> None:
        """Take the lock, re-check the targets, rename staged files into place (label map last)."""
        self._take_lock()
        if not self.overwrite:
            for target in self.targets:
                if os.path.lexists(target):
                    raise InputError(f"{self.targets[-1]}: {target.name} appeared while this case ran (another "
                                     "process wrote this output; use --overwrite to replace it); nothing written")
        mode = default_file_mode()
        for target in self.targets:
            tmp = self._staged.get(target)
            if tmp is not None:
                os.chmod(tmp, mode)
                os.replace(tmp, target)
                del self._staged[target]
        self._created.clear()  # they now hold results

    def __exit__(self, exc_type, exc, tb) -> None:
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None
        self._remove_created()

    def _remove_created(self) -> None:
        for path in reversed(self._created):
            try:
                path.rmdir()
            except OSError:
                break  # not empty: someone else writes there too
        self._created.clear()

    def _take_lock(self) -> None:
        label = self.targets[-1]
        digest = hashlib.sha1(label.name.encode()).hexdigest()[:16]
        lock = label.with_name(f"{TEMP_PREFIX}{digest}.lock")
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if _stale(lock):
                    lock.unlink(missing_ok=True)
                    continue
                raise InputError(f"{label}: another seg-edge process is writing this output now "
                                 f"(lock {lock.name}); nothing written") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._lock = lock
            return
        raise InputError(f"{label}: cannot take the output lock {lock.name}")


def _stale(lock: Path) -> bool:
    """A lock whose writer process no longer exists."""
    try:
        pid = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, owned by someone else
        return False
    return False
