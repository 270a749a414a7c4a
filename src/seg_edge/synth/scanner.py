"""The scanner side of a synthetic raw study: head pose, per-series motion, native grids and acquisition.

Every matrix here is a 4x4 map in RAS millimetres (NIfTI's and nibabel's world space). A series' true
``world_from_atlas`` maps a point of the atlas grid's world (where the phantom was drawn) to the same anatomical
point in the scanner's world as that series saw it: the head's pose in the scanner, then the patient's motion
before that series. Acquiring a series reads the head at ``inverse(world_from_atlas)`` of each of its voxels'
world points, averaged over the slice's thickness for 2D series, then applies a smooth coil bias, Rician
noise and an arbitrary scanner scale, and stores int16.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg_edge.synth.head import Head

POSE_ROTATION_DEG = 10.0  # per axis, head in the scanner
POSE_SHIFT_MM = 15.0  # per axis, head centre from the isocentre
MOTION_ROTATION_DEG = 6.0  # total angle between the pose and one series
MOTION_SHIFT_MM = 8.0  # total length
_AXES = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


@dataclass(frozen=True, kw_only=True)
class SeriesSpec:
    """How one series is acquired at full size (``scale`` 1)."""

    modality: str
    plane: str  # the slices' plane: sagittal, axial
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm; the third is the slice thickness of a 2D series
    codes: str  # direction of increasing i, j, k (nibabel's axis codes) before any tilt
    tilt_deg: tuple[float, float] = (0.0, 0.0)  # range of the tilt about left-right (oblique axial)
    lift_mm: float = 0.0  # field of view centred this far above the brain's box's centre (to take in the vertex)
    two_d: bool = False  # thick slices: the signal is averaged over each slice's thickness

    def scaled(self, scale: float) -> SeriesSpec:
        """The same field of view with voxels ``1 / scale`` times larger."""
        shape = tuple(max(4, round(n * scale)) for n in self.shape)
        spacing = tuple(s * n / m for s, n, m in zip(self.spacing, self.shape, shape))
        return SeriesSpec(modality=self.modality, plane=self.plane, shape=shape, spacing=spacing,  # type: ignore[arg-type]
                          codes=self.codes, tilt_deg=self.tilt_deg, lift_mm=self.lift_mm, two_d=self.two_d)


# A clinical glioma protocol as dcm2niix writes it: each series on its own grid and field of view.
PROTOCOL = (
    SeriesSpec(modality="t1", plane="sagittal", shape=(176, 256, 256), spacing=(1.0, 1.0, 1.0), codes="RPI",
               lift_mm=10.0),
    SeriesSpec(modality="t1ce", plane="axial", shape=(256, 256, 192), spacing=(0.9375, 0.9375, 1.0),
               codes="LAS"),
    SeriesSpec(modality="t2", plane="axial", shape=(256, 256, 44), spacing=(0.9, 0.9, 4.0), codes="LAS",
               two_d=True),
    SeriesSpec(modality="flair", plane="axial", shape=(266, 266, 36), spacing=(0.9, 0.9, 5.0), codes="LAS",
               tilt_deg=(10.0, 20.0), two_d=True),
)


def euler_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` for angles (degrees) about the RAS x, y and z axes."""
    rx, ry, rz = (math.radians(float(a)) for a in angles_deg)
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return z @ y @ x


def rigid(rotation: np.ndarray, centre: np.ndarray, destination: np.ndarray) -> np.ndarray:
    """4x4 map ``p ↦ rotation (p - centre) + destination``."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = destination - rotation @ centre
    return matrix


def limited(rng: np.random.Generator, size: float) -> np.ndarray:
    """A random 3-vector, each component within ``size``, its length at most ``size``."""
    vector = rng.uniform(-size, size, 3)
    length = float(np.linalg.norm(vector))
    return vector * (size / length) if length > size else vector


def series_affine(spec: SeriesSpec, centre: np.ndarray, tilt_deg: float) -> np.ndarray:
    """The series' voxel → world (RAS) affine, its grid centred on ``centre``, tilted about left-right."""
    directions = np.array([_AXES[c] for c in spec.codes], dtype=float).T
    directions = euler_matrix(np.array([tilt_deg, 0.0, 0.0])) @ directions
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spec.spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(spec.shape) - 1) / 2.0)
    return affine


@dataclass(frozen=True)
class Acquisition:
    """One acquired series: int16 voxels, its affine (RAS) and the scanner settings drawn for it."""

    data: np.ndarray
    affine: np.ndarray
    scale: float  # scanner units per unit of brain median
    noise: float  # Rician sigma relative to the brain median
    bias: tuple[float, float]  # min and max of the multiplicative bias field


