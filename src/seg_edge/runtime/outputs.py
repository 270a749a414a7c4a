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
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_edge.errors import InputError
from seg_edge.runtime.atomic import TEMP_PREFIX, default_file_mode, make_temp
from seg_edge.runtime.io import write_volume
from seg_edge.runtime.regions import label_set

if TYPE_CHECKING:  # the segmenter's imports (scipy.ndimage, backends) are not needed to check outputs
    from seg_edge.runtime.io import Case
    from seg_edge.runtime.jobs import Job
    from seg_edge.runtime.segmenter import Segmentation, Segmenter

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

    def __exit__(self, *exc: object) -> None:
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


def probability_channels(segmenter: Segmenter) -> dict[str, Any]:
    """What the probability map's last axis holds, in order: the card's output channels (sigmoid
    regions such as WT, TC, ET, or a softmax card's classes such as background, NCR, ED, ET)."""
    outputs = segmenter.card.outputs
    return {"kind": outputs.kind, "channels": list(outputs.channels)}


def report_dict(seg: Segmentation, job: Job, segmenter: Segmenter, preview: bool = False) -> dict[str, Any]:
    """A case's report: inputs, outputs, model and configuration, volumes, timings, warnings."""
    card = segmenter.card
    report: dict[str, Any] = {
        "case_id": seg.case_id,
        "output": str(job.out),
        "inputs": {m: str(p) for m, p in (job.source.items() if isinstance(job.source, dict)
                                          else [("input", job.source)])},
        "model": {"name": card.name, "path": str(segmenter.artifact.path), "precision": card.precision,
                  "source_sha256": card.provenance.get("source_sha256") or card.provenance.get("checkpoint_sha256"),
                  "backend": segmenter.session.name},
        "configuration": segmenter.profile_note or "the card's configuration",
        "label_scheme": seg.label_scheme,
        "labels": label_set(seg.label_scheme),
        "volumes_ml": {k: round(v, 3) for k, v in seg.volumes_ml.items()},
        "et_relabelled_voxels": seg.et_relabelled_voxels,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "warnings": seg.warnings,
    }
    if seg.probabilities is not None:
        report["probabilities"] = {"file": str(job.probabilities), **probability_channels(segmenter)}
    if preview:
        report["preview"] = str(job.preview)
    return report


def preview_png(seg: Segmentation, case: Case, segmenter: Segmenter) -> bytes:
    """The case's preview picture (FLAIR and T1ce with the labels; needs Pillow) as PNG bytes."""
    from seg_edge.runtime.pictures import encode_png, preview_image

    images = dict(zip(segmenter.card.modalities, case.images))
    title = f"{seg.case_id}: {segmenter.card.name}, {segmenter.session.name}"
    return encode_png(preview_image(images, seg.labels, case.affine, case.spacing, seg.volumes_ml,
                                    segmenter.et, title, label_set=label_set(seg.label_scheme)))


def write_case(seg: Segmentation, case: Case, job: Job, segmenter: Segmenter, report: dict[str, Any], *,
               overwrite: bool, preview: bool) -> list[Path]:
    """The one place a case's outputs are written: probabilities, preview, report and label map staged,
    then renamed into place as a set, the label map last. Returns the files written, in that order."""
    targets = job.targets(seg.probabilities is not None, preview)
    with StagedOutputs(targets, overwrite) as staged:
        if seg.probabilities is not None:
            channels = probability_channels(segmenter)
            write_volume(np.moveaxis(seg.probabilities, 0, -1).astype(np.float32), case,
                         staged.temp(job.probabilities),
                         f"seg-edge {channels['kind']} probabilities: {','.join(channels['channels'])}")
        if preview:
            staged.temp(job.preview).write_bytes(preview_png(seg, case, segmenter))
        staged.temp(job.report).write_text(json.dumps(report, indent=2))
        write_volume(seg.labels.astype(np.uint8), case, staged.temp(job.out))
        staged.commit()
    return targets
