"""A study's raw scanner series → the four skull-stripped series on the atlas grid a model reads, and back.

The steps (``preprocess_study``), each timed in ``Preprocessed.timings``:

1. read and check every series (``series.read_study``): one 3D volume per named modality;
2. skull-strip the reference series (T1ce by default, as BraTS does) as it was read (``skullstrip``);
3. register every other series rigidly to the reference (Mattes MI, multi-resolution, seeded; the
   reference is the fixed image, cropped to the head and box-averaged to about 2 mm: ``coregister``);
4. register the skull-stripped reference to the atlas (12-parameter affine: ``atlas.register_to_atlas``);
5. resample every series ONCE, from its own grid straight onto the atlas grid, through the composed
   transform ``series_from_atlas = series_from_reference ∘ reference_from_atlas`` (linear), and multiply
   it by the reference's brain mask carried to the atlas grid (linear, then >= 0.5);
6. quality control (``qc``): every figure measured goes into ``Preprocessed.qc``; a study that fails is an
   InputError naming the series' file, before anything is segmented.

Transforms follow ``transforms``' convention: ``X_from_Y`` maps a point of space Y to the same anatomical
point in space X, in SimpleITK's LPS millimetres. With one thread (the default) two runs give identical arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess import qc
from seg_edge.preprocess.atlas import AffineOptions, Atlas, load_atlas, register_to_atlas
from seg_edge.preprocess.registration import RigidOptions, RigidResult, Volume, register_rigid
from seg_edge.preprocess.series import Series, read_study
from seg_edge.preprocess.skullstrip import brain_mask
from seg_edge.preprocess.transforms import compose, invert
from seg_edge.runtime.io import Case

# The reference is box-averaged to about this before the rigid registration runs on it: the thick-slice series
# (4-5 mm) carry no finer detail across their slices, and 2 mm voxels cost an eighth of 1 mm ones.
COREG_MM = 2.0
# The fixed image is cropped to the head (voxels above Otsu's threshold) grown by this margin.
HEAD_MARGIN_MM = 10.0
# Measured on a full-size synthetic raw study (seed 7 index 0, as first written), mean error over brain voxels
# against the true transforms, 1 thread on this 2-core machine under load: 3 levels at 8, 4 and 2 mm with 5 % of
# the head's voxels sampled and steps of up to 2 mm: FLAIR 0.74 mm, T2 0.43 mm in 2.2-2.7 s per series; 20 %
# sampling and 1 mm steps: the same errors (0.75, 0.47 mm) in 12-13 s; an unshrunk moving image: the same errors
# in twice the time. With these settings on four full-size studies as written now (seed 7 index 0, seed 3100
# indices 0-2): FLAIR 0.22-0.47 mm, T1 0.04-0.16 mm, T2 0.09-0.42 mm.
COREG_OPTIONS = RigidOptions(shrink_factors=(4, 2, 1), smoothing_sigmas=(2.0, 1.0, 0.0), iterations=100,
                             sampling_percentage=0.05, histogram_bins=32, learning_rate=2.0, min_step=1e-3)
DONE = "co-registered to {reference}, skull-stripped, resampled to the 240×240×155 atlas grid"


@dataclass(frozen=True, kw_only=True)
class RawOptions:
    """How a raw study is preprocessed. ``atlas`` None: the shipped MNI152 atlas (not SRI24)."""

    reference: str = "t1ce"
    atlas: Atlas | None = None
    threads: int = 1  # > 1 is faster, and reproducible to about 0.001 mm rather than bit for bit
    rigid: RigidOptions = COREG_OPTIONS  # its threads are replaced by ``threads``
    affine: AffineOptions = field(default_factory=AffineOptions)  # its threads are replaced by ``threads``
    limits: qc.Limits = field(default_factory=qc.Limits)
    # register each series mirrored left-right too, and refuse it if the mirror fits better (a flipped series):
    # one more rigid registration per series (measured: the co-registration stage, three series and their
    # mirrors, 12-17 s of a 21-27 s preprocessing on full-size studies, 1 thread)
    check_mirror: bool = True
    # measure each series' head size against the reference's (a 9-parameter registration from the rigid one) and
    # refuse a different size: another patient in the same pose passed the other checks (qc.Limits)
    check_scale: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise InputError(f"preprocessing threads {self.threads} (expected at least 1)")


@dataclass
class Preprocessed:
    """A raw study on the atlas grid, with everything needed to go back to each series' own grid."""

    case: Case  # the series on the atlas grid in the order asked for: skull-stripped, float32, atlas affine
    reference: sitk.Image  # the reference series as read (float32): its grid is the native space
    series_from_atlas: dict[str, sitk.Transform]  # atlas point → that series' point (LPS mm), every modality
    brain_native: sitk.Image  # the brain mask (uint8 0/1) on the reference's grid
    qc: dict[str, Any]  # every figure measured: {"series": {modality: {...}}, "brain": {...}, "atlas": {...}}
    timings: dict[str, float]  # seconds per stage
    grids: dict[str, sitk.Image] = field(repr=False)  # every series as read (its grid: ``to_native``'s target)
    reference_modality: str = "t1ce"  # which of ``grids`` is ``reference``


