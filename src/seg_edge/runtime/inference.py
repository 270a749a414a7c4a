"""How a network is applied to a preprocessed tensor, as the card says: a 3D sliding window or
2D slices resized to the network's size; mirroring test-time augmentation either way.

Mirroring follows nnU-Net: every batch of windows is also run flipped along each combination of
the card's ``tta_axes`` and the flipped-back logits are averaged with the plain ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.runtime.preprocess import tiling_window, window_size
from seg_edge.runtime.window import WindowPlan, blend_windows

Predictor = Callable[[np.ndarray], np.ndarray]
INTERPOLATION_ORDER = {"linear": 1, "nearest": 0}  # card slice.interpolation → spline order


@dataclass(frozen=True)
class Plan:
    """The inference options in force: the card's, where the user (or a tuned profile) did not
    override them. ``window``: None is the card's patch; a larger one is capped at the crop
    (``preprocess.tiling_window``). ``skip_empty``: all-zero windows are not run (``WindowPlan``)."""

    overlap: float
    blend: str
    batch_size: int
    tta_axes: tuple[int, ...]
    steps: str = "monai"
    window: tuple[int, ...] | None = None
    skip_empty: bool = True


def mirrored(predict: Predictor, axes: tuple[int, ...]) -> Predictor:
    """``predict`` averaged over every flip combination of the spatial ``axes`` (of N, C, *spatial)."""
    if not axes:
        return predict
    combos = [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]

    def run(batch: np.ndarray) -> np.ndarray:
        total = predict(batch).astype(np.float32)
        for combo in combos:
            dims = tuple(2 + a for a in combo)
            total += np.flip(predict(np.ascontiguousarray(np.flip(batch, dims))), dims)
        return total / (len(combos) + 1)

    return run


def nearest_indices(source: int, target: int) -> np.ndarray:
    """For each of ``target`` samples, the ``source`` index whose centre is nearest: floor((i + ½) ·
    source / target) in integers (voxel centres aligned, as Keras' and PyTorch's "nearest-exact" and
    scikit-image resize; no float rounding at ties)."""
    return (2 * np.arange(target, dtype=np.int64) + 1) * source // (2 * target)


def resize_plane(volume: np.ndarray, size: tuple[int, ...], interpolation: str) -> np.ndarray:
    """(C, H, W) → (C, *size), ``linear`` (float32) or ``nearest`` (``nearest_indices``, dtype kept)
    as the card's slice spec says; the last two axes are resized, any leading ones kept."""
    if tuple(volume.shape[-2:]) == tuple(size):
        return volume
    if interpolation == "nearest":
        rows, cols = (nearest_indices(s, t) for s, t in zip(volume.shape[-2:], size))
        return volume[..., rows[:, None], cols[None, :]]
    from scipy import ndimage  # imported on first use: scipy is ~0.2 s of a cold start

    order = INTERPOLATION_ORDER[interpolation]
    zoom = (1.0,) * (volume.ndim - 2) + tuple(t / s for t, s in zip(size, volume.shape[-2:]))
    resized: np.ndarray = ndimage.zoom(volume, zoom, order=order, mode="nearest", grid_mode=True).astype(np.float32)
    return resized


def slicewise(tensor: np.ndarray, predict: Predictor, card: ModelCard, batch_size: int,
              on_window: Callable[[int, int], None] | None = None) -> np.ndarray:
    """2D models: (C, *3 spatial) → (K, *3 spatial) logits, slice by slice along the card's axis.

    The logits of each slice are resized back to its plane (``back`` "logits"), or kept at the
    network's size for labelling there (``back`` "labels": in-plane sizes are the slice size)."""
    spec = card.slice_spec()
    moved = np.moveaxis(tensor, 1 + spec.axis, 1)  # (C, S, H, W)
    count = moved.shape[1]
    plane = tuple(moved.shape[2:]) if spec.back == "logits" else tuple(spec.size)
    out: np.ndarray | None = None
    for start in range(0, count, batch_size):
        idx = range(start, min(start + batch_size, count))
        batch = np.stack([resize_plane(moved[:, i], spec.size, spec.interpolation) for i in idx])
        logits = predict(np.ascontiguousarray(batch, dtype=np.float32))
        if out is None:
            out = np.zeros((logits.shape[1], count) + plane, dtype=np.float32)
        for i, item in zip(idx, logits):
            out[:, i] = resize_plane(item, plane, spec.back_interpolation)
        if on_window:
            on_window(idx[-1] + 1, count)
    if out is None:  # no slice in the card's slice range: nothing for the network to see
        out = np.zeros((card.out_channels, 0) + plane, dtype=np.float32)
    return np.moveaxis(out, 1, 1 + spec.axis)


def labels_back(labels: np.ndarray, probs: np.ndarray | None, shape: tuple[int, ...],
                card: ModelCard) -> tuple[np.ndarray, np.ndarray | None]:
    """2D models labelled at the network's size (``back`` "labels"): labels (*3 spatial) and probabilities
    (K, *3 spatial) whose in-plane axes have the slice size → ``shape`` (network layout), resized with
    ``back_interpolation`` (nearest: every voxel takes one network pixel's label and probabilities).
    ``probs`` None: only the labels (None returned for the probabilities)."""
    spec = card.slice_spec()
    plane = tuple(s for a, s in enumerate(shape) if a != spec.axis)
    labels = np.moveaxis(resize_plane(np.moveaxis(labels, spec.axis, 0), plane, spec.back_interpolation), 0, spec.axis)
    if probs is None:
        return np.ascontiguousarray(labels), None
    moved = np.moveaxis(probs, 1 + spec.axis, 1)
    probs = np.moveaxis(resize_plane(moved, plane, spec.back_interpolation), 1, 1 + spec.axis)
    return np.ascontiguousarray(labels), np.ascontiguousarray(probs)


def network_logits(tensor: np.ndarray, predict: Predictor, card: ModelCard, plan: Plan,
                   on_window: Callable[[int, int], None] | None = None,
                   background: dict[tuple[int, ...], np.ndarray] | None = None) -> np.ndarray:
    """Logits in network layout for a preprocessed tensor, with the plan's window or the card's slices.

    ``background`` caches the logits of an all-zero window across calls (``window.blend_windows``).
    """
    predict = mirrored(predict, plan.tta_axes)
    if card.inputs.spatial_dims == 2:
        return slicewise(tensor, predict, card, plan.batch_size, on_window)
    window = window_size(tensor.shape[1:], tiling_window(tensor.shape[1:], card, plan.window))
    spec = WindowPlan(window, plan.overlap, plan.blend, plan.steps, plan.batch_size, plan.skip_empty)
    return blend_windows(tensor, predict, spec, on_window, background)
