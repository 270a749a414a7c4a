"""A selected series' voxels with its true geometry: classic MR (one file per slice) or enhanced multi-frame MR.

``read_series(info)`` reads every instance of a series found by ``seg_edge.dicom.series.scan``, places each
slice (frame) by ImagePositionPatient along the normal of ImageOrientationPatient (never by InstanceNumber or
file name), checks that the slices form one regular grid, and returns the voxels as a float32 NIfTI image
(rescale slope and intercept applied) with the RAS affine that grid has:

    x: along a row (IOP's first triplet, PixelSpacing[1] apart)      y: down a column (IOP's second, PixelSpacing[0])
    z: the slice normal (row x column), slices ascending along it, spaced as their positions say

LPS (DICOM's patient axes) becomes RAS by negating the first two rows. Tilted slices, sagittal and coronal
stacks keep their geometry: nothing is resampled. Every refusal is one line naming the series by its number and
description (``info.label``, never the patient) and the file; the tolerances are the module's constants.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from seg_edge.dicom.pixels import decode
from seg_edge.dicom.series import SeriesInfo, SourceFile
from seg_edge.errors import InputError
from seg_edge.runtime.atomic import atomic_write

__all__ = ["MIN_SLICES", "ORIENTATION_TOLERANCE", "SeriesVolume", "read_series", "save_series",
           "spacing_tolerance_mm"]

# Direction cosines are written with 6-16 digits; 1e-4 (0.006 degrees) is far above that rounding and far below
# any real change of plane. seg.check_series (the SEG writer's check) uses the same value, so whatever is read
# here can be written back as a SEG on the same instances.
ORIENTATION_TOLERANCE = 1e-4
PIXEL_SPACING_TOLERANCE_MM = 1e-3  # PixelSpacing values of one series are written identically by scanners
# A slice may sit this far from its place on the regular grid: positions written as DS are rounded to 1e-3 to
# 1e-5 mm by scanners (and float32 arithmetic adds ~1e-5 mm at 100 mm), far inside; a missing slice, a duplicate
# or a second stack moves a slice by a whole spacing, far outside.
SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION = 0.02, 0.01
# One slice has no spacing; with two, a missing slice cannot be told from a wide spacing. No MR volume that a
# brain-tumour model can use has fewer than 3 (the raw preprocessing refuses localisers of <= 5 slices anyway).
MIN_SLICES = 3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesVolume:
    """A series read: its description, the voxels as NIfTI (float32, RAS affine) and its datasets in z order
    (classic: one per slice; enhanced multi-frame: the instance), which the SEG writer references."""

    info: SeriesInfo
    image: nib.Nifti1Image
    datasets: list[Dataset]


@dataclass(frozen=True)
class _Frame:
    """One slice: where it came from and its geometry (LPS mm)."""

    instance: int  # index into the series' datasets
    frame: int  # frame inside that instance (0 for a classic instance)
    where: str  # the file (and frame) for messages
    uid: str  # SOPInstanceUID: the same instance in two files is told apart from two slices at one place
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns
    rows: int
    cols: int
    rescale: tuple[float, float]  # slope, intercept


def spacing_tolerance_mm(spacing_mm: float) -> float:
    """How far a slice may lie from its place on the regular grid (module constants)."""
    return max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * spacing_mm)


def read_series(info: SeriesInfo) -> SeriesVolume:
    """The series' voxels and geometry (module doc); ``InputError`` in one line for anything that is not one
    complete, regular stack of MR slices (no pixel data, cut short, an undecodable transfer syntax, differing
    size, spacing or orientation, gaps or duplicates, fewer than ``MIN_SLICES`` slices, non-finite values)."""
    with ExitStack() as archives:
        opened: dict[Path, zipfile.ZipFile] = {}  # each .zip opened once, not once per member
        datasets = [_read(info, source, opened, archives) for source in info.files]
    frames = [f for i, (ds, source) in enumerate(zip(datasets, info.files)) for f in _frames(info, ds, source, i)]
    if len(frames) < MIN_SLICES:
        raise InputError(f"{info.label}: {info.files[0]}: {len(frames)} slice{'s' if len(frames) != 1 else ''} "
                         f"(expected at least {MIN_SLICES}: a 3D volume whose slice spacing can be checked)")
    _check_same_grid(info, frames)
    frames, spacing = _sorted_along_normal(info, frames)
    pixels = [decode(ds, f"{info.label}: {source}") for ds, source in zip(datasets, info.files)]
    voxels = np.empty((frames[0].cols, frames[0].rows, len(frames)), dtype=np.float32)
    for z, f in enumerate(frames):
        plane = pixels[f.instance][f.frame]
        if plane.shape != (f.rows, f.cols):
            raise InputError(f"{info.label}: {f.where}: pixels {plane.shape} (expected Rows x Columns = "
                             f"{(f.rows, f.cols)})")
        slope, intercept = f.rescale
        voxels[:, :, z] = (plane.astype(np.float64) * slope + intercept).T
    bad = ~np.isfinite(voxels)
    if bad.any():
        z = int(np.argwhere(bad)[0][2])
        count = int(bad.sum())
        raise InputError(f"{info.label}: {frames[z].where}: {count} non-finite value{'s' if count > 1 else ''} "
                         "after rescaling (expected finite intensities)")
    image = nib.Nifti1Image(voxels, _affine(frames[0], spacing))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)  # scanner coordinates
    image.set_sform(image.affine, code=1)
    ordered = list(dict.fromkeys(f.instance for f in frames))
    return SeriesVolume(info=info, image=image, datasets=[datasets[i] for i in ordered])


def save_series(volume: SeriesVolume, path: Path) -> None:
    """Write the volume's image as NIfTI at ``path`` atomically (what the raw-series preprocessing reads)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist (expected an existing output folder)")
    with atomic_write(path) as tmp:
        nib.save(volume.image, tmp)


