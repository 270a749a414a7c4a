"""Reading a study's raw scanner series (one NIfTI per named modality) and refusing what cannot be a head series.

Read with SimpleITK, so every geometry here is in SimpleITK's world space, LPS millimetres (x to the patient's
left, y to posterior, z to superior); NIfTI's RAS affines are converted by SimpleITK's reader (x and y negated).
The modalities come named by the caller: a file is never guessed to be one sequence or another.

Each refusal is an InputError naming the file, what was found and what was expected:
a missing modality, an unreadable file, a 4D or vector image, NaN/inf voxels, an all-zero or constant image,
a 1-slice series, a localiser (a few slices, or a slab much thinner than a head), a field of view too small
to hold a brain, and a field of view wildly different from the reference series'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess.registration import Volume

# A localiser (scout) has 1-3 slices per plane; a whole-head series has tens (2D, 4-6 mm) to hundreds (3D).
LOCALISER_MAX_SLICES = 5
# An adult brain is about 140 mm left-right, 170 mm front-back and 120 mm tall (the smallest of the three,
# with the brainstem cut): a series thinner than 80 mm along any axis cannot hold it; it is a slab or a
# localiser, whatever its slice count.
MIN_SLAB_MM = 80.0
# The two larger sides of the field of view must each hold a brain's smaller in-plane size (~140 mm)
# with room to spare below it; 100 mm is a zoomed, partial view (an orbit, a pituitary series).
MIN_IN_PLANE_MM = 100.0
# Head fields of view on clinical scanners run from ~180 mm (a 2D axial) to ~260 mm (a sagittal 3D):
# a factor of 1.45 between the extremes. A factor over 1.6 between a series' largest side and the
# reference's is a body or spine field of view, or a zoomed one: not the same kind of head series.
MAX_FOV_RATIO = 1.6


@dataclass(frozen=True)
class Series:
    """One raw series as read: ``image`` float32 on its own grid (LPS world), ``path`` named in every error."""

    modality: str
    path: Path
    image: sitk.Image

    @property
    def volume(self) -> Volume:
        """The series as the registration module's Volume (its source is the file's path)."""
        return Volume(self.image, str(self.path))

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """The field of view along the grid's three axes (voxels × spacing), in mm."""
        x, y, z = (float(n) * float(s) for n, s in zip(self.image.GetSize(), self.image.GetSpacing()))
        return (x, y, z)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's size in voxels, in NIfTI's (i, j, k) order (SimpleITK's index order)."""
        i, j, k = (int(n) for n in self.image.GetSize())
        return (i, j, k)


def read_study(files: dict[str, Path], order: tuple[str, ...], *, reference: str) -> dict[str, Series]:
    """Read and check the series named in ``order`` (``reference`` among them); the reference first.

    Every series is checked alone (readable, 3D, finite, not blank, not a slice or localiser, a field of
    view that holds a brain), then against the reference (field of view of the same kind)."""
    _check_names(files, order, reference)
    series = {m: read_series(m, Path(files[m])) for m in (reference, *[m for m in order if m != reference])}
    for modality, one in series.items():
        if modality != reference:
            check_fov_against(one, series[reference])
    return series


def read_series(modality: str, path: Path) -> Series:
    """Read one raw series and check it alone; an InputError names ``path`` and what was wrong."""
    if not path.is_file():
        raise InputError(f"{path}: the {modality} series does not exist (expected a NIfTI file)")
    _require_finite_nifti(path)
    image = Volume.read(path).image
    size = tuple(int(n) for n in image.GetSize())
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}D image of size {size} (expected one 3D {modality} "
                         f"series; split a 4D file into its volumes and name the one to use)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         f"({image.GetPixelIDTypeAsString()}; expected a scalar {modality} MR series)")
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(f"{path}: {int(finite.size - np.count_nonzero(finite))} NaN or infinite voxels "
                         f"(expected finite intensities)")
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise InputError(f"{path}: every voxel is {low:g} (expected an MR image of a head)")
    series = Series(modality, path, image)
    _check_extent(series)
    return series


def check_fov_against(series: Series, reference: Series) -> None:
    """Refuse a series whose largest field-of-view side is over MAX_FOV_RATIO times the reference's, or
    under 1/MAX_FOV_RATIO of it (sides compared, not axes: the two may be sagittal and axial)."""
    mine, theirs = max(series.extent_mm), max(reference.extent_mm)
    ratio = mine / theirs
    if ratio > MAX_FOV_RATIO or ratio < 1.0 / MAX_FOV_RATIO:
        raise InputError(f"{series.path}: field of view {_mm(series.extent_mm)} mm, largest side {mine:.0f} mm "
                         f"against {theirs:.0f} mm in the reference {reference.path.name} (ratio {ratio:.2f}; "
                         f"expected within {1 / MAX_FOV_RATIO:.2f}-{MAX_FOV_RATIO:.2f}: series of one head)")


def _check_names(files: dict[str, Path], order: tuple[str, ...], reference: str) -> None:
    if reference not in order:
        raise InputError(f"reference series '{reference}' is not among the modalities {', '.join(order)} "
                         f"(expected one of them)")
    missing = [m for m in order if m not in files]
    if missing:
        given = ", ".join(f"{m}={Path(p).name}" for m, p in files.items()) or "none"
        raise InputError(f"{_folder(files)}: no {' or '.join(missing)} series among the files given ({given}; "
                         f"expected one file for each of {', '.join(order)})")
    seen: dict[Path, str] = {}
    for modality in order:
        path = Path(files[modality]).resolve()
        if path in seen:
            raise InputError(f"{files[modality]}: given as both {seen[path]} and {modality} "
                             f"(expected one file per modality)")
        seen[path] = modality


def _check_extent(series: Series) -> None:
    size, extent = series.shape, series.extent_mm
    fewest = min(size)
    if fewest == 1:
        raise InputError(f"{series.path}: a single slice (size {size} voxels; expected a 3D {series.modality} "
                         f"series covering the head)")
    if fewest <= LOCALISER_MAX_SLICES:
        raise InputError(f"{series.path}: {fewest} slices (size {size}), a localiser (expected more than "
                         f"{LOCALISER_MAX_SLICES} slices covering the head)")
    if min(extent) < MIN_SLAB_MM:
        raise InputError(f"{series.path}: field of view {_mm(extent)} mm, a slab {min(extent):.0f} mm thick "
                         f"(expected at least {MIN_SLAB_MM:.0f} mm along every axis: a whole head)")
    in_plane = sorted(extent)[1]
    if in_plane < MIN_IN_PLANE_MM:
        raise InputError(f"{series.path}: field of view {_mm(extent)} mm (expected at least "
                         f"{MIN_IN_PLANE_MM:.0f} mm along two axes to hold a brain)")


def _require_finite_nifti(path: Path) -> None:
    """NaN and infinite voxels of a NIfTI file, counted with nibabel: SimpleITK's NIfTI reader (2.5) turns them
    into 0 without a word (measured), so the image it returns cannot show them."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    try:
        data = np.asanyarray(nib.load(path).dataobj)  # type: ignore[attr-defined]  # a Nifti1Image has dataobj
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as NIfTI ({exc}; expected a NIfTI file)") from exc
    if data.dtype.kind in "fc":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(f"{path}: {bad} NaN or infinite voxels (expected finite intensities)")


def _folder(files: dict[str, Path]) -> str:
    parents = {Path(p).parent for p in files.values()}
    return str(parents.pop()) if len(parents) == 1 else "study"


def _mm(extent: tuple[float, ...]) -> str:
    return "×".join(f"{e:.0f}" for e in extent)
