"""Sliding-window inference over any Session, in numpy.

Window positions and the gaussian importance map follow MONAI's ``sliding_window_inference``
(scan interval ``int(roi * (1 - overlap))``, last window flush with the end, gaussian sigma
0.125 × window, weights clamped at 1e-3) so that results can be compared with it voxel for voxel.
Models from nnU-Net use its rules instead (card ``steps: nnunet``, ``blend: nnunet_gaussian``):
the fewest windows at step ≤ (1 - overlap) × window spread evenly from start to end, and a
blurred delta (sigma window / 8, float16 as nnU-Net holds it) as the importance map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]
_T = TypeVar("_T")


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis; the last window ends exactly at ``size``."""
    if window >= size:
        return [0]
    step = max(int(window * (1.0 - overlap)), 1)
    count = next(i for i in range(math.ceil(size / step)) if i * step + window >= size) + 1
    return [min(i * step, size - window) for i in range(count)]


def nnunet_starts(size: int, window: int, overlap: float) -> list[int]:
    """nnU-Net's ``compute_steps_for_sliding_window`` along one axis."""
    if window >= size:
        return [0]
    count = int(np.ceil((size - window) / (window * (1.0 - overlap)))) + 1
    step = (size - window) / (count - 1)
    return [int(np.round(step * i)) for i in range(count)]


STARTS = {"monai": window_starts, "nnunet": nnunet_starts}


def window_slices(shape: tuple[int, ...], window: tuple[int, ...], overlap: float,
                  steps: str = "monai") -> list[tuple[slice, ...]]:
    """All windows over ``shape`` in C order (first axis slowest), like MONAI and nnU-Net."""
    starts = [STARTS[steps](s, w, overlap) for s, w in zip(shape, window)]
    grid = np.meshgrid(*starts, indexing="ij")
    return [tuple(slice(int(s), int(s) + w) for s, w in zip(pos, window))
            for pos in zip(*(g.ravel() for g in grid))]


@lru_cache(maxsize=8)
def importance_map(window: tuple[int, ...], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights of one window (float32); computed once per window shape."""
    if mode == "constant":
        return np.ones(window, dtype=np.float32)
    if mode == "nnunet_gaussian":
        return _nnunet_gaussian(window)
    if mode != "gaussian":
        raise ValueError(f"blend mode '{mode}' (expected 'gaussian', 'constant' or 'nnunet_gaussian')")
    weights = np.ones((), dtype=np.float32)
    for n in window:
        x = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0)
        g = np.exp(x ** 2 / np.float32(-2.0 * (n * sigma_scale) ** 2)).astype(np.float32)
        weights = weights[..., None] * g
    weights = np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _nnunet_gaussian(window: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's ``compute_gaussian``: a delta at ``n // 2`` blurred with sigma n / 8, scaled to a
    maximum of 10 and held in float16; zeros become the smallest non-zero weight."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(window)
    delta[tuple(n // 2 for n in window)] = 1
    weights: np.ndarray = gaussian_filter(delta, [n / 8 for n in window], 0, mode="constant", cval=0)
    weights = (weights / (weights.max() / 10)).astype(np.float16)
    weights[weights == 0] = weights[weights > 0].min()
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def _batches(items: list[_T], size: int) -> Iterator[list[_T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class WindowPlan:
    """Where windows go and how they are blended and batched.

    ``skip_empty``: a window whose input is all zero (it never touches the non-zero region) is not
    sent to the network; it receives the logits the network gives for an all-zero window, computed
    once per window shape and kept in ``background`` (a dict the caller may hold across cases).
    The result is the same as running it, up to the backend's batch-to-batch rounding.
    """

    window: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "gaussian"
    steps: str = "monai"
    batch_size: int = 1
    skip_empty: bool = False


def _empty(occupied: np.ndarray, s: tuple[slice, ...]) -> bool:
    return not occupied[s].any()


def _background(predict: Predictor, image: np.ndarray, window: tuple[int, ...],
                cache: dict[tuple[int, ...], np.ndarray]) -> np.ndarray:
    """The network's logits for an all-zero window (cached per window shape)."""
    key = (image.shape[0],) + tuple(window)
    if key not in cache:
        cache[key] = predict(np.zeros((1,) + key, dtype=np.float32))[0]
    return cache[key]


def blend_windows(image: np.ndarray, predict: Predictor, plan: WindowPlan,
                  on_window: Callable[[int, int], None] | None = None,
                  background: dict[tuple[int, ...], np.ndarray] | None = None) -> np.ndarray:
    """Blend ``predict`` over the windows ``plan`` places on ``image`` (C, *spatial) → logits (K, *spatial).

    ``predict`` maps (N, C, *window) to (N, K, *window). ``on_window(done, total)`` reports progress.
    """
    spatial = image.shape[1:]
    slices = window_slices(spatial, plan.window, plan.overlap, plan.steps)
    weights = importance_map(tuple(plan.window), plan.mode)
    run, skipped = slices, []
    if plan.skip_empty and len(slices) > 1:
        occupied = (image != 0).any(axis=0)
        run = [s for s in slices if not _empty(occupied, s)]
        skipped = [s for s in slices if _empty(occupied, s)]
    total: np.ndarray | None = None
    norm = np.zeros(spatial, dtype=np.float32)
    scratch = np.empty((0,), dtype=np.float32)

    def add(s: tuple[slice, ...], logits: np.ndarray) -> None:
        nonlocal total, scratch
        if total is None:
            total = np.zeros((logits.shape[0],) + spatial, dtype=np.float32)
        if scratch.shape != logits.shape:
            scratch = np.empty(logits.shape, dtype=np.float32)
        np.multiply(logits, weights, out=scratch)
        total[(slice(None),) + s] += scratch
        norm[s] += weights

    done = 0
    for group in _batches(run, plan.batch_size):
        batch = np.stack([image[(slice(None),) + s] for s in group])
        for s, logits in zip(group, predict(np.ascontiguousarray(batch, dtype=np.float32))):
            add(s, logits)
        done += len(group)
        if on_window:
            on_window(done, len(slices))
    if skipped:
        zero = _background(predict, image, plan.window, {} if background is None else background)
        for s in skipped:
            add(s, zero)
        if on_window:
            on_window(len(slices), len(slices))
    assert total is not None  # at least one window always exists
    total /= norm
    return total


def sliding_window(image: np.ndarray, predict: Predictor, window: tuple[int, ...], overlap: float = 0.5,
                   mode: str = "gaussian", batch_size: int = 1,
                   on_window: Callable[[int, int], None] | None = None, steps: str = "monai") -> np.ndarray:
    """Every window through ``predict`` (no skipping), blended: MONAI's ``sliding_window_inference``."""
    return blend_windows(image, predict, WindowPlan(tuple(window), overlap, mode, steps, batch_size), on_window)
