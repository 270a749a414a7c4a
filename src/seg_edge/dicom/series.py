"""A DICOM study's series, found in a folder (nested, any file names) or a ``.zip``, from their headers only.

``scan`` reads every file's header with ``pydicom.dcmread(..., stop_before_pixels=True)``, skips files that
are not DICOM (counted, never named in an error), groups the instances by StudyInstanceUID then
SeriesInstanceUID and describes each series by the tags the selection rules look at (``SeriesInfo``).
A folder holding two patients or two studies is refused in one line: PatientIDs are compared, never printed.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

from seg_edge.errors import InputError

log = logging.getLogger(__name__)
# An MR examination holds tens of series, a few hundred with every reformat; many more is an export of many
# examinations, and the selection's one-line refusal lists every series it considered.
MAX_SERIES = 1000


@dataclass(frozen=True)
class SourceFile:
    """One instance's file: a path, or a member of a ``.zip`` at ``path`` (``member`` its name inside)."""

    path: Path
    member: str | None = None

    def open(self) -> BinaryIO:
        """The file's bytes as a binary stream (a zip member is read into memory)."""
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as archive:
            return io.BytesIO(archive.read(self.member))

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"


@dataclass(frozen=True)
class SeriesInfo:
    """One series as its headers describe it (the first instance's tags; counts over all instances).

    Times are in ms (None when absent); ``image_type`` is upper case; ``images`` counts frames (an enhanced
    multi-frame instance holds many); ``orientation`` is the plane its slices are closest to.
    """

    study_uid: str
    series_uid: str
    number: int | None
    description: str
    protocol: str
    modality: str
    image_type: tuple[str, ...]
    te_ms: float | None
    tr_ms: float | None
    ti_ms: float | None
    contrast_agent: str
    acquisition: str
    instances: int
    images: int
    orientation: str
    slice_thickness_mm: float | None
    files: tuple[SourceFile, ...]

    @property
    def label(self) -> str:
        """How errors and the printed choice name a series: its number and description."""
        number = "?" if self.number is None else str(self.number)
        return f"#{number} '{self.description or self.protocol or '(no description)'}'"


@dataclass(frozen=True)
class ScanResult:
    """What ``scan_study`` found: the series (ordered by series number), the files skipped, the source."""

    series: tuple[SeriesInfo, ...]
    skipped: int
    source: Path


def scan(folder: Path) -> list[SeriesInfo]:
    """The series of the one study in ``folder`` (a folder, nested, or a ``.zip``), by series number."""
    return list(scan_study(folder).series)


