"""A label map as a DICOM Segmentation (BINARY) on the reference series' own frames, written with highdicom.

The label map's axes are the source series' frame order, not NIfTI's: ``labels[i, r, c]`` is the label of
row ``r``, column ``c`` of the instance ``source_datasets[i]`` (the order the caller gives; ``frame_order``
sorts a series along its slice normal). ``frames_from_nifti`` takes a label map on the series' NIfTI grid
(x, y, z and the RAS affine nibabel reads) onto these frames by each pixel's position, exactly: the converter's
axis order and flips do not matter, only that its grid is the series' own.

One segment per tissue label, always all three, numbered the same in every SEG seg-edge writes:

    segment 1  NCR  necrotic tumour core  SCT 6574001 'Necrosis'         (DICOM CID 7168)
    segment 2  ED   peritumoural oedema   SCT 79654002 'Edema'           (CID 7169)
    segment 3  ET   enhancing tumour      NCIt C113842 'Enhancing Lesion' (CID 7169)

all of category SCT 49755003 'Morphologically Abnormal Structure' (CID 7150), anatomic region SCT 12738006
'Brain'. A fixed numbering lets the SR and any reader find ET as segment 3 without reading labels, and an
empty segment says the model found none of that tissue instead of leaving the reader to guess why it is
missing. BINARY, not LABELMAP: PACS built on older DCMTK refuse the Label Map SEG at association time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from seg_edge.errors import InputError
from seg_edge.runtime.atomic import atomic_write
from seg_edge.runtime.labelfiles import TISSUES
from seg_edge.runtime.regions import et_label

__all__ = ["SEGMENTS", "Segment", "frame_order", "frames_from_nifti", "labels_from_seg", "write_seg"]

_MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure
_ENHANCING_LESION = hd.sr.CodedConcept("C113842", "NCIt", "Enhancing Lesion")
_ORIENTATION_TOL = 1e-4  # direction cosines written with ~6 decimals
_LO_MAX = 64  # DICOM's LO value representation: series description, algorithm name and version


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: its number, the BraTS tissue it holds, its label, coded type and colour."""

    number: int
    tissue: str
    label: str
    property_type: Code | hd.sr.CodedConcept
    rgb: tuple[int, int, int]

    def value(self, label_scheme: str) -> int:
        """This tissue's value in a label map of ``label_scheme`` (NCR 1, ED 2, ET 4 or 3)."""
        return {"NCR": 1, "ED": 2, "ET": et_label(label_scheme)}[self.tissue]


_TYPES: dict[str, Code | hd.sr.CodedConcept] = {"NCR": codes.SCT.Necrosis, "ED": codes.SCT.Edema,
                                                "ET": _ENHANCING_LESION}
# Names and colours (ITK-SNAP's and 3D Slicer's usual BraTS colours) from the viewer label files' table, so that
# the SEG and the files written beside the NIfTI label map show a tissue alike.
SEGMENTS = tuple(Segment(number=n, tissue=t.tissue, label=t.name, property_type=_TYPES[t.tissue], rgb=t.rgb)
                 for n, t in enumerate(TISSUES, start=1))


def _name(ds: Dataset, index: int) -> str:
    """How an error names an instance: its file when it was read from one (never the patient)."""
    filename = getattr(ds, "filename", None)
    return str(filename) if filename else f"source instance {index + 1} (SOPInstanceUID {ds.get('SOPInstanceUID')})"


@dataclass(frozen=True)
class _Frame:
    """One source frame's place: its top-left pixel's centre (LPS mm), its row and column directions (LPS unit
    vectors, ImageOrientationPatient's two halves) and its spacing (between rows, between columns, mm)."""

    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


def _number_of_frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 0


def is_multiframe(source_datasets: Sequence[Dataset]) -> bool:
    """Whether the source is one multi-frame instance (enhanced MR) rather than one instance per frame."""
    return len(source_datasets) == 1 and _number_of_frames(source_datasets[0]) > 1


def number_of_frames(source_datasets: Sequence[Dataset]) -> int:
    """How many frames the source holds: its instances, or the one multi-frame instance's frames."""
    return _number_of_frames(source_datasets[0]) if is_multiframe(source_datasets) else len(source_datasets)


