"""The atlas a model's input grid is defined by, and the affine registration of a skull-stripped series to it.

The shipped atlas is nilearn's MNI152 2009a T1 template (skull-stripped) and its brain mask, placed on the
BraTS 240×240×155 1 mm grid in BraTS orientation (``seg_edge.synth.writer.brats_affine``) by
``tools/make_atlas.py``. It is **not SRI24**, the atlas BraTS volumes were registered to (SRI24 cannot be
shipped here): a site that has SRI24 passes its T1 and brain mask to ``load_atlas``.

``register_to_atlas`` finds the 12-parameter affine map from the atlas to a skull-stripped reference series
(Mattes mutual information on the atlas brain and a rim around it, three resolutions, started from the centres
of mass of the two brain masks). Convention (ITK's, as in ``registration``): the transform maps a point of the
atlas world (LPS mm) to the point of the reference series' world, so it is ``reference_from_atlas``, and
resampling the series through it puts the series on the atlas grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess.registration import (LPS_TO_RAS, Volume, _checked, _last_line, _threads,
                                              box_averaged, registration_method)

ATLAS_DIR = Path(__file__).resolve().parents[1] / "assets" / "atlas"
SHIPPED_IMAGE = ATLAS_DIR / "mni152_2009_t1.nii.gz"
SHIPPED_BRAIN = ATLAS_DIR / "mni152_2009_brain.nii.gz"
SHIPPED_NAME = "MNI152 2009a (nilearn) on the BraTS grid — not SRI24"
GRID_SHAPE = (240, 240, 155)  # the BraTS grid every atlas-space model reads (x, y, z voxels)
SPACING_MM = (0.9, 1.1)  # "1 mm": a voxel size outside this range is not the grid the models were trained on
COARSE_MM = 2.0  # both images are box-averaged to about this before registering (measured: see the docs)
MIN_BRAIN_ML = 500.0  # far below any adult brain: a mask this small is not a brain mask


@dataclass(frozen=True)
class Atlas:
    """An atlas: its T1 image (float32) and brain mask (uint8 0/1) on one 240×240×155 ~1 mm grid."""

    image: sitk.Image
    brain: sitk.Image
    name: str
    source: Path
    # the skull-stripped image and the metric's mask at COARSE_MM, made once: the registration runs on them
    coarse: tuple[sitk.Image, sitk.Image] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stripped = sitk.Mask(self.image, self.brain)
        brain = sitk.Cast(box_averaged(sitk.Cast(self.brain, sitk.sitkFloat32), COARSE_MM) >= 0.5, sitk.sitkUInt8)
        object.__setattr__(self, "coarse", (box_averaged(stripped, COARSE_MM), brain))

    @property
    def affine_ras(self) -> np.ndarray:
        """The grid's voxel → world map as a NIfTI/nibabel affine (4x4, RAS mm)."""
        return grid_affine_ras(self.image)


@dataclass(frozen=True, kw_only=True)
class AffineOptions:
    """How the affine registration to the atlas runs; the defaults were measured in docs/PREPROCESSING.md."""

    threads: int = 1  # > 1 is faster, reproducible to about 0.001 mm rather than bit for bit
    shrink_factors: tuple[int, ...] = (4, 2, 1)  # of the images box-averaged to COARSE_MM (2 mm): 8, 4, 2 mm
    smoothing_sigmas: tuple[float, ...] = (1.0, 0.5, 0.0)  # voxels of each level
    iterations: int = 150  # per level, at most
    histogram_bins: int = 32
    sampling_percentage: float = 0.2  # of the atlas brain and rim voxels at each level, drawn with ``seed``
    seed: int = 1
    learning_rate: float = 2.0  # at most this many mm per step at the start of each level
    min_step: float = 1e-3
    rim_mm: float = 6.0  # the metric is taken on the atlas brain grown by this much (its edge is the signal)
    start_deg: float = 12.0  # the trial rotations about each axis for the start (0: no trial)

    def __post_init__(self) -> None:
        checks = [
            (self.threads >= 1, f"threads {self.threads} (expected at least 1)"),
            (len(self.shrink_factors) >= 1 and all(s >= 1 for s in self.shrink_factors),
             f"shrink_factors {self.shrink_factors} (expected one or more integers >= 1)"),
            (len(self.smoothing_sigmas) == len(self.shrink_factors) and all(s >= 0 for s in self.smoothing_sigmas),
             f"smoothing_sigmas {self.smoothing_sigmas} (expected one sigma >= 0 per shrink factor)"),
            (self.iterations >= 1, f"iterations {self.iterations} (expected at least 1)"),
            (self.histogram_bins >= 4, f"histogram_bins {self.histogram_bins} (expected at least 4)"),
            (0.0 < self.sampling_percentage <= 1.0,
             f"sampling_percentage {self.sampling_percentage} (expected a fraction in (0, 1])"),
            (self.seed >= 1, f"seed {self.seed} (expected an integer >= 1: 0 is SimpleITK's wall clock)"),
            (self.learning_rate > 0 and self.min_step > 0,
             f"learning_rate {self.learning_rate}, min_step {self.min_step} (expected both > 0)"),
            (self.rim_mm >= 0, f"rim_mm {self.rim_mm} (expected >= 0)"),
            (0 <= self.start_deg <= 45, f"start_deg {self.start_deg} (expected 0–45)"),
        ]
        for ok, what in checks:
            if not ok:
                raise InputError(f"atlas registration option {what}")


