"""A NIfTI series' voxels and RAS affine as DICOM sees them: slices, rows, columns and patient (LPS) geometry.

DICOM stores an image plane by ImageOrientationPatient (the direction along a row, then down a column, in LPS)
and each slice by ImagePositionPatient; readers stack slices by their position along the normal
``row × column``. The voxels are only reordered here (axes permuted and reversed), never resampled, so the
geometry written is the NIfTI's exactly: a tilted FLAIR stays tilted, a sagittal T1 sagittal. The in-plane axes
are oriented as scanners display them (axial: columns to the patient's left, rows to the back; sagittal:
columns to the back, rows downwards; coronal: columns to the left, rows downwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_edge.errors import InputError

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
# per plane (named by the patient axis its slices are stacked along): where columns and rows should run, in LPS
_DISPLAY = {0: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # sagittal
            1: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal
            2: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))}  # axial
PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}
SHEAR_TOLERANCE = 1e-4  # sine of the angle between the slice axis and the plane's normal


@dataclass(frozen=True)
class Stack:
    """Slices in DICOM order: ``pixels[s, r, c]`` and the LPS map of voxel ``(c, r, s)``; slices ascend along
    the normal."""

    pixels: np.ndarray
    lps: np.ndarray

    @property
    def orientation(self) -> list[float]:
        """ImageOrientationPatient: unit row then column direction (LPS)."""
        return [*(self.lps[:3, 0] / np.linalg.norm(self.lps[:3, 0])),
                *(self.lps[:3, 1] / np.linalg.norm(self.lps[:3, 1]))]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Row spacing (between rows), column spacing, slice spacing, in mm."""
        row, col, sl = (float(np.linalg.norm(self.lps[:3, n])) for n in (1, 0, 2))
        return row, col, sl

    def position(self, s: int) -> list[float]:
        """ImagePositionPatient of slice ``s``: the centre of its first transmitted pixel (LPS mm)."""
        return [float(v) for v in self.lps[:3, 3] + s * self.lps[:3, 2]]

    @property
    def plane(self) -> str:
        """The plane the slices lie in: the patient axis nearest the normal."""
        normal = np.cross(self.lps[:3, 0], self.lps[:3, 1])
        return PLANES[int(np.argmax(np.abs(normal)))]


def to_stack(data: np.ndarray, affine_ras: np.ndarray, slice_axis: int, source: Path) -> Stack:
    """Reorder ``data`` (a NIfTI's voxel array, ``affine_ras`` its affine) into DICOM slices along its axis
    ``slice_axis``. Refuses an affine whose slice axis is not perpendicular to its slices (DICOM has no shear)."""
    lps = LPS @ affine_ras
    axes = [a for a in range(3) if a != slice_axis]
    units = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    normal_axis = int(np.argmax(np.abs(units[:, slice_axis])))
    want_col, want_row = (np.array(v) for v in _DISPLAY[normal_axis])
    col_axis = max(axes, key=lambda a: abs(float(units[:, a] @ want_col)))
    row_axis = next(a for a in axes if a != col_axis)
    signs = {col_axis: np.sign(units[:, col_axis] @ want_col) or 1.0,
             row_axis: np.sign(units[:, row_axis] @ want_row) or 1.0}
    normal = np.cross(signs[col_axis] * units[:, col_axis], signs[row_axis] * units[:, row_axis])
    sine = float(np.linalg.norm(np.cross(normal, units[:, slice_axis])))
    if sine > SHEAR_TOLERANCE or abs(float(units[:, col_axis] @ units[:, row_axis])) > SHEAR_TOLERANCE:
        raise InputError(f"{source}: affine {np.round(affine_ras, 4).tolist()} is sheared (sine {sine:.2g} between "
                         f"the slice axis and the slices' normal; expected perpendicular axes, as DICOM stores)")
    signs[slice_axis] = np.sign(normal @ units[:, slice_axis]) or 1.0
    order = (col_axis, row_axis, slice_axis)
    voxel_map = np.zeros((4, 4))  # (c, r, s) -> (i, j, k)
    voxel_map[3, 3] = 1.0
    flipped = data
    for m, axis in enumerate(order):
        voxel_map[axis, m] = signs[axis]
        if signs[axis] < 0:
            voxel_map[axis, 3] = data.shape[axis] - 1
            flipped = np.flip(flipped, axis=axis)
    pixels = np.ascontiguousarray(np.transpose(flipped, (slice_axis, row_axis, col_axis)))
    return Stack(pixels=pixels, lps=lps @ voxel_map)


def slice_axis_for(affine_ras: np.ndarray, plane: str, source: Path) -> int:
    """The NIfTI axis nearest the normal of ``plane`` (axial, sagittal, coronal): the one slices are stacked
    along."""
    patient = {v: k for k, v in PLANES.items()}
    if plane not in patient:
        raise InputError(f"{source}: plane {plane!r} (expected one of {', '.join(sorted(patient))})")
    units = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    return int(np.argmax(np.abs(units[patient[plane]])))