def _group_value(groups: Sequence[Dataset | None], sequence: str, keyword: str) -> Any:
    """``keyword`` of the first item of ``sequence`` in the first of ``groups`` (per-frame, then shared) that
    has it: enhanced images keep geometry shared when it is one for all frames, per frame otherwise."""
    for group in groups:
        items = group.get(sequence) if group is not None else None
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


def _enhanced_frames(ds: Dataset, index: int) -> list[_Frame]:
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    count = _number_of_frames(ds)
    if not per_frame or len(per_frame) != count:
        raise InputError(f"{_name(ds, index)}: {len(per_frame or [])} per-frame functional groups for "
                         f"NumberOfFrames {count} (expected one per frame, with each frame's position)")
    frames = []
    for i, group in enumerate(per_frame):
        groups = [group, shared[0] if shared else None]
        values = {"ImagePositionPatient": _group_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
                  "ImageOrientationPatient": _group_value(groups, "PlaneOrientationSequence",
                                                          "ImageOrientationPatient"),
                  "PixelSpacing": _group_value(groups, "PixelMeasuresSequence", "PixelSpacing")}
        for key, value in values.items():
            if value is None:
                raise InputError(f"{_name(ds, index)}: frame {i + 1} has no {key} in its functional groups "
                                 "(expected an image with its geometry)")
        spacing = [float(v) for v in values["PixelSpacing"]]
        frames.append(_Frame(np.asarray(values["ImagePositionPatient"], dtype=float),
                             np.asarray(values["ImageOrientationPatient"], dtype=float), (spacing[0], spacing[1])))
    return frames


def _frames(source_datasets: Sequence[Dataset]) -> list[_Frame]:
    """Every source frame's geometry, in the order of the label map's frames."""
    if is_multiframe(source_datasets):
        return _enhanced_frames(source_datasets[0], 0)
    return [_Frame(np.asarray(ds.ImagePositionPatient, dtype=float), np.asarray(ds.ImageOrientationPatient, float),
                   (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))) for ds in source_datasets]


