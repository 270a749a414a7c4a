"""Anatomy from the MNI152 (2009c) grey/white-matter templates that nilearn ships (extra 'synth').

The templates are tissue probabilities at 1 mm; each case resamples them with a small random
rotation and scaling, keeps the fractions for partial-volume intensities, and derives hard
tissue classes for the tumour's growth rules.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from seg_edge.errors import MissingExtra

MAX_HEIGHT_MM = 148  # keep the cerebrum and cerebellum; the lower brainstem is cut to fit 155 slices


@lru_cache(maxsize=1)
def tissue_maps() -> np.ndarray:
    """(3, X, Y, Z) float32 CSF, GM, WM fractions cropped to the brain; MissingExtra without nilearn."""
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise MissingExtra("nilearn", needed_for="anatomy 'mni152'") from exc
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    mask = ndimage.binary_fill_holes(mask)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    maps = np.stack([csf, gm, wm]) * mask
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    lo = [int(h[0]) for h in hits]
    hi = [int(h[-1]) + 1 for h in hits]
    lo[2] = max(lo[2], hi[2] - MAX_HEIGHT_MM)
    return np.ascontiguousarray(maps[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))])


def resampled_fractions(rng: np.random.Generator, rot: np.ndarray, grid_scale: float,
                        limit: tuple[int, int, int]) -> np.ndarray:
    """The template fractions under a random similarity transform, on a box of at most ``limit``."""
    maps = tissue_maps()
    scale = grid_scale * rng.uniform(0.93, 1.07, size=3)
    src_shape = np.array(maps.shape[1:], dtype=float)
    box = tuple(int(min(lim, np.ceil(n * s * 1.06) + 2)) for n, s, lim in zip(src_shape, scale, limit))
    # output voxel o ↦ source voxel  S⁻¹ R (o − c_out) + c_src
    matrix = np.diag(1.0 / scale) @ rot
    centre_out = (np.array(box) - 1) / 2.0
    offset = (src_shape - 1) / 2.0 - matrix @ centre_out
    return np.stack([ndimage.affine_transform(m, matrix, offset, output_shape=box, order=1, cval=0.0)
                     for m in maps])
