"""A head around the phantom's brain: CSF, skull, scalp, face and neck, for synthetic raw studies.

The brain (four contrasts, labels, mask) is the MNI152 phantom on the BraTS grid; this module pads that grid
in height so the skull's top and a neck fit, and fills the rest with the tissues a skull-strip model expects
to see around a brain: an extra-axial CSF gap, a skull of two cortical tables (dark on every sequence) around
fatty marrow (bright on T1), muscle (thick at the temples), subcutaneous fat (bright on T1/T1ce, bright-ish on
T2, intermediate on FLAIR) and skin; below the brain a face-and-neck block with two eyes and a spinal canal.
Every thickness varies smoothly over the head and the soft tissues carry texture, so the layers are not three
clean shells. Intensities are relative to the brain's median on each contrast (the scanner scales them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg_edge.synth.phantom import _smooth_noise

PAD_BELOW_MM = 70.0  # face and neck under the brain, which the phantom cuts at 148 mm height
PAD_ABOVE_MM = 30.0  # CSF, skull and scalp over the vertex
COARSE_MM = 2.0  # distances and layer boundaries are computed this finely, then interpolated
AIR, CSF, TABLE, MARROW, MUSCLE, FAT, SKIN, EYE, CORD = range(9)
# Mean intensity per head tissue relative to the brain's median; columns FLAIR, T1, T1ce, T2.
HEAD_MEANS = np.array([
    [0.00, 0.00, 0.00, 0.00],  # air
    [0.25, 0.30, 0.34, 1.90],  # extra-axial CSF (as the phantom's)
    [0.04, 0.05, 0.05, 0.04],  # cortical bone: no signal
    [0.70, 1.15, 1.10, 0.85],  # fatty marrow of the diploë
    [0.45, 0.50, 0.58, 0.42],  # muscle, galea
    [0.80, 1.45, 1.40, 1.15],  # subcutaneous and orbital fat
    [0.60, 0.75, 0.85, 0.70],  # skin
    [0.12, 0.22, 0.22, 2.00],  # vitreous of the eye: fluid
    [0.87, 1.15, 1.10, 0.80],  # spinal cord: like white matter
], dtype=np.float32)
# (low, high) thickness in mm of CSF gap, inner table, diploë, outer table, galea/muscle, fat, skin
THICKNESS_MM = ((1.2, 3.5), (0.8, 1.8), (1.0, 5.0), (0.8, 1.8), (0.8, 2.5), (2.0, 6.0), (1.0, 2.0))


@dataclass(frozen=True)
class Head:
    """Head images (4, X', Y', Z') float32 in FLAIR, T1, T1ce, T2 order on a box of the brain grid's voxels.

    Head voxel ``v`` is the brain grid's voxel ``v + offset`` (same voxel size and axes; ``offset`` may be
    negative: the box reaches below and above the brain grid). Outside the box is air.
    """

    images: np.ndarray
    offset: np.ndarray


def build_head(brain_images: np.ndarray, brain: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> Head:
    """The head around ``brain_images`` (4, X, Y, Z; zero outside ``brain``) on a grid of ``voxel_mm`` voxels."""
    pad_below, pad_above = round(PAD_BELOW_MM / voxel_mm), round(PAD_ABOVE_MM / voxel_mm)
    padding = ((0, 0), (0, 0), (pad_below, pad_above))
    tissue, low = _tissue(np.pad(brain, padding), rng, voxel_mm)
    crop = tuple(slice(int(a), int(a) + n) for a, n in zip(low, tissue.shape))
    inside = np.pad(brain, padding)[crop]
    means = HEAD_MEANS * rng.uniform(0.9, 1.1, size=HEAD_MEANS.shape).astype(np.float32)
    means[AIR] = 0.0
    fine, broad = _texture(tissue.shape, rng, 1.5 / voxel_mm), _texture(tissue.shape, rng, 3.0 / voxel_mm)
    # fat lobules with thin darker septa, patchy red/yellow marrow, a little grain in muscle and skin
    texture = np.ones(tissue.shape, dtype=np.float32)
    texture[tissue == FAT] = (1.0 + 0.10 * fine - 0.35 * (np.abs(fine) < 0.12))[tissue == FAT]
    texture[tissue == MARROW] = (1.0 + 0.2 * broad + 0.08 * fine)[tissue == MARROW]
    soft = (tissue == MUSCLE) | (tissue == SKIN) | (tissue == CORD)
    texture[soft] = (1.0 + 0.07 * fine)[soft]
    images = np.empty((4,) + tissue.shape, dtype=np.float32)
    sigma = 0.6 / voxel_mm  # partial volume between the layers
    for ch in range(4):
        shell = ndimage.gaussian_filter(means[tissue, ch] * texture, sigma=sigma, truncate=3.0)
        scaled = brain_images[ch].astype(np.float32) / np.float32(np.median(brain_images[ch][brain]))
        images[ch] = np.where(inside, np.pad(scaled, padding)[crop], np.maximum(shell, 0.0))
    return Head(images=images, offset=low - np.array([0, 0, pad_below]))


def _tissue(inside: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Head tissue classes (uint8) on the box of the padded grid that holds the head, and the box's first voxel.
    The brain's voxels are CSF here (the brain replaces them)."""
    step = max(1, round(COARSE_MM / voxel_mm))
    coarse = inside[::step, ::step, ::step]
    mm = voxel_mm * step
    outside_brain = ndimage.distance_transform_edt(~coarse) * mm
    fields = [lo + (hi - lo) * _unit_field(coarse.shape, rng, 25.0 / mm) for lo, hi in THICKNESS_MM]
    temples = _temples(coarse)
    fields[2] = fields[2] * (1.0 - 0.8 * temples)  # the temporal squama is thin
    fields[4] = fields[4] + 9.0 * temples
    bounds = np.cumsum(fields[:5], axis=0)  # outer edges of CSF, inner table, diploë, outer table, muscle
    cranial = _layer_coordinate(outside_brain, bounds[:4])
    head = (outside_brain < bounds[4] + fields[5] + fields[6]) | _face_and_neck(coarse, mm)
    # round the block's corners and fill the notch where it meets the cranium; the skull stays inside
    head = (ndimage.gaussian_filter(head.astype(np.float32), sigma=4.0 / mm) > 0.5) | (outside_brain < bounds[3])
    depth = ndimage.distance_transform_edt(head) * mm - ndimage.distance_transform_edt(~head) * mm
    surface = _layer_coordinate(np.maximum(depth, 0.0), np.stack([fields[6], fields[6] + fields[5]]))
    surface[depth <= 0] = -1.0
    hits = np.argwhere(head)
    low_c, high_c = np.maximum(hits.min(axis=0) - 1, 0), np.minimum(hits.max(axis=0) + 2, coarse.shape)
    low = low_c * step
    shape = tuple(int(n) for n in np.minimum((high_c - low_c) * step, np.asarray(inside.shape) - low))
    box = tuple(slice(int(a), int(b)) for a, b in zip(low_c, high_c))
    cranial_full, surface_full = (_upsample(a[box], step, shape) for a in (cranial, surface))
    inside = inside[tuple(slice(int(a), int(a) + n) for a, n in zip(low, shape))]
    tissue = np.full(shape, MUSCLE, dtype=np.uint8)
    tissue[cranial_full < 4] = (np.array([CSF, TABLE, MARROW, TABLE], dtype=np.uint8)
                                [np.clip(cranial_full[cranial_full < 4], 0, 3).astype(np.intp)])
    _canal_and_eyes(tissue, inside, voxel_mm, cranial_full)
    tissue[surface_full < 2] = FAT
    tissue[surface_full < 1] = SKIN
    tissue[surface_full < 0] = AIR
    tissue[inside] = CSF
    return tissue, low


