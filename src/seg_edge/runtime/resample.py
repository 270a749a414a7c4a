"""Resampling between an input's voxel grid and the grid a model was trained on.

Only run when the user asks (``--resample``): the runtime otherwise refuses an input whose
spacing differs from the card's (``check_geometry``) and never reorients. The rule for "differs"
is nnU-Net's: the array would change shape, round(spacing / target × shape) ≠ shape on an axis.
Images are resampled with cubic splines, logits back with linear ones (as nnU-Net's default
resampling does, with scipy instead of scikit-image: not bit-identical to it).
"""

from __future__ import annotations

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import InputError


def resize(volume: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """(C, *spatial) → (C, *shape) with splines of ``order``; voxel centres aligned as in scikit-image."""
    if tuple(volume.shape[1:]) == tuple(shape):
        return volume
    from scipy import ndimage  # imported on first use: scipy is ~0.2 s of a cold start

    factors = tuple(t / s for t, s in zip(shape, volume.shape[1:]))
    out = [ndimage.zoom(c.astype(np.float32), factors, order=order, mode="nearest", grid_mode=True) for c in volume]
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def axis_codes(affine: np.ndarray) -> str:
    """The NIfTI affine's axis codes, e.g. 'RAS'."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def check_geometry(source: str, shape: tuple[int, ...], spacing: tuple[float, ...], affine: np.ndarray | None,
                   card: ModelCard, resample: bool) -> tuple[float, ...] | None:
    """None if the input is on the card's grid; the scale to resample by if ``resample``; else InputError.

    ``affine`` None (a .npy stack) has no geometry to check: the caller records that it was assumed.
    """
    inputs = card.inputs
    if affine is None:
        return None
    if inputs.orientation is not None and axis_codes(affine) != inputs.orientation:
        raise InputError(f"{source}: orientation {axis_codes(affine)} (model {card.name!r} expects "
                         f"{inputs.orientation}; seg-edge does not reorient: reorient the images first)")
    if inputs.spacing is None:
        return None
    scale = tuple(float(s) / float(t) for s, t in zip(spacing, inputs.spacing))
    if all(int(round(f * n)) == n for f, n in zip(scale, shape)):
        return None
    if not resample:
        found = "×".join(f"{s:g}" for s in spacing)
        expected = "×".join(f"{t:g}" for t in inputs.spacing)
        raise InputError(f"{source}: voxel spacing {found} mm (model {card.name!r} was trained at {expected} mm; "
                         "pass --resample to resample to it and back)")
    return scale


def check_slice_range(source: str, shape: tuple[int, ...], card: ModelCard) -> None:
    """InputError unless a 2D card's slice range lies inside an input of ``shape`` (X, Y, Z): the
    model's own pipeline reads those slices, so a shorter volume is not what it was made for."""
    reads = card.slice_range()
    if reads is None:
        return
    array_axis, start, stop = reads
    if stop > shape[array_axis]:
        raise InputError(f"{source}: {shape[array_axis]} slices along array axis {array_axis} (model {card.name!r} "
                         f"reads slices {start}..{stop - 1}: expected at least {stop})")
