"""Quality control of a raw study's preprocessing: what is measured, and the refusals decided from it.

Every figure measured is kept (``as_dict``) so that the report can show it; a refusal is a one-line InputError
naming the series' file, the figure measured and the range expected. The thresholds are ``Limits``' defaults;
the measurements behind them are in the comments there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess.atlas import AffineResult
from seg_edge.preprocess.registration import RigidResult
from seg_edge.preprocess.series import Series

BINS = 32  # histogram bins of the QC metric (the co-registration's own)
THICK_SLICE_MM = 3.0  # a series with thicker voxels gets a warning (a 2D series)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The QC thresholds. Measured on synthetic raw studies (seed 7: three at half scale, two at full scale), each
    non-reference series co-registered as it was and damaged four ways (``tests/preprocess/broken.py``):

    ======================  ==============================  ======================  =====================
    series                  final MI over the head          rotation found (°)      MI over the brain
    ======================  ==============================  ======================  =====================
    good (9)                -0.78 … -1.19 (T2 -0.78/-0.87)  4.5 … 11.9              -0.07 … -0.75
    flipped left-right      -0.54 … -0.73                   13.6 … 26.1             -0.04 … -0.23
    turned 180°             -0.43 … -0.53                   3.0 … 24.0              -0.02 … -0.06
    another patient         -0.58 … -0.70                   16.7 … 28.9             -0.08 … -0.17
    a bottle phantom        -0.21 … -0.32                   3.8 … 8.7               -0.00 … -0.02
    ======================  ==============================  ======================  =====================

    The MI over the brain depends on the contrast pair and the slice thickness (a good T2 at 8 mm slices:
    -0.07, below a flipped FLAIR's -0.23), so it is reported, not used. The MI over the head at -0.65 refuses
    every 180° turn, bottle, flipped T1/T2 and the T1/T2 of another patient with a margin of 0.13 to the worst
    good series; the rotation at 15° (motion between two series of one sitting: up to 6° each, 12° found at
    worst) refuses the flipped and wrong-patient FLAIRs, whose head pose differs. What neither catches: another
    patient's FLAIR lying in nearly the same pose (seed 2207: not caught), hence the mirror test.

    The mirror test (``check_mirror``): each series is registered a second time mirrored left-right. For the 12
    good series of four half-scale studies (seed 7) the mirror always fitted worse, by 0.037-0.087 (FLAIR),
    0.070-0.166 (T2) and 0.46-0.60 (T1) in final MI; a flipped series is the same pair the other way round, so a
    mirror that fits better (and within the limits below) is refused as flipped. A flipped series of a head lying
    straight is the hard case (its mirror is nearly itself): the margin shrinks with the head's tilt.
    """

    max_metric: float = -0.65
    max_rotation_deg: float = 15.0
    # an adult brain with its CSF: 1.0-1.9 L; the synthetic MNI152 brains measure 1.75-1.90 L
    brain_ml: tuple[float, float] = (900.0, 2200.0)
    max_border_fraction: float = 0.02
    max_atlas_metric: float = -0.15


@dataclass(frozen=True, kw_only=True)
class SeriesQc:
    """One series' co-registration to the reference, measured."""

    metric: float  # the registration's final Mattes MI (negative; lower is better), on its random samples
    brain_metric: float  # Mattes MI over every voxel of the reference's brain (2 mm), at the final transform
    mirrored_metric: float | None  # ``metric`` of the series mirrored left-right, registered the same way
    mirrored_rotation_deg: float | None  # and the rotation that registration found
    rotation_deg: float  # the angle of the recovered rotation, about its axis
    translation_mm: tuple[float, float, float]  # how far the reference brain's centre moves (LPS mm)
    determinant: float  # of the series' direction cosines (-1: a left-handed grid; reported, not refused)
    iterations: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Every figure, rounded for a report."""
        values = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, tuple)
                    else v) for k, v in values.items()}


@dataclass(frozen=True, kw_only=True)
class BrainQc:
    """The reference's brain mask, measured."""

    volume_ml: float
    border_fraction: float  # of the mask's voxels on the outermost layer of the reference's grid

    def as_dict(self) -> dict[str, Any]:
        """Every figure, rounded for a report."""
        return {"volume_ml": round(self.volume_ml, 1), "border_fraction": round(self.border_fraction, 5)}


@dataclass(frozen=True, kw_only=True)
class AtlasQc:
    """The affine registration of the skull-stripped reference to the atlas, measured."""

    metric: float
    scales: tuple[float, float, float]  # how much larger the reference brain is than the atlas's, per axis

    def as_dict(self) -> dict[str, Any]:
        """Every figure, rounded for a report."""
        return {"metric": round(self.metric, 4), "scales": [round(s, 4) for s in self.scales]}


def brain_metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: sitk.Image, *,
                 threads: int = 1) -> float:
    """Mattes MI of ``moving`` through ``transform`` against ``fixed``, over every voxel of ``mask`` (on
    ``fixed``'s grid): no random sampling, so the figure is the same on every run."""
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=BINS)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    return float(method.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)))