def scan_study(folder: Path) -> ScanResult:
    """``scan`` with the count of files skipped as not DICOM (or DICOM without a series, e.g. a DICOMDIR)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder or .zip (expected a DICOM study)")
    if folder.is_file() and not zipfile.is_zipfile(folder):
        raise InputError(f"{folder}: a file that is not a zip archive; expected a DICOM study's folder or .zip")
    groups: dict[str, dict[str, list[tuple[Any, SourceFile]]]] = {}
    patient: str | None = None
    skipped = directories = read = 0
    for source, stream in _walk(folder):
        header = _read_header(source, stream)
        read += 1
        if header is None or not header.get("SeriesInstanceUID") or not header.get("StudyInstanceUID"):
            skipped += 1
            directories += header is not None and header.get("DirectoryRecordSequence") is not None
            continue
        this_patient = str(header.get("PatientID", ""))
        if patient is not None and this_patient != patient:
            # stop at the first instance of a second patient: the folder is refused whatever the rest holds, and
            # a PACS export of thousands of unrelated instances is refused at once instead of after reading all
            raise InputError(f"{folder}: holds instances of at least 2 patients (their PatientIDs differ; found "
                             f"after reading {read} files); expected one patient's study")
        patient = this_patient
        study = groups.setdefault(str(header.StudyInstanceUID), {})
        study.setdefault(str(header.SeriesInstanceUID), []).append((header, source))
    if skipped:
        # the count only: a folder's name may be a patient's (PACS exports name them so)
        log.info("%d files skipped (not DICOM, or DICOM without a series)", skipped)
    if len(groups) > 1:
        counts = ", ".join(f"{len(s)} series" for s in list(groups.values())[:10])
        more = ", ..." if len(groups) > 10 else ""
        raise InputError(f"{folder}: holds {len(groups)} studies ({counts}{more}); expected one study "
                         "(one StudyInstanceUID)")
    if not groups and directories:
        raise InputError(f"{folder}: a DICOMDIR without the images it indexes ({skipped} files skipped, "
                         f"{directories} of them DICOMDIR); expected the study's DICOM files (copy the whole "
                         "folder or disc, not only its DICOMDIR)")
    if not groups:
        raise InputError(f"{folder}: no DICOM series found ({skipped} files skipped); expected a DICOM study")
    found = next(iter(groups.values()))
    if len(found) > MAX_SERIES:
        raise InputError(f"{folder}: one study of {len(found)} series ({read} files read); expected one MR "
                         f"examination of at most {MAX_SERIES} series (an export of many examinations?)")
    series = [_describe(instances) for instances in found.values()]
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.series_uid))
    return ScanResult(tuple(series), skipped, folder)


def _walk(folder: Path) -> Iterator[tuple[SourceFile, BinaryIO]]:
    """Every regular file under ``folder`` (or in it, when it is a .zip), zip members included, sorted."""
    if folder.is_file():
        paths = [folder]
    else:
        paths = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)
    for path in paths:
        if not path.is_file():
            continue
        if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
            yield from _zip_members(path)
        else:
            with open(path, "rb") as stream:
                yield SourceFile(path), stream


def _zip_members(path: Path) -> Iterator[tuple[SourceFile, BinaryIO]]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    with archive.open(info) as member:
                        yield SourceFile(path, info.filename), io.BytesIO(member.read())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: unreadable .zip ({exc}); expected a zip archive of DICOM files") from None


def _read_header(source: SourceFile, stream: BinaryIO) -> Any | None:
    """The header, or None for a file that is not DICOM (no 'DICM' prefix, or not parseable as a dataset)."""
    try:
        header = pydicom.dcmread(stream, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except (EOFError, ValueError, TypeError, KeyError, OSError, zlib.error) as exc:
        # it said it was DICOM ('DICM' prefix) and then broke: a damaged file, not one to skip quietly
        raise InputError(f"{source}: unreadable DICOM header ({_why(exc)}); expected a complete "
                         "DICOM file") from None
    if _cut_short(header):
        raise InputError(f"{source}: unreadable DICOM header (the file ends inside its last element); "
                         "expected a complete DICOM file")
    return header


def _cut_short(header: Any) -> bool:
    """Whether the file ended inside its last element's value. pydicom keeps what it could read without a
    word, so a cut file would pass as a shorter one; the raw element still carries the length it declared.
    (A cut on an element's boundary, or inside the pixel data a header read never reaches, is not seen here.)"""
    if not len(header):
        return False
    raw = header.get_item(max(header.keys()))
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    return isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length


def _describe(instances: list[tuple[Any, SourceFile]]) -> SeriesInfo:
    instances.sort(key=lambda pair: (_int(pair[0].get("InstanceNumber")) or 0, str(pair[1])))
    first = instances[0][0]
    te, tr, ti = _timing(first)
    return SeriesInfo(
        study_uid=str(first.StudyInstanceUID), series_uid=str(first.SeriesInstanceUID),
        number=_int(first.get("SeriesNumber")),
        description=str(first.get("SeriesDescription", "") or "").strip(),
        protocol=str(first.get("ProtocolName", "") or "").strip(),
        modality=str(first.get("Modality", "") or "").strip().upper(),
        image_type=tuple(str(v).strip().upper() for v in _values(first.get("ImageType"))),
        te_ms=te, tr_ms=tr, ti_ms=ti,
        contrast_agent=_contrast_agent(first),
        acquisition=str(first.get("MRAcquisitionType", "") or "").strip().upper(),
        instances=len(instances),
        images=sum(max(1, _int(h.get("NumberOfFrames")) or 1) for h, _ in instances),
        orientation=_plane(_orientation(first)),
        slice_thickness_mm=_float(first.get("SliceThickness")),
        files=tuple(source for _, source in instances),
    )


def _timing(ds: Any) -> tuple[float | None, float | None, float | None]:
    """TE, TR, TI in ms: the classic tags, or an enhanced MR's shared functional groups."""
    te, tr, ti = (_float(ds.get(k)) for k in ("EchoTime", "RepetitionTime", "InversionTime"))
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        te = te if te is not None else _float(_item_value(shared, "MREchoSequence", "EffectiveEchoTime"))
        tr = tr if tr is not None else _float(
            _item_value(shared, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
        if ti is None:
            times = _values(_item_value(shared, "MRModifierSequence", "InversionTimes"))
            ti = _float(times[0]) if times else None
    return te, tr, ti


def _contrast_agent(ds: Any) -> str:
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if agent:
        return agent
    # enhanced MR records the agent as a coded sequence; a classic instance may carry it too
    item = _first(ds, "ContrastBolusAgentSequence")
    return str(item.get("CodeMeaning", "contrast agent")) if item is not None else ""


def _orientation(ds: Any) -> list[float]:
    values = _values(ds.get("ImageOrientationPatient"))
    if not values:
        for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            group = _first(ds, name)
            values = _values(_item_value(group, "PlaneOrientationSequence", "ImageOrientationPatient")) \
                if group is not None else []
            if values:
                break
    return [float(v) for v in values]


def _plane(cosines: list[float]) -> str:
    """The plane the slices are closest to: their normal's largest LPS component (x sagittal, z axial)."""
    if len(cosines) != 6:
        return "unknown"
    r, c = cosines[:3], cosines[3:]
    normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("sagittal", "coronal", "axial")[axis]


def _first(ds: Any, keyword: str) -> Any | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _item_value(group: Any, sequence: str, keyword: str) -> Any:
    item = _first(group, sequence)
    return item.get(keyword) if item is not None else None


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and \
        not isinstance(value, str) else [value]


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _why(exc: BaseException) -> str:
    """An exception's class as a reader understands it (zlib names its own just 'error')."""
    return "deflated data cut short or damaged" if isinstance(exc, zlib.error) else type(exc).__name__