def _unit_field(shape: tuple[int, ...], rng: np.random.Generator, cell: float) -> np.ndarray:
    """A smooth random field in [0, 1] varying over about ``cell`` voxels."""
    return np.clip(0.5 + 0.3 * _smooth_noise(shape, rng, max(cell, 2.0)), 0.0, 1.0)


def _layer_coordinate(distance: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``i + fraction`` inside layer ``i`` (its outer edge at ``bounds[i]``), continuing past the last edge."""
    coordinate = np.zeros(distance.shape, dtype=np.float32)
    inner = np.zeros(distance.shape, dtype=np.float32)
    done = np.zeros(distance.shape, dtype=bool)
    for i, outer in enumerate(bounds):
        here = ~done & (distance < outer)
        coordinate[here] = (i + (distance - inner) / np.maximum(outer - inner, 1e-3))[here]
        done |= here
        inner = outer
    coordinate[~done] = (len(bounds) + distance - inner)[~done]
    return coordinate


def _upsample(coarse: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """``coarse`` (sampled at every ``step``-th voxel) interpolated linearly onto the full grid, one axis at a
    time (six times faster than ``ndimage.affine_transform`` on a 240×240×255 grid)."""
    out = coarse.astype(np.float32)
    if step == 1:
        return out
    for axis, size in enumerate(shape):
        position = np.arange(size, dtype=np.float32) / step
        below = np.minimum(position.astype(np.intp), out.shape[axis] - 1)
        above = np.minimum(below + 1, out.shape[axis] - 1)
        weight = (position - below).reshape([size if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, below, axis=axis) * (1 - weight) + np.take(out, above, axis=axis) * weight
    return out


def _texture(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Smooth random texture of unit standard deviation, correlated over about ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=max(sigma, 0.5))
    return field / np.float32(max(float(field[::3, ::3, ::3].std()), 1e-6))


def _extent(mask: np.ndarray, axis: int) -> tuple[int, int]:
    hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return int(hits[0]), int(hits[-1])


def _temples(brain: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the temporalis muscle: lateral, over the lower two thirds of the brain's height."""
    (x0, x1), (z0, z1) = _extent(brain, 0), _extent(brain, 2)
    x = np.abs(np.arange(brain.shape[0]) - (x0 + x1) / 2) / max((x1 - x0) / 2, 1.0)
    z = (np.arange(brain.shape[2]) - z0) / max(z1 - z0, 1)
    lateral = np.clip((x - 0.55) / 0.4, 0.0, 1.0)
    height = np.clip(1.0 - np.abs(z - 0.45) / 0.3, 0.0, 1.0)
    return (lateral[:, None, None] * height[None, None, :]).astype(np.float32) * np.ones_like(brain, np.float32)


def _face_and_neck(brain: np.ndarray, mm: float) -> np.ndarray:
    """Soft-tissue block under the brain: the face in front (to the chin) narrowing into the neck."""
    (x0, x1), (y0, y1), (z0, _) = (_extent(brain, a) for a in range(3))
    stem = brain[:, :, z0:z0 + max(1, round(5 / mm))].any(axis=2)
    stem_y = float(np.argwhere(stem)[:, 1].mean()) * mm  # j grows toward posterior
    top = z0 * mm + 60.0
    z = np.arange(brain.shape[2]) * mm
    t = np.clip((top - z) / max(top, 1.0), 0.0, 1.0)
    front = (y0 * mm - 20.0) * (1 - t ** 3) + (stem_y - 55.0) * t ** 3  # in j millimetres: smaller = anterior
    back = (stem_y + 50.0) * (1 - t) + (stem_y + 58.0) * t
    half_width = (0.46 * (x1 - x0) * mm) * (1 - t) + 55.0 * t
    x = (np.arange(brain.shape[0]) * mm - (x0 + x1) / 2 * mm)[:, None, None]
    y = (np.arange(brain.shape[1]) * mm)[None, :, None]
    centre, half_depth = (front + back) / 2, (back - front) / 2
    inside = (x / half_width) ** 2 + ((y - centre) / half_depth) ** 2 < 1.0
    return inside & (z < top)[None, None, :]


def _canal_and_eyes(tissue: np.ndarray, brain: np.ndarray, mm: float, cranial: np.ndarray) -> None:
    """Spinal cord in CSF inside a bony ring below the brainstem; two eyes in orbital fat under the frontal lobes."""
    (x0, x1), (y0, y1), (z0, z1) = (_extent(brain, a) for a in range(3))
    stem = np.argwhere(brain[:, :, z0:z0 + max(1, round(5 / mm))].any(axis=2)).mean(axis=0)
    xx = (np.arange(tissue.shape[0]) - stem[0])[:, None] * mm
    yy = (np.arange(tissue.shape[1]) - stem[1])[None, :] * mm
    radius = np.sqrt(xx ** 2 + yy ** 2)
    below = slice(0, z0)
    ring = tissue[:, :, below]
    ring[(radius < 14.0)[:, :, None] & np.ones(ring.shape, bool)] = TABLE
    ring[(radius < 12.5)[:, :, None] & np.ones(ring.shape, bool)] = MARROW
    ring[(radius < 8.5)[:, :, None] & np.ones(ring.shape, bool)] = CSF
    ring[(radius < 5.5)[:, :, None] & np.ones(ring.shape, bool)] = CORD
    height, width = (z1 - z0) * mm, (x1 - x0) * mm
    centre_z = z0 * mm + 0.24 * height
    for side in (-1.0, 1.0):
        centre = np.array([(x0 + x1) / 2 * mm + side * 0.23 * width, y0 * mm + 8.0, centre_z])
        grids = np.ogrid[tuple(slice(0, n) for n in tissue.shape)]
        r2 = sum((g * mm - c) ** 2 for g, c in zip(grids, centre))
        free = cranial >= 1.0  # outside the CSF gap: never inside the skull
        tissue[(r2 < 18.0 ** 2) & free & (cranial >= 3.0)] = FAT
        tissue[(r2 < 12.0 ** 2) & free] = EYE