def _read(info: SeriesInfo, source: SourceFile, opened: dict[Path, zipfile.ZipFile], archives: ExitStack) -> Dataset:
    try:
        if source.member is None:
            ds = pydicom.dcmread(source.path)
        else:
            if source.path not in opened:
                opened[source.path] = archives.enter_context(zipfile.ZipFile(source.path))
            ds = pydicom.dcmread(io.BytesIO(opened[source.path].read(source.member)))
            ds.filename = str(source)  # the SEG writer names instances by their file
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError,
            zlib.error, zipfile.BadZipFile) as exc:
        raise InputError(f"{info.label}: {source}: unreadable DICOM file ({_why(exc)}); expected a "
                         "complete DICOM file") from None
    if str(ds.get("SeriesInstanceUID", "")) != info.series_uid:
        # pydicom returns an empty data set, without a word, for a file cut inside encapsulated pixel data
        raise InputError(f"{info.label}: {source}: unreadable DICOM file (its data set breaks off: "
                         f"{len(ds)} elements read, not this series' instance); expected a complete DICOM file, "
                         "is it truncated?")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality != "MR":
        raise InputError(f"{info.label}: {source}: Modality {modality or '(none)'!r} (expected MR: the models "
                         "segment MR images)")
    return ds


def _frames(info: SeriesInfo, ds: Dataset, source: SourceFile, instance: int) -> list[_Frame]:
    """The slices an instance holds with their geometry: one for a classic instance, one per frame for an
    enhanced one (per-frame functional groups first, then the shared ones)."""
    count = _number(ds.get("NumberOfFrames"), 1.0)
    if not (np.isfinite(count) and count >= 1 and count == int(count)):
        raise InputError(f"{info.label}: {source}: NumberOfFrames {ds.get('NumberOfFrames')!r} (expected a "
                         "positive integer)")
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if int(count) != 1:
            raise InputError(f"{info.label}: {source}: NumberOfFrames {count} without per-frame functional groups "
                             "(expected a classic single-frame image or an enhanced multi-frame one)")
        return [_frame(info, ds, [ds], instance, 0, str(source))]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != int(count):
        raise InputError(f"{info.label}: {source}: {len(per_frame)} per-frame functional groups for NumberOfFrames "
                         f"{count} (expected one per frame)")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = [shared[0]] if shared else []
    return [_frame(info, ds, [item, *groups, ds], instance, k, f"{source} (frame {k + 1})")
            for k, item in enumerate(per_frame)]


