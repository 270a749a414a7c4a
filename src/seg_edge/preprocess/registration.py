"""Rigid (6-DOF) co-registration of one MR volume to another with SimpleITK, and resampling onto the fixed grid.

Mattes mutual information (so the two volumes may have different contrasts), multi-resolution, initialised by
the centres of the two volumes (geometry or intensity moments). Sampling is random with a fixed seed. With one
thread (the default) the same inputs and options give the same transform, bit for bit; with more, ITK's metric
sums its threads' parts in a varying order and runs differ by about 0.001 mm (measured on a 64³ phantom).

Convention (ITK's): the transform maps a point of the *fixed* volume's world space to the *moving* volume's
world space; resampling the moving volume through it puts the moving volume on the fixed grid. SimpleITK's
world space is LPS (x to the patient's left, y to posterior, z to superior); ``RigidResult.matrix_lps`` is the
transform as a 4x4 matrix in LPS millimetres and ``RigidResult.matrix_ras`` the same map in RAS (NIfTI's and
nibabel's world space).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError

if TYPE_CHECKING:  # the atlas module builds its affine registration with this module's method
    from seg_edge.preprocess.atlas import AffineOptions

MIN_VOXELS_PER_AXIS = 4
# LPS ↔ RAS: x and y change sign (the map is its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, kw_only=True)
class RigidOptions:
    """How the rigid registration runs. Defaults suit brain MR at 1–3 mm on a few CPU cores."""

    threads: int = 1  # > 1 is faster, and reproducible to about 0.001 mm rather than bit for bit
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)  # in voxels of each level, one per shrink factor
    iterations: int = 200  # per level, at most
    histogram_bins: int = 50
    sampling_percentage: float = 0.25  # of the fixed volume's voxels, drawn at random with ``seed``
    seed: int = 1  # >= 1 (SimpleITK reads 0 as "seed from the wall clock")
    learning_rate: float = 1.0  # at most this many mm (or the rotation equivalent) per step
    min_step: float = 1e-4
    initialisation: Literal["moments", "geometry"] = "moments"
    # both volumes box-averaged to about this many mm per voxel before registering (None: their own grids).
    # ITK's pyramid smooths the full volumes at every level; on 256×256×176 heads that, not the metric, is most
    # of the time, and a 2 mm working grid keeps sub-millimetre accuracy (docs/PREPROCESSING.md)
    working_mm: float | None = None

    def __post_init__(self) -> None:
        _require(self.threads >= 1, f"threads {self.threads} (expected at least 1)")
        _require(len(self.shrink_factors) >= 1 and all(s >= 1 for s in self.shrink_factors),
                 f"shrink_factors {self.shrink_factors} (expected one or more integers >= 1)")
        _require(len(self.smoothing_sigmas) == len(self.shrink_factors)
                 and all(s >= 0 for s in self.smoothing_sigmas),
                 f"smoothing_sigmas {self.smoothing_sigmas} (expected one sigma >= 0 per shrink factor "
                 f"{self.shrink_factors})")
        _require(self.iterations >= 1, f"iterations {self.iterations} (expected at least 1)")
        _require(self.histogram_bins >= 4, f"histogram_bins {self.histogram_bins} (expected at least 4)")
        _require(0.0 < self.sampling_percentage <= 1.0,
                 f"sampling_percentage {self.sampling_percentage} (expected a fraction in (0, 1])")
        _require(self.seed >= 1, f"seed {self.seed} (expected an integer >= 1: 0 is SimpleITK's wall clock)")
        _require(self.learning_rate > 0 and self.min_step > 0,
                 f"learning_rate {self.learning_rate}, min_step {self.min_step} (expected both > 0)")
        _require(self.initialisation in ("moments", "geometry"),
                 f"initialisation '{self.initialisation}' (expected moments or geometry)")
        _require(self.working_mm is None or 0.0 < self.working_mm <= 8.0,
                 f"working_mm {self.working_mm} (expected None or a voxel size in (0, 8] mm)")


@dataclass(frozen=True)
class Volume:
    """One 3D scalar volume and where it came from (named in every error about it)."""

    image: sitk.Image
    source: str

    @classmethod
    def read(cls, path: Path) -> Volume:
        """Read ``path`` (NIfTI, NRRD, MHA, …) with SimpleITK; an unreadable file is an InputError."""
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot be read as an image ({_last_line(exc)})") from exc
        return cls(image, str(path))


@dataclass(frozen=True)
class RigidResult:
    """A rigid transform from the fixed volume's world space to the moving volume's (ITK's convention)."""

    transform: sitk.Euler3DTransform
    matrix_lps: np.ndarray = field(repr=False)  # 4x4, LPS mm: fixed point → moving point
    metric: float  # Mattes mutual information at the end (negative; lower is better)
    iterations: int  # at the last level
    stop_condition: str

    @property
    def matrix_ras(self) -> np.ndarray:
        """The same map as ``matrix_lps`` in RAS mm (NIfTI's world space): fixed point → moving point."""
        return np.asarray(LPS_TO_RAS @ self.matrix_lps @ LPS_TO_RAS)

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle about its axis, in degrees."""
        cosine = (np.trace(self.matrix_lps[:3, :3]) - 1.0) / 2.0
        return math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0))))


def register_rigid(fixed: Volume, moving: Volume, *, options: RigidOptions | None = None) -> RigidResult:
    """Register ``moving`` to ``fixed`` rigidly (6 degrees of freedom) by Mattes mutual information.

    Both volumes are checked first (3D, scalar, finite, not constant, at least 4 voxels along each axis): a
    volume that fails is an InputError naming its source.
    """
    options = options or RigidOptions()
    fixed_image, moving_image = _checked(fixed), _checked(moving)
    if options.working_mm is not None:
        fixed_image, moving_image = (box_averaged(i, options.working_mm) for i in (fixed_image, moving_image))
    initial = sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS if options.initialisation == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = registration_method(options)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        with _threads(options.threads):
            final = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        raise InputError(f"{moving.source}: could not be registered to {fixed.source} "
                         f"({_last_line(exc)}; expected two volumes of one head that "
                         f"overlap)") from exc
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetNthTransform(0))
    return RigidResult(transform, _matrix(transform), float(method.GetMetricValue()),
                       int(method.GetOptimizerIteration()), str(method.GetOptimizerStopConditionDescription()))


def resample_to_fixed(moving: Volume, fixed: Volume, transform: sitk.Transform, *, label: bool = False,
                      default: float = 0.0) -> sitk.Image:
    """``moving`` on ``fixed``'s grid through ``transform`` (fixed point → moving point).

    Images are interpolated linearly into float32; labels (``label=True``) by nearest neighbour in their own
    integer pixel type. Points outside the moving volume get ``default``.
    """
    image = _checked(moving, constant_ok=label)
    if label:
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            raise InputError(f"{moving.source}: a label volume of pixel type {image.GetPixelIDTypeAsString()} "
                             f"(expected an integer type)")
        return sitk.Resample(image, fixed.image, transform, sitk.sitkNearestNeighbor, default,
                             image.GetPixelID())
    return sitk.Resample(image, fixed.image, transform, sitk.sitkLinear, default, sitk.sitkFloat32)


def box_averaged(image: sitk.Image, voxel_mm: float) -> sitk.Image:
    """``image`` averaged over whole boxes of voxels to about ``voxel_mm`` along each axis (an axis already that
    coarse is left alone). ITK's BinShrink keeps the image where it was in the world."""
    factors = [max(1, int(round(voxel_mm / s))) for s in image.GetSpacing()]
    if max(factors) == 1:
        return image
    averaged: sitk.Image = sitk.BinShrink(image, factors)
    return averaged


def registration_method(options: RigidOptions | AffineOptions, mask: sitk.Image | None = None
                        ) -> sitk.ImageRegistrationMethod:
    """Mattes MI, seeded random sampling, regular-step gradient descent, the multi-resolution levels of
    ``options``; ``mask``: the metric only over it (on the fixed image's grid)."""
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(options.threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(options.sampling_percentage, options.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=options.learning_rate, minStep=options.min_step, numberOfIterations=options.iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinkFactors=list(options.shrink_factors))
    method.SetSmoothingSigmasPerLevel(smoothingSigmas=list(options.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """SimpleITK's global thread count set to ``count`` for the block: the metric's own threads follow the
    global default, not the registration method's setting. Restored afterwards."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _checked(volume: Volume, *, constant_ok: bool = False) -> sitk.Image:
    """``volume``'s image as float32 (labels: as they are) after the checks every input gets."""
    image = volume.image
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{volume.source}: a {image.GetDimension()}D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel "
                         f"(expected a 3D scalar volume)")
    size = tuple(int(s) for s in image.GetSize())
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{volume.source}: size {size} voxels (expected at least {MIN_VOXELS_PER_AXIS} "
                         f"along every axis: a 3D volume, not a slice)")
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        raise InputError(f"{volume.source}: has {int(np.size(values) - np.isfinite(values).sum())} NaN or "
                         f"infinite voxels (expected finite intensities)")
    low, high = float(values.min()), float(values.max())
    if low == high and not constant_ok:
        raise InputError(f"{volume.source}: every voxel is {low:g} (expected an image with contrast)")
    return image if constant_ok else sitk.Cast(image, sitk.sitkFloat32)


def _matrix(transform: sitk.Euler3DTransform) -> np.ndarray:
    """x → R (x - c) + c + t as a 4x4 matrix (LPS mm)."""
    rotation = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    translation = np.asarray(transform.GetTranslation(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + translation - rotation @ centre
    return matrix


def _last_line(exc: BaseException) -> str:
    """The last line of ITK's message (its first lines are the C++ source location)."""
    lines = str(exc).strip().splitlines()
    return lines[-1].strip() if lines else type(exc).__name__


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InputError(f"registration option {what}")