def measure_series(reference: Series, series: Series, result: RigidResult, mask: sitk.Image, *,
                   mirrored: RigidResult | None = None, threads: int = 1) -> SeriesQc:
    """The figures of one co-registration (``result`` maps a reference point to the series' point);
    ``mirrored``: the registration of the series mirrored left-right (``mirrored_left_right``), if run."""
    fixed, small_mask = _coarse(reference.image, mask)
    centre = _centre(mask)
    moved = np.asarray(result.transform.TransformPoint(centre)) - np.asarray(centre)
    direction = np.asarray(series.image.GetDirection(), dtype=np.float64).reshape(3, 3)
    thickest = max(float(s) for s in series.image.GetSpacing())
    warnings = [f"{series.path.name}: {thickest:.1f} mm slices; on the 1 mm atlas grid its detail across them is "
                f"interpolated"] if thickest > THICK_SLICE_MM else []
    return SeriesQc(warnings=warnings, metric=result.metric,
                    brain_metric=brain_metric(fixed, series.image, result.transform, small_mask, threads=threads),
                    rotation_deg=result.rotation_deg,
                    translation_mm=(float(moved[0]), float(moved[1]), float(moved[2])),
                    determinant=float(np.linalg.det(direction)), iterations=result.iterations,
                    mirrored_metric=None if mirrored is None else mirrored.metric,
                    mirrored_rotation_deg=None if mirrored is None else mirrored.rotation_deg)


def mirrored_left_right(image: sitk.Image) -> sitk.Image:
    """``image``'s voxels mirrored along the grid axis nearest the patient's left-right, header unchanged:
    what a flipped series is, so that registering both tells which way round the series is."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[0, :])))  # the voxel axis whose world direction is most along LPS x
    flipped: sitk.Image = sitk.Flip(image, [a == axis for a in range(3)])
    flipped.CopyInformation(image)
    return flipped


def check_series(measured: SeriesQc, path: Path, limits: Limits) -> None:
    """Refuse a series whose registration to the reference failed: a flipped series (its mirror image fits, and
    fits better), little shared information (another patient, a turned or non-brain series), or a rotation no
    patient makes between two series of one sitting."""
    mirror, mirror_deg = measured.mirrored_metric, measured.mirrored_rotation_deg
    mirror_better = mirror is not None and mirror < measured.metric
    if mirror_better and mirror is not None and mirror <= limits.max_metric \
            and mirror_deg is not None and mirror_deg <= limits.max_rotation_deg:
        raise InputError(f"{path}: flipped left-right: mirrored, it registers to the reference better (mutual "
                         f"information {mirror:.3f}, rotation {mirror_deg:.1f}°, against {measured.metric:.3f} and "
                         f"{measured.rotation_deg:.1f}° as given; expected the series as given to fit better)")
    if measured.metric > limits.max_metric:
        raise InputError(f"{path}: mutual information with the reference {measured.metric:.3f} after registration "
                         f"(expected below {limits.max_metric:.2f}: the same head; another patient, a turned or "
                         f"non-brain series fails this)")
    if measured.rotation_deg > limits.max_rotation_deg:
        raise InputError(f"{path}: rotated {measured.rotation_deg:.1f}° from the reference series (expected at "
                         f"most {limits.max_rotation_deg:.0f}°: a patient moving between series)")
    if mirror_better:
        raise InputError(f"{path}: mirrored left-right, it registers to the reference better (mutual information "
                         f"{mirror:.3f} against {measured.metric:.3f} as given; expected the series as given to fit "
                         f"better: it is flipped, or not of this head)")


def measure_brain(mask: sitk.Image) -> BrainQc:
    """The brain mask's volume and how much of it lies on the grid's outermost layer (a brain cut off by the
    field of view)."""
    values = sitk.GetArrayViewFromImage(mask) > 0
    count = int(np.count_nonzero(values))
    volume = count * float(np.prod(mask.GetSpacing())) / 1000.0
    inner = values[1:-1, 1:-1, 1:-1]
    border = count - int(np.count_nonzero(inner))
    return BrainQc(volume_ml=volume, border_fraction=border / count if count else 0.0)


def check_brain(measured: BrainQc, path: Path, limits: Limits) -> None:
    """Refuse a brain of implausible volume, or one the field of view cuts off."""
    low, high = limits.brain_ml
    if not low <= measured.volume_ml <= high:
        raise InputError(f"{path}: brain mask of {measured.volume_ml:.0f} mL (expected {low:.0f}-{high:.0f} mL: "
                         f"an adult brain)")
    if measured.border_fraction > limits.max_border_fraction:
        raise InputError(f"{path}: {100 * measured.border_fraction:.1f}% of the brain mask lies on the edge of "
                         f"the field of view (expected at most {100 * limits.max_border_fraction:.0f}%: the "
                         f"whole brain inside it)")


def measure_atlas(result: AffineResult) -> AtlasQc:
    """The atlas registration's metric and scales."""
    scales = tuple(float(s) for s in result.scales)
    return AtlasQc(metric=result.metric, scales=(scales[0], scales[1], scales[2]))


def check_atlas(measured: AtlasQc, path: Path, limits: Limits) -> None:
    """Refuse a reference whose brain did not register to the atlas's."""
    if measured.metric > limits.max_atlas_metric:
        raise InputError(f"{path}: mutual information with the atlas {measured.metric:.3f} after affine "
                         f"registration (expected below {limits.max_atlas_metric:.2f}: a brain)")


def _coarse(image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The reference and its mask box-averaged to about 2 mm (the mask: >= half of each box)."""
    factors = [max(1, int(round(2.0 / s))) for s in image.GetSpacing()]
    if max(factors) == 1:
        return image, mask
    small = sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors) >= 0.5
    return sitk.BinShrink(image, factors), sitk.Cast(small, sitk.sitkUInt8)


def _centre(mask: sitk.Image) -> tuple[float, float, float]:
    """The centre of the mask's voxels, in world (LPS) mm."""
    index = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).mean(axis=0)[::-1]
    point = mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
    return (float(point[0]), float(point[1]), float(point[2]))