def _frame(info: SeriesInfo, ds: Dataset, places: list[Dataset], instance: int, k: int, where: str) -> _Frame:
    """A frame's geometry looked up in ``places`` in order (a frame's groups, the shared groups, the dataset)."""
    def find(sequence: str, keyword: str) -> Any:
        for place in places:
            if place is ds and keyword in ds:
                return ds[keyword].value
            item = place.get(sequence)
            if item and keyword in item[0]:
                return item[0][keyword].value
        return None

    def numbers(sequence: str, keyword: str, n: int) -> np.ndarray:
        value = find(sequence, keyword)
        values = [] if value is None else list(value) if isinstance(value, (list, tuple)) or \
            hasattr(value, "__len__") and not isinstance(value, str) else [value]
        array = np.array([_number(v, np.nan) for v in values], dtype=float)
        if array.size != n or not np.isfinite(array).all():
            raise InputError(f"{info.label}: {where}: {keyword} {value if value is not None else 'missing'} "
                             f"(expected {n} numbers: the image's geometry)")
        return array

    position = numbers("PlanePositionSequence", "ImagePositionPatient", 3)
    orientation = numbers("PlaneOrientationSequence", "ImageOrientationPatient", 6)
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{info.label}: {where}: ImageOrientationPatient {orientation.round(6).tolist()} "
                         "(expected two perpendicular unit vectors)")
    spacing = numbers("PixelMeasuresSequence", "PixelSpacing", 2)
    if (spacing <= 0).any():
        raise InputError(f"{info.label}: {where}: PixelSpacing {spacing.tolist()} (expected positive mm)")
    slope = find("PixelValueTransformationSequence", "RescaleSlope")
    intercept = find("PixelValueTransformationSequence", "RescaleIntercept")
    rescale = (_number(slope, 1.0), _number(intercept, 0.0))
    if not np.isfinite(rescale).all() or rescale[0] == 0:
        raise InputError(f"{info.label}: {where}: RescaleSlope {slope}, RescaleIntercept {intercept} (expected "
                         "finite numbers, a non-zero slope)")
    rows, cols = int(_number(ds.get("Rows"), 0)), int(_number(ds.get("Columns"), 0))
    return _Frame(instance=instance, frame=k, where=where, uid=str(ds.get("SOPInstanceUID", "")),
                  position=position, orientation=orientation, spacing=(float(spacing[0]), float(spacing[1])),
                  rows=rows, cols=cols, rescale=rescale)


def _check_same_grid(info: SeriesInfo, frames: list[_Frame]) -> None:
    """Every slice of the size, pixel spacing and orientation of the first."""
    first = frames[0]
    for f in frames:
        if (f.rows, f.cols) != (first.rows, first.cols):
            raise InputError(f"{info.label}: {f.where}: Rows x Columns {f.rows} x {f.cols} differ from "
                             f"{first.where}'s {first.rows} x {first.cols} (expected one size in a series)")
        if max(abs(a - b) for a, b in zip(f.spacing, first.spacing)) > PIXEL_SPACING_TOLERANCE_MM:
            raise InputError(f"{info.label}: {f.where}: PixelSpacing {list(f.spacing)} differs from "
                             f"{first.where}'s {list(first.spacing)} (expected one pixel spacing in a series)")
        if np.abs(f.orientation - first.orientation).max() > ORIENTATION_TOLERANCE:
            raise InputError(f"{info.label}: {f.where}: ImageOrientationPatient {f.orientation.round(6).tolist()} "
                             f"differs from {first.where}'s {first.orientation.round(6).tolist()} (expected one "
                             f"orientation in a series, within {ORIENTATION_TOLERANCE:g})")