def preprocess_study(files: dict[str, Path], order: tuple[str, ...], *, options: RawOptions) -> Preprocessed:
    """Put the raw series ``files`` (modality → NIfTI) on the atlas grid, in ``order``; see the module doc.

    Any series that cannot be a head series of this study, or that fails quality control, is a one-line
    InputError naming its file."""
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    series = read_study(files, order, reference=options.reference)
    reference = series[options.reference]
    clock.lap("read")
    brain = brain_mask(reference.image, threads=options.threads, source=str(reference.path))
    clock.lap("skull_strip")
    brain_qc = qc.measure_brain(brain.mask)
    qc.check_brain(brain_qc, reference.path, options.limits)
    rigid, series_qc = _coregister_all(series, reference, brain.mask, options)
    clock.lap("coregister")
    atlas = options.atlas or load_atlas()
    stripped = sitk.Mask(reference.image, brain.mask)
    affine = register_to_atlas(atlas, Volume(stripped, str(reference.path)),
                               options=replace(options.affine, threads=options.threads))
    atlas_qc = qc.measure_atlas(affine)
    qc.check_atlas(atlas_qc, reference.path, options.limits)
    clock.lap("atlas")
    reference_from_atlas = affine.transform
    series_from_atlas: dict[str, sitk.Transform] = {options.reference: compose(reference_from_atlas)}
    for m, result in rigid.items():
        series_from_atlas[m] = compose(result.transform, reference_from_atlas)
    images = _on_atlas(series, order, series_from_atlas, brain.mask, reference_from_atlas, atlas)
    clock.lap("resample")
    case = Case(case_id=_case_id(reference.path, options.reference), images=images,
                affine=_atlas_affine(atlas), header=None, sources={m: series[m].path for m in order},
                warnings=[DONE.format(reference=options.reference)]
                + [w for m in order if m in series_qc for w in series_qc[m].warnings])
    report = {"series": {m: v.as_dict() for m, v in series_qc.items()}, "brain": brain_qc.as_dict(),
              "brain_ml": brain_qc.volume_ml, "atlas": {**atlas_qc.as_dict(), "name": atlas.name,
                                                        "source": str(atlas.source)}}
    return Preprocessed(case=case, reference=reference.image, series_from_atlas=series_from_atlas,
                        brain_native=brain.mask, qc=report, timings=timings,
                        grids={m: s.image for m, s in series.items()}, reference_modality=options.reference)


def _coregister_all(series: dict[str, Series], reference: Series, mask: sitk.Image, options: RawOptions
                    ) -> tuple[dict[str, RigidResult], dict[str, qc.SeriesQc]]:
    """Every series but the reference registered to it, measured and checked (refused at once: a series of
    another patient is refused before the next one is registered)."""
    fixed = coregistration_fixed(reference.image)
    rigid: dict[str, RigidResult] = {}
    measured: dict[str, qc.SeriesQc] = {}
    for m, one in series.items():
        if m == reference.modality:
            continue
        rigid[m] = coregister(fixed, one, options)
        mirror = coregister(fixed, Series(m, one.path, qc.mirrored_left_right(one.image)), options) \
            if options.check_mirror else None
        working = _working(one.image)
        scales = qc.measure_scales(fixed, working, rigid[m], threads=options.threads) \
            if options.check_scale else None
        measured[m] = qc.measure_series(reference, one, rigid[m], mask, mirrored=mirror, scales=scales,
                                        scale_voxel_mm=qc.voxel_along(fixed, working), threads=options.threads)
        qc.check_series(measured[m], one.path, options.limits)
    return rigid, measured