def check_series(source_datasets: Sequence[Dataset]) -> None:
    """Refuse what is not one series on one grid: classic single-frame instances, or one multi-frame
    (enhanced) instance. Names the instance and the value."""
    if not source_datasets:
        raise InputError("source series: no instances (expected the reference series' images)")
    first = source_datasets[0]
    multiframe = is_multiframe(source_datasets)
    geometry = () if multiframe else ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
    for key in ("SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns", *geometry):
        for i, ds in enumerate(source_datasets):
            if key not in ds:
                raise InputError(f"{_name(ds, i)}: no {key} (expected an image with its geometry)")
    for i, ds in enumerate(source_datasets):
        frames = _number_of_frames(ds)
        if frames != 1 and not multiframe:
            raise InputError(f"{_name(ds, i)}: NumberOfFrames {ds.get('NumberOfFrames')} in a series of "
                             f"{len(source_datasets)} instances (expected single-frame images, or one multi-frame "
                             "instance holding the whole series)")
        for key in ("SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
            if ds[key].value != first[key].value:
                raise InputError(f"{_name(ds, i)}: {key} {ds[key].value} differs from the first instance's "
                                 f"{first[key].value} (expected one series on one grid)")
    geometries = _frames(source_datasets)
    reference = geometries[0].orientation
    for i, frame in enumerate(geometries):
        if np.abs(frame.orientation - reference).max() > _ORIENTATION_TOL:
            where = f"{_name(first, 0)}: frame {i + 1}" if multiframe else _name(source_datasets[i], i)
            raise InputError(f"{where}: ImageOrientationPatient {[round(float(v), 6) for v in frame.orientation]} "
                             f"differs from the first frame's {[round(float(v), 6) for v in reference]} "
                             "(expected one orientation)")
    uids = [ds.SOPInstanceUID for ds in source_datasets]
    if len(set(uids)) != len(uids):
        raise InputError("source series: the same SOPInstanceUID twice (expected each instance once)")


def frame_order(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances sorted along the slice normal (ImageOrientationPatient's row x column), feet first for an
    axial series: the order in which a (frames, rows, cols) label map is most often built. One multi-frame
    instance is returned as it is (its frames keep their order in the instance)."""
    check_series(source_datasets)
    if is_multiframe(source_datasets):
        return list(source_datasets)
    normal = _frames(source_datasets[0:1])[0].normal
    return sorted(source_datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))


def _check_labels(labels: np.ndarray, source_datasets: Sequence[Dataset], label_scheme: str) -> None:
    expected = (number_of_frames(source_datasets), int(source_datasets[0].Rows), int(source_datasets[0].Columns))
    if labels.ndim != 3 or tuple(labels.shape) != expected:
        raise InputError(f"label map: shape {tuple(labels.shape)} (expected (frames, rows, cols) = {expected}, "
                         "the source series' frames in the order given)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label map: dtype {labels.dtype} (expected integer labels)")
    allowed = {0, *(s.value(label_scheme) for s in SEGMENTS)}
    found = {int(v) for v in np.unique(labels)}
    if found - allowed:
        raise InputError(f"label map: values {sorted(found - allowed)} (expected {sorted(allowed)} for label "
                         f"scheme {label_scheme})")


def _check_model(model_name: str, model_version: str, model_sha256: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise InputError(f"model sha256 '{model_sha256}' (expected 64 lower-case hex digits)")
    for what, value in (("model name", model_name), ("model version", model_version)):
        if not value.strip() or len(value) > _LO_MAX or "\\" in value:
            raise InputError(f"{what} '{value}' (expected 1-{_LO_MAX} characters without a backslash: DICOM LO)")


def algorithm(model_name: str, model_version: str, model_sha256: str) -> hd.AlgorithmIdentificationSequence:
    """The model as DICOM algorithm identification: name, version, family AI, seg-edge as its source and the
    checkpoint's sha256 as a parameter."""
    return hd.AlgorithmIdentificationSequence(
        name=model_name, version=model_version, family=codes.DCM.ArtificialIntelligence,
        source=f"seg-edge {package_version('seg-edge')}", parameters={"sha256": model_sha256})


def _descriptions(algorithm_id: hd.AlgorithmIdentificationSequence) -> list[hd.seg.SegmentDescription]:
    return [hd.seg.SegmentDescription(
        segment_number=s.number, segment_label=s.label, segmented_property_category=_MORPHOLOGICALLY_ABNORMAL,
        segmented_property_type=s.property_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_id, tracking_id=s.tissue, tracking_uid=generate_uid(),
        anatomic_regions=[codes.SCT.Brain], display_color=hd.color.CIELabColor.from_rgb(*s.rgb))
        for s in SEGMENTS]


def write_seg(labels: np.ndarray, source_datasets: Sequence[Dataset], *, model_name: str, model_version: str,
              model_sha256: str, label_scheme: str, out: Path) -> Dataset:
    """Write ``labels`` (frames, rows, cols; frame ``i`` is ``source_datasets[i]``, or frame ``i + 1`` of one
    multi-frame source instance) as a BINARY DICOM SEG to
    ``out`` atomically and return it. Patient and study attributes come from the source series; the SEG is a
    new series of that study, described "seg-edge <model name>" (cut to DICOM's 64 characters)."""
    labels = np.asarray(labels)
    check_series(source_datasets)
    _check_labels(labels, source_datasets, label_scheme)
    _check_model(model_name, model_version, model_sha256)
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist (expected an existing output folder)")
    # one bit-plane per segment, frames in the caller's order
    planes = np.stack([labels == s.value(label_scheme) for s in SEGMENTS], axis=-1)
    first = source_datasets[0]
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets), pixel_array=planes.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(algorithm(model_name, model_version, model_sha256)),
        series_instance_uid=generate_uid(), series_number=_derived_series_number(first, 1000),
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="seg-edge",
        manufacturer_model_name=model_name, software_versions=package_version("seg-edge"),
        device_serial_number=model_sha256[:16], series_description=f"seg-edge {model_name}"[:_LO_MAX],
        content_label="SEGEDGE", content_description=f"BraTS tumour sub-regions by {model_name}"[:_LO_MAX],
        # empty frames are kept: a frame per source instance and segment, so that every segment references
        # every source frame and an empty segment is present (not missing)
        omit_empty_frames=False)
    with atomic_write(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return seg


def _derived_series_number(source: Dataset, offset: int) -> int:
    """The source's SeriesNumber plus ``offset`` (1000 for the SEG, 2000 for the SR): beside it in a viewer's
    series list, and the same on every run. DICOM's IS holds up to 2^31 - 1."""
    number = int(source.get("SeriesNumber", 0) or 0) + offset
    return number if number < 2**31 else offset


def labels_from_seg(seg: Dataset, source_datasets: Sequence[Dataset], *, label_scheme: str) -> np.ndarray:
    """A SEG written by ``write_seg`` read back with highdicom as the label map (frames, rows, cols) on
    ``source_datasets`` in the order given (or one multi-frame instance's frames, in its order)."""
    segmentation = seg if isinstance(seg, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(seg)
    numbers = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
    if numbers != [s.number for s in SEGMENTS]:
        raise InputError(f"SEG {segmentation.SOPInstanceUID}: segments {numbers} (expected "
                         f"{[s.number for s in SEGMENTS]}, as seg-edge writes them)")
    numbers = [s.number for s in SEGMENTS]
    if is_multiframe(source_datasets):
        planes = segmentation.get_pixels_by_source_frame(
            source_sop_instance_uid=source_datasets[0].SOPInstanceUID,
            source_frame_numbers=list(range(1, number_of_frames(source_datasets) + 1)),
            segment_numbers=numbers, dtype=np.uint8)
    else:
        planes = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in source_datasets],
            segment_numbers=numbers, dtype=np.uint8)
    labels = np.zeros(planes.shape[:3], dtype=np.uint8)
    for k, s in enumerate(SEGMENTS):
        if (labels[planes[..., k] > 0] != 0).any():
            raise InputError(f"SEG {segmentation.SOPInstanceUID}: segment {s.number} overlaps another "
                             "(expected one tissue per pixel)")
        labels[planes[..., k] > 0] = s.value(label_scheme)
    return labels


def frames_from_nifti(labels_xyz: np.ndarray, affine: np.ndarray, source_datasets: Sequence[Dataset]) -> np.ndarray:
    """A label map on the series' NIfTI grid (x, y, z with a RAS ``affine`` as nibabel reads a conversion of
    the series: SimpleITK's in the tests) taken onto the source's frames, in the order given (the instances, or
    one multi-frame instance's frames): (frames, rows, cols). Each pixel's centre (LPS, from its position,
    orientation and pixel spacing) must fall on a voxel centre of that grid, every voxel once: a grid that is
    not this series' is refused, never resampled."""
    check_series(source_datasets)
    labels_xyz, affine = np.asarray(labels_xyz), np.asarray(affine, dtype=float)
    first = source_datasets[0]
    rows, cols = int(first.Rows), int(first.Columns)
    frames = _frames(source_datasets)
    if labels_xyz.ndim != 3 or labels_xyz.size != len(frames) * rows * cols or affine.shape != (4, 4):
        raise InputError(f"label map: shape {tuple(labels_xyz.shape)}, affine {affine.shape} (expected "
                         f"{len(frames) * rows * cols} voxels, the series' {len(frames)} frames of "
                         f"{rows}x{cols}, and a 4x4 affine)")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    to_voxel = np.linalg.inv(affine)
    linear = to_voxel[:3, :3] @ lps_to_ras
    # per frame: its first pixel's voxel index, one column to the right, one row down
    origins = np.array([linear @ f.position + to_voxel[:3, 3] for f in frames])
    step_c = np.array([linear @ (f.orientation[:3] * f.spacing[1]) for f in frames])
    step_r = np.array([linear @ (f.orientation[3:] * f.spacing[0]) for f in frames])
    r, c = np.mgrid[:rows, :cols]
    result = np.empty((len(frames), rows, cols), dtype=labels_xyz.dtype)
    reached = np.zeros(labels_xyz.shape, dtype=bool)
    off, inside = 0.0, True
    # frame by frame: a (frames, rows, cols, 3) index array is 300 MB for a 256x256x192 series
    for k in range(len(frames)):
        index = origins[k] + r[..., None] * step_r[k] + c[..., None] * step_c[k]
        nearest = np.rint(index)
        off = max(off, float(np.abs(index - nearest).max()))
        ijk = nearest.astype(np.int64)
        inside = bool(((ijk >= 0) & (ijk < labels_xyz.shape)).all())
        if off > 1e-2 or not inside:
            break
        result[k] = labels_xyz[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
        reached[ijk[..., 0], ijk[..., 1], ijk[..., 2]] = True
    # with as many pixels as voxels, all inside and every voxel reached means every voxel is read exactly once
    if off > 1e-2 or not inside or not reached.all():
        raise InputError(f"label map: its grid is not this series' (pixel centres up to {off:.3f} voxel off the "
                         f"voxel centres, all inside: {inside}; expected the NIfTI converted from these instances)")
    return result
