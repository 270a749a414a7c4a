"""Is ``predict``'s input a DICOM study? A cheap look at file names and first bytes, without pydicom.

Kept apart from ``seg_edge.dicom.study`` (which imports pydicom and highdicom) so that ``seg-edge predict`` on
NIfTI asks this question without the ``dicom`` extra. A DICOM file is recognised as ``scan`` recognises it:
the 128-byte preamble followed by ``DICM``. NIfTI files are recognised by name (``.nii``, ``.nii.gz``). A
folder or ``.zip`` holding both is refused in one line rather than guessed at.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from seg_edge.errors import InputError

__all__ = ["is_dicom_study"]

_MAGIC_AT, _MAGIC = 128, b"DICM"
_NIFTI = (".nii", ".nii.gz")


def is_dicom_study(path: Path) -> bool:
    """Whether ``path`` is a folder (searched to any depth) or a ``.zip`` holding DICOM files. Reads only
    names and at most 132 bytes of files until the first DICOM file is found. InputError (one line) for a
    folder or archive that holds DICOM and NIfTI files both."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path) and _zip_kinds(path, path)
    if not path.is_dir():
        return False
    dicom: str | None = None
    nifti: str | None = None
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            file = Path(root) / name
            if name.lower().endswith(_NIFTI):
                nifti = nifti or str(file)
            elif dicom is None and _holds_dicom(file, path):
                dicom = str(file)
    if dicom is not None and nifti is not None:
        _refuse_mixed(path, dicom, nifti)
    return dicom is not None


def _refuse_mixed(path: Path, dicom: str, nifti: str) -> None:
    raise InputError(f"{path}: holds DICOM ({dicom}) and NIfTI ({nifti}) files; expected one kind: a DICOM "
                     "study, or NIfTI series named by modality")


def _holds_dicom(file: Path, study: Path) -> bool:
    if file.suffix.lower() == ".zip":
        return zipfile.is_zipfile(file) and _zip_kinds(file, study)
    try:
        with open(file, "rb") as stream:
            head = stream.read(_MAGIC_AT + len(_MAGIC))
    except OSError:
        return False  # unreadable here; scan names it if it matters
    return head[_MAGIC_AT:] == _MAGIC


def _zip_kinds(archive: Path, study: Path) -> bool:
    """Whether the archive holds a DICOM member (refused if it holds NIfTI members too)."""
    dicom: str | None = None
    nifti: str | None = None
    try:
        with zipfile.ZipFile(archive) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                if info.filename.lower().endswith(_NIFTI):
                    nifti = nifti or f"{archive}:{info.filename}"
                elif dicom is None and info.file_size >= _MAGIC_AT + len(_MAGIC):
                    with z.open(info) as member:
                        if member.read(_MAGIC_AT + len(_MAGIC))[_MAGIC_AT:] == _MAGIC:
                            dicom = f"{archive}:{info.filename}"
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive}: unreadable .zip ({exc}); expected a zip archive of DICOM files") from None
    if dicom is not None and nifti is not None:
        _refuse_mixed(study, dicom, nifti)
    return dicom is not None
