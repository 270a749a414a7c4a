"""Linear transforms between the world spaces of the series and the atlas: files, matrices and composition.

Conventions (one for the whole preprocessing package):

* A transform named ``X_from_Y`` maps a point of space Y to the same anatomical point in space X. ITK's
  resampling transform, the one that puts image "moving" on grid "fixed", is ``moving_from_fixed``; so is
  everything ``registration`` and ``atlas`` return.
* SimpleITK works in LPS millimetres (x to the patient's left, y to posterior, z up). NIfTI affines and
  nibabel are RAS (x to the right, y to anterior). ``lps_to_ras``/``ras_to_lps`` convert a 4x4 point map
  between the two (flip x and y on both sides).
* Files are ITK transform files (``.tfm``, text: ``#Insight Transform File V1.0``), always written as one
  ``AffineTransform_double_3_3``: 12 parameters (the 3x3 matrix row by row, then the translation) and 3 fixed
  parameters (the centre), all in LPS mm. 3D Slicer and ITK-SNAP read this file with ITK's own reader. Slicer
  loads it as the transform "from parent" (parent point → child point, the resampling direction) and converts
  it to RAS itself: to see series Y in the space of X, load ``Y_from_X.tfm`` and put Y under it (see
  docs/PREPROCESSING.md, "Transforms").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess.registration import LPS_TO_RAS, _last_line

TFM_SUFFIXES = (".tfm", ".txt")  # what ITK's reader and writer take as its text format


def matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 matrix (LPS mm) of a linear transform: ``point_out = M @ [point_in, 1]``.

    Read by mapping the origin and the three unit points, so it holds for any ITK linear transform (Euler,
    versor, similarity, affine, translation, or a composite of them); a non-linear one is an InputError."""
    if not transform.IsLinear():
        raise InputError(f"transform {transform.GetName()} (expected a linear transform: rigid or affine)")
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.asarray(transform.TransformPoint(unit), dtype=np.float64) - origin
    matrix[:3, 3] = origin
    return matrix


def from_matrix_lps(matrix: np.ndarray, *, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
                    ) -> sitk.AffineTransform:
    """An ITK affine transform for a 4x4 point map in LPS mm (``centre`` only changes how it is written)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)) or not np.isfinite(matrix).all():
        raise InputError(f"matrix {np.round(matrix, 4).tolist()} (expected a finite 4x4 affine with last row "
                         f"0 0 0 1)")
    linear = matrix[:3, :3]
    c = np.asarray(centre, dtype=np.float64)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in c))
    transform.SetMatrix(tuple(float(v) for v in linear.ravel()))
    # x → A (x - c) + c + t = A x + (c + t - A c): t = offset - c + A c
    transform.SetTranslation(tuple(float(v) for v in matrix[:3, 3] - c + linear @ c))
    return transform


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 point map in LPS mm as the same map in RAS mm (and back: the change is its own inverse)."""
    return np.asarray(LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64) @ LPS_TO_RAS)


ras_to_lps = lps_to_ras


def compose(*transforms: sitk.Transform) -> sitk.AffineTransform:
    """One affine for a chain of linear transforms, applied right to left as written:
    ``compose(series_from_reference, reference_from_atlas)`` is ``series_from_atlas``.

    The centre of the result is that of the last (innermost) transform, so a chain ending in an atlas
    registration is centred on the atlas brain as that registration was."""
    if not transforms:
        raise InputError("compose() of no transforms (expected at least one)")
    product = np.eye(4)
    for transform in transforms:
        product = product @ matrix_lps(transform)
    centre = _centre(transforms[-1])
    return from_matrix_lps(product, centre=centre)


def invert(transform: sitk.Transform) -> sitk.AffineTransform:
    """The inverse of a linear transform, as an affine: ``invert(X_from_Y)`` is ``Y_from_X``."""
    return from_matrix_lps(np.linalg.inv(matrix_lps(transform)))


def write_transform(transform: sitk.Transform, path: Path) -> Path:
    """Write a linear transform as an ITK ``.tfm`` (one AffineTransform_double_3_3, LPS mm) atomically.

    The file holds the same point map as ``transform`` (as ITK reads it: the resampling direction,
    fixed point → moving point). A suffix other than .tfm/.txt, or a folder that cannot be written, is an
    InputError."""
    path = Path(path)
    if path.suffix.lower() not in TFM_SUFFIXES:
        raise InputError(f"{path}: suffix '{path.suffix}' (expected {' or '.join(TFM_SUFFIXES)}, ITK's text "
                         f"transform format)")
    affine = from_matrix_lps(matrix_lps(transform), centre=_centre(transform))
    # ITK picks the format from the name's suffix: the temporary file keeps it
    tmp = ""
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        sitk.WriteTransform(affine, tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot be written ({_last_line(exc)})") from exc
    return path


def read_transform(path: Path) -> sitk.Transform:
    """Read an ITK transform file (``.tfm``/``.txt``/``.mat``/``.h5``): one linear transform, as ITK stores it
    (fixed point → moving point, LPS mm). An unreadable, missing or non-linear one is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such transform file (expected an ITK .tfm)")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as an ITK transform ({_last_line(exc)})") from exc
    if transform.GetDimension() != 3 or not transform.IsLinear():
        raise InputError(f"{path}: a {transform.GetDimension()}D {transform.GetName()} (expected a 3D linear "
                         f"transform)")
    if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
        return compose(transform)
    linear: sitk.Transform = transform
    return linear


def _centre(transform: sitk.Transform) -> tuple[float, float, float]:
    """The fixed parameters of a centred transform (its centre of rotation), else the origin."""
    fixed = tuple(float(v) for v in transform.GetFixedParameters())
    if len(fixed) >= 3 and transform.GetName() != "CompositeTransform":  # Euler's 4th is its angle-order flag
        return (fixed[0], fixed[1], fixed[2])
    return (0.0, 0.0, 0.0)