def to_native(volume_atlas: np.ndarray, pre: Preprocessed, series: str | None = None) -> np.ndarray:
    """``volume_atlas`` (C, X, Y, Z) on the atlas grid → (C, *that series' shape) on a series' own grid.

    Each channel is resampled linearly through the stored ``series_from_atlas`` (inverted: a series point →
    the atlas point to read); ``series`` None is the reference. Points outside the atlas grid read 0."""
    name = series if series is not None else pre.reference_modality
    if name not in pre.grids:
        raise InputError(f"series '{name}' (expected one of {', '.join(pre.grids)})")
    expected = tuple(pre.case.images.shape[1:])
    volume = np.asarray(volume_atlas)
    if volume.ndim != 4 or tuple(volume.shape[1:]) != expected:
        raise InputError(f"an atlas-grid volume of shape {volume.shape} "
                         f"(expected (C, {', '.join(map(str, expected))}))")
    grid = pre.grids[name]
    atlas_from_series = invert(pre.series_from_atlas[name])
    template = _atlas_template(pre)
    out = []
    for channel in volume:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.astype(np.float32).transpose(2, 1, 0)))
        image.CopyInformation(template)
        back = sitk.Resample(image, grid, atlas_from_series, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(back).transpose(2, 1, 0))
    return np.stack(out)


def coregistration_fixed(reference: sitk.Image) -> sitk.Image:
    """The reference as the rigid registrations' fixed image: box-averaged to about COREG_MM and cropped to
    the head (Otsu's threshold, grown by HEAD_MARGIN_MM): fewer voxels, the same anatomy."""
    factors = [max(1, int(round(COREG_MM / s))) for s in reference.GetSpacing()]
    small = sitk.BinShrink(reference, factors) if max(factors) > 1 else reference
    head = sitk.OtsuThreshold(small, 0, 1)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(head)
    if not stats.HasLabel(1):
        return small
    x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
    size = small.GetSize()
    pad = [int(np.ceil(HEAD_MARGIN_MM / s)) for s in small.GetSpacing()]
    lower = [max(0, a - p) for a, p in zip((x, y, z), pad)]
    upper = [min(n, a + b + p) for a, b, p, n in zip((x, y, z), (sx, sy, sz), pad, size)]
    cropped: sitk.Image = sitk.RegionOfInterest(small, [u - lo for lo, u in zip(lower, upper)], lower)
    return cropped


def coregister(fixed: sitk.Image, moving: Series, options: RawOptions) -> RigidResult:
    """``moving`` registered rigidly to the (prepared) reference: the result maps a reference point to the
    series' point (``series_from_reference``)."""
    rigid = replace(options.rigid, threads=options.threads)
    return register_rigid(Volume(fixed, "the reference series"), Volume(_working(moving.image), str(moving.path)),
                          options=rigid)


def _working(image: sitk.Image) -> sitk.Image:
    """A series box-averaged to about COREG_MM: what co-registration and its checks run on."""
    factors = [max(1, int(round(COREG_MM / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _on_atlas(series: dict[str, Series], order: tuple[str, ...], series_from_atlas: dict[str, sitk.Transform],
              mask: sitk.Image, reference_from_atlas: sitk.Transform, atlas: Atlas) -> np.ndarray:
    """Every series resampled once onto the atlas grid (linear) and multiplied by the brain mask there (the
    reference's mask carried linearly and thresholded at 0.5: a nearest-neighbour mask on a rotated grid is a
    staircase, the half-way level of the interpolated one is the boundary the mask meant)."""
    brain = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), atlas.image, reference_from_atlas, sitk.sitkLinear,
                          0.0, sitk.sitkFloat32)
    keep = sitk.GetArrayViewFromImage(brain) >= 0.5
    shape = tuple(int(n) for n in atlas.image.GetSize())
    images = np.empty((len(order), *shape), dtype=np.float32)
    for i, m in enumerate(order):
        moved = sitk.Resample(series[m].image, atlas.image, series_from_atlas[m], sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
        images[i] = np.where(keep, sitk.GetArrayViewFromImage(moved), 0.0).transpose(2, 1, 0)
    return images


def _atlas_affine(atlas: Atlas) -> np.ndarray:
    return np.asarray(atlas.affine_ras, dtype=np.float64)


def _atlas_template(pre: Preprocessed) -> sitk.Image:
    """An empty image on the atlas grid (the grid ``pre.case`` was written on), rebuilt from its affine."""
    affine = pre.case.affine
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    template = sitk.Image([int(n) for n in pre.case.images.shape[1:]], sitk.sitkFloat32)
    template.SetSpacing([float(s) for s in spacing])
    template.SetDirection([float(v) for v in (lps / spacing).ravel()])
    template.SetOrigin([float(v) for v in np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]])
    return template


def _case_id(path: Path, reference: str) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    tag = f"_{reference}"
    return name[: -len(tag)] if name.lower().endswith(tag) else name


class _Clock:
    """Stage timings: ``lap(name)`` records the seconds since the last lap."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.start, 4)
        self.start = now