@dataclass(frozen=True)
class AffineResult:
    """The affine map from the atlas world to the reference series' world (ITK's convention, LPS inside)."""

    transform: sitk.AffineTransform  # reference_from_atlas: an atlas point → the reference series' point
    matrix_lps: np.ndarray = field(repr=False)  # 4x4, LPS mm: atlas point → reference point
    metric: float  # Mattes mutual information at the end (negative; lower is better)
    iterations: int  # at the last level
    stop_condition: str
    seconds: float

    @property
    def matrix_ras(self) -> np.ndarray:
        """The same map in RAS mm (NIfTI's world space): atlas point → reference point."""
        return np.asarray(LPS_TO_RAS @ self.matrix_lps @ LPS_TO_RAS)

    @property
    def scales(self) -> np.ndarray:
        """The singular values of the linear part: how much larger the reference brain is along its axes."""
        return np.asarray(np.linalg.svd(self.matrix_lps[:3, :3], compute_uv=False))


def load_atlas(image: Path | None = None, brain: Path | None = None) -> Atlas:
    """The shipped MNI152 atlas (no arguments), or a site's own (e.g. SRI24): its T1 image and brain mask.

    Both files are checked: 3D, finite, on the 240×240×155 grid at about 1 mm, the mask on the image's grid
    and brain-sized. Any failure is a one-line InputError naming the file.
    """
    if (image is None) != (brain is None):
        given = image if image is not None else brain
        raise InputError(f"{given}: an atlas image needs its brain mask and a mask its image "
                         f"(expected both files, or neither for the shipped {SHIPPED_NAME})")
    name = SHIPPED_NAME if image is None else f"site atlas {Path(image).name}"
    image_path = Path(image) if image is not None else SHIPPED_IMAGE
    brain_path = Path(brain) if brain is not None else SHIPPED_BRAIN
    t1 = _checked_grid(Volume.read(image_path))
    mask = _checked_grid(Volume.read(brain_path))
    _same_grid(t1, mask, brain_path)
    values = sitk.GetArrayViewFromImage(mask)
    labels = np.unique(values)
    if not np.isin(labels, (0, 1)).all():
        raise InputError(f"{brain_path}: values {labels[:6].tolist()} (expected a brain mask of 0 and 1)")
    millilitres = float(np.count_nonzero(values)) * float(np.prod(mask.GetSpacing())) / 1000.0
    if millilitres < MIN_BRAIN_ML:
        raise InputError(f"{brain_path}: brain mask of {millilitres:.0f} mL (expected a brain, at least "
                         f"{MIN_BRAIN_ML:.0f} mL)")
    _checked(Volume(t1, str(image_path)))  # finite, not constant
    brain_image = sitk.Cast(mask, sitk.sitkUInt8)
    return Atlas(sitk.Cast(t1, sitk.sitkFloat32), brain_image, name, image_path)


def register_to_atlas(atlas: Atlas, brain_image: sitk.Image | Volume, *,
                      options: AffineOptions | None = None) -> AffineResult:
    """Register a skull-stripped series (voxels outside its brain are 0) to the atlas: 12-parameter affine.

    The atlas is the fixed image, so the result maps an atlas point to the series' point
    (``reference_from_atlas``). Both images are box-averaged to about 2 mm first; the start is the better of a
    few head poses (rotations of ``options.start_deg`` about each axis) centred on the brains' centres of mass.
    A series that cannot be registered (no overlap) is an InputError.
    """
    options = options or AffineOptions()
    moving = brain_image if isinstance(brain_image, Volume) else Volume(brain_image, "the reference series")
    moving_image = _checked(moving)
    start = time.perf_counter()
    fixed, fixed_brain = atlas.coarse
    moving_coarse = box_averaged(moving_image, COARSE_MM)
    method = registration_method(options, _rim(fixed_brain, options.rim_mm))
    method.SetInitialTransform(_start(fixed, fixed_brain, moving_coarse, options), inPlace=False)
    try:
        with _threads(options.threads):
            final = method.Execute(fixed, moving_coarse)
    except RuntimeError as exc:
        raise InputError(f"{moving.source}: could not be registered to the atlas {atlas.source} "
                         f"({_last_line(exc)}; expected a skull-stripped brain)") from exc
    transform = sitk.AffineTransform(sitk.CompositeTransform(final).GetNthTransform(0))
    return AffineResult(transform, affine_matrix_lps(transform), float(method.GetMetricValue()),
                        int(method.GetOptimizerIteration()), str(method.GetOptimizerStopConditionDescription()),
                        time.perf_counter() - start)