def _normal(frame: _Frame) -> np.ndarray:
    normal: np.ndarray = np.cross(frame.orientation[:3], frame.orientation[3:])
    unit: np.ndarray = normal / np.linalg.norm(normal)
    return unit


def _sorted_along_normal(info: SeriesInfo, frames: list[_Frame]) -> tuple[list[_Frame], float]:
    """The frames ascending along the slice normal and their spacing; refuses duplicates, gaps, uneven spacing
    and slices off the normal through the first (a sheared stack), naming the slices and what was expected."""
    normal = _normal(frames[0])
    distance = np.array([f.position @ normal for f in frames])
    order = np.argsort(distance, kind="stable")
    frames, distance = [frames[i] for i in order], distance[order]
    gaps = np.diff(distance)
    typical = float(np.median(gaps))
    tolerance = spacing_tolerance_mm(typical)
    for k, gap in enumerate(gaps):
        a, b = frames[k], frames[k + 1]
        if gap <= tolerance and a.uid and (a.uid, a.frame) == (b.uid, b.frame):
            raise InputError(f"{info.label}: {a.where} and {b.where}: the same instance twice (one "
                             "SOPInstanceUID in two files; expected each instance once: remove the copy)")
        if gap <= tolerance:
            raise InputError(f"{info.label}: {a.where} and {b.where}: two slices at one position "
                             f"({distance[k]:.3f} and {distance[k + 1]:.3f} mm along the normal; expected one slice "
                             "per position: a repeated acquisition, echoes or time points in one series?)")
        if abs(gap - typical) > tolerance:
            missing = round(gap / typical) - 1
            hint = f"{missing} missing slice{'s' if missing > 1 else ''}?" \
                if missing >= 1 and abs(gap - (missing + 1) * typical) <= tolerance else "unevenly spaced slices"
            raise InputError(f"{info.label}: {a.where} to {b.where}: slice spacing {gap:.3f} mm (at "
                             f"{distance[k]:.3f} and {distance[k + 1]:.3f} mm along the normal; expected "
                             f"{typical:.3f} mm, the series' median, within {tolerance:.3f} mm: {hint})")
    spacing = float(distance[-1] - distance[0]) / (len(frames) - 1)
    drift = distance - (distance[0] + spacing * np.arange(len(frames)))
    if np.abs(drift).max() > tolerance:
        k = int(np.abs(drift).argmax())
        raise InputError(f"{info.label}: {frames[k].where}: {abs(drift[k]):.3f} mm from its place on a regular "
                         f"grid of {spacing:.3f} mm (expected within {tolerance:.3f} mm: evenly spaced slices)")
    for f in frames:
        offset = f.position - frames[0].position
        off_normal = float(np.linalg.norm(offset - (offset @ normal) * normal))
        if off_normal > tolerance:
            raise InputError(f"{info.label}: {f.where}: {off_normal:.3f} mm beside the slice normal through "
                             f"{frames[0].where} (expected slices stacked along their normal, within "
                             f"{tolerance:.3f} mm; a sheared stack is not read)")
    return frames, spacing


def _affine(first: _Frame, spacing: float) -> np.ndarray:
    """RAS affine of voxel (x = column, y = row, z = slice)."""
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * first.spacing[1]  # along a row: one column further
    lps[:3, 1] = first.orientation[3:] * first.spacing[0]  # down a column: one row further
    lps[:3, 2] = _normal(first) * spacing
    lps[:3, 3] = first.position
    affine: np.ndarray = _LPS_TO_RAS @ lps
    return affine


def _number(value: Any, default: float) -> float:
    """A DS/IS/float value as float; ``default`` when absent or empty, NaN when unreadable."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _why(exc: BaseException) -> str:
    """An exception's class as a reader understands it (zlib names its own just 'error')."""
    return "deflated data cut short or damaged" if isinstance(exc, zlib.error) else type(exc).__name__