def box_through(low: np.ndarray, high: np.ndarray, voxel_map: np.ndarray, shape: tuple[int, ...],
                margin: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The voxels [low, high) of an output grid whose ``voxel_map`` (output voxel → input voxel) lands in the input
    box [low, high), with ``margin`` voxels to spare, clipped to the grid (empty: high <= low somewhere)."""
    corners = np.array([[*point, 1.0] for point in itertools.product(*zip(low - 1.0, high))])
    where = (np.linalg.inv(voxel_map) @ corners.T)[:3]
    out_low = np.maximum(np.floor(where.min(axis=1) - margin).astype(int), 0)
    out_high = np.minimum(np.ceil(where.max(axis=1) + margin).astype(int) + 1, np.asarray(shape))
    return out_low, out_high


def resample_box(volume: np.ndarray, voxel_map: np.ndarray, shape: tuple[int, ...],
                 box: tuple[np.ndarray, np.ndarray], within: float = 0.0) -> np.ndarray:
    """``volume`` read linearly (0 outside it) at ``voxel_map`` (output voxel + ``within`` along k → input voxel)
    of the output voxels in ``box``; the rest of the output is 0 (the caller knows the volume is 0 there)."""
    out = np.zeros(shape, dtype=np.float32)
    low, high = box
    if (high <= low).any():
        return out
    shifted = voxel_map @ _translation(np.asarray(low, dtype=float) + np.array([0.0, 0.0, within]))
    out[tuple(slice(int(a), int(b)) for a, b in zip(low, high))] = ndimage.affine_transform(
        volume, shifted[:3, :3], shifted[:3, 3], output_shape=tuple(int(n) for n in high - low), order=1,
        cval=0.0, output=np.float32)
    return out


def _translation(voxels: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = voxels
    return matrix


def smooth_bias(shape: tuple[int, ...], rng: np.random.Generator, spread: float) -> np.ndarray:
    """A smooth multiplicative field (a coil's receive profile) ``exp(spread * f)``, ``f`` of unit standard
    deviation varying over the whole field of view: a sum of four products of random 1D cosine curves, so it
    costs one matrix product instead of a 3D interpolation."""
    def curve(n: int) -> np.ndarray:
        u = np.linspace(0.0, 1.0, n)
        terms = [rng.normal() * np.cos(np.pi * m * u + rng.uniform(0, 2 * np.pi)) for m in (1, 2)]
        return np.asarray(1.0 + 0.5 * np.sum(terms, axis=0))

    rank = 4
    x, y, z = ([curve(n) for _ in range(rank)] for n in shape)
    plane = np.stack([np.outer(x[k], y[k]).ravel() for k in range(rank)], axis=1)
    field = (plane @ np.stack(z)).reshape(shape).astype(np.float32)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    # the sum's tails sit in the field of view's corners: clipped at 2.5 standard deviations so that the
    # bias stays within exp(+-2.5 spread) (0.83-1.19 at 0.07) wherever the head is
    return np.exp(np.float32(spread) * np.clip(field, -2.5, 2.5))


def acquire(head: Head, channel: int, head_affine: np.ndarray, spec: SeriesSpec, affine: np.ndarray,
            world_from_atlas: np.ndarray, rng: np.random.Generator, *, bias: float) -> Acquisition:
    """Read contrast ``channel`` of ``head`` (voxel → atlas world by ``head_affine``) onto the series' grid."""
    voxel_map = np.linalg.inv(head_affine) @ np.linalg.inv(world_from_atlas) @ affine
    head_mm = float(np.linalg.norm(head_affine[:3, 0]))
    # a box slice profile, sampled every 2 mm (or every head voxel, if coarser) across the slice's thickness
    samples = math.ceil(spec.spacing[2] / max(2.0, head_mm)) if spec.two_d else 1
    box = box_through(np.zeros(3), np.asarray(head.images.shape[1:]), voxel_map, spec.shape)
    signal = np.zeros(spec.shape, dtype=np.float32)
    for s in range(samples):
        signal += resample_box(head.images[channel], voxel_map, spec.shape, box, (s + 0.5) / samples - 0.5)
    signal /= samples
    field = smooth_bias(spec.shape, rng, bias)
    noise = float(rng.uniform(0.02, 0.04))
    real = signal * field + np.float32(noise) * rng.standard_normal(spec.shape, dtype=np.float32)
    imaginary = np.float32(noise) * rng.standard_normal(spec.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)  # Rician, as a magnitude image is
    scale = float(rng.uniform(250.0, 1500.0))
    data = np.clip(np.rint(magnitude * scale), 0, 32767).astype(np.int16)
    return Acquisition(data=data, affine=affine, scale=scale, noise=noise,
                       bias=(float(field.min()), float(field.max())))