def affine_matrix_lps(transform: sitk.AffineTransform) -> np.ndarray:
    """x → A (x - c) + c + t as a 4x4 matrix (LPS mm)."""
    linear = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + np.asarray(transform.GetTranslation(), dtype=np.float64) - linear @ centre
    return matrix


def grid_affine_ras(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image's voxel → world map as a NIfTI affine (4x4, RAS mm)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return np.asarray(LPS_TO_RAS @ affine)


def _trial_angles(start_deg: float) -> list[tuple[float, float, float]]:
    """No rotation, then ±start_deg about each axis in turn (radians)."""
    angles: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
    if start_deg > 0:
        step = float(np.radians(start_deg))
        for axis in range(3):
            for sign in (-1.0, 1.0):
                turn = [0.0, 0.0, 0.0]
                turn[axis] = sign * step
                angles.append((turn[0], turn[1], turn[2]))
    return angles


def _start(fixed: sitk.Image, fixed_brain: sitk.Image, moving: sitk.Image,
           options: AffineOptions) -> sitk.AffineTransform:
    """The starting affine: centred on the atlas brain, shifted so the two brains' centres of mass meet, turned
    by whichever of a few rotations (none, ±start_deg about each axis) gives the best metric at 4x coarser.

    The masks' centres, not the intensities': a T1ce with a bright tumour and a T1 template weigh their voxels
    differently, the brain outlines do not. From no rotation alone, a head turned −15°, 12° and 15° about the
    three axes ended 10.7 mm off on average (measured); the trial costs seven metric evaluations at 8 mm."""
    moving_brain = sitk.Cast(moving > 0, sitk.sitkUInt8)
    centred = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed_brain, moving_brain, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))
    factor = options.shrink_factors[0]
    fixed_small, mask_small = sitk.BinShrink(fixed, [factor] * 3), sitk.Cast(
        sitk.BinShrink(sitk.Cast(fixed_brain, sitk.sitkFloat32), [factor] * 3) >= 0.5, sitk.sitkUInt8)
    moving_small = sitk.BinShrink(moving, [factor] * 3)
    trials = []
    for angle in _trial_angles(options.start_deg):
        candidate = sitk.Euler3DTransform(centred)
        candidate.SetRotation(*angle)
        probe = sitk.ImageRegistrationMethod()
        probe.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
        probe.SetMetricFixedMask(mask_small)
        probe.SetInterpolator(sitk.sitkLinear)
        probe.SetInitialTransform(candidate)
        with _threads(options.threads):
            trials.append((probe.MetricEvaluate(fixed_small, moving_small), angle))
    best = min(trials)[1]
    chosen = sitk.Euler3DTransform(centred)
    chosen.SetRotation(*best)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(chosen.GetCenter())
    affine.SetMatrix(chosen.GetMatrix())
    affine.SetTranslation(chosen.GetTranslation())
    return affine


def _rim(brain: sitk.Image, rim_mm: float) -> sitk.Image:
    if rim_mm <= 0:
        return brain
    radius = [max(1, int(round(rim_mm / s))) for s in brain.GetSpacing()]
    grown: sitk.Image = sitk.BinaryDilate(brain, radius, sitk.sitkBall)
    return grown


def _checked_grid(volume: Volume) -> sitk.Image:
    _finite_in_file(Path(volume.source))
    image = volume.image
    size = tuple(int(s) for s in image.GetSize())
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or size != GRID_SHAPE:
        raise InputError(f"{volume.source}: size {size} with {image.GetNumberOfComponentsPerPixel()} "
                         f"component(s) (expected a 3D scalar volume of {GRID_SHAPE} voxels, the BraTS grid)")
    spacing = tuple(round(float(s), 3) for s in image.GetSpacing())
    if not all(SPACING_MM[0] <= s <= SPACING_MM[1] for s in spacing):
        raise InputError(f"{volume.source}: voxel size {spacing} mm (expected about 1 mm: "
                         f"{SPACING_MM[0]}–{SPACING_MM[1]} along every axis)")
    values = sitk.GetArrayViewFromImage(image)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(f"{volume.source}: has {bad} NaN or infinite voxels (expected finite values)")
    return image


def _finite_in_file(path: Path) -> None:
    """NaN and infinite voxels of a NIfTI file, counted with nibabel: SimpleITK's NIfTI reader (2.5) turns
    them into 0 without a word (measured), so the image it returns cannot show them."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    data = np.asanyarray(nib.load(path).dataobj)  # type: ignore[attr-defined]  # a Nifti1Image has dataobj
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(f"{path}: has {bad} NaN or infinite voxels (expected finite values)")


def _same_grid(image: sitk.Image, mask: sitk.Image, mask_path: Path) -> None:
    close = (np.allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-3)
             and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-2)
             and np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4))
    if not close:
        raise InputError(f"{mask_path}: origin {tuple(round(o, 2) for o in mask.GetOrigin())}, spacing "
                         f"{tuple(round(s, 3) for s in mask.GetSpacing())} (expected the atlas image's grid: "
                         f"origin {tuple(round(o, 2) for o in image.GetOrigin())}, spacing "
                         f"{tuple(round(s, 3) for s in image.GetSpacing())})")
