"""Crop, normalise each channel as the card says, add derived channels, permute axes, pad.

With NVIDIA's BraTS21 card this matches their preprocessor: the box is where any modality is > 0
(MONAI's ``generate_spatial_bounding_box``), normalisation is MONAI ``NormalizeIntensity(
nonzero=True, channel_wise=True)`` and the mask is 1 where all z-scored channels are > 0. Other
cards choose per-channel normalisation, no cropping, another axis order (docs/CARD.md).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import ArtifactError
from seg_edge.runtime.resample import resize


@dataclass(frozen=True)
class Inverse:
    """What postprocessing needs to put a prediction back on the original grid."""

    original_shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]
    cropped_shape: tuple[int, int, int]
    axes: tuple[int, ...] = (0, 1, 2)  # network spatial axis i = array axis axes[i]
    pad_before: tuple[int, ...] = (0, 0, 0)  # network layout
    resampled_shape: tuple[int, ...] | None = None  # network layout, when resampled to the card's spacing

    @property
    def network_shape(self) -> tuple[int, ...]:
        """The cropped shape in network layout (before resampling and padding)."""
        return tuple(self.cropped_shape[a] for a in self.axes)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The shape the network saw, without the padding: resampled, or the cropped shape."""
        return self.resampled_shape or self.network_shape


def to_network_axes(volume: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Permute the last three (array X, Y, Z) axes into network order."""
    lead = volume.ndim - 3
    moved: np.ndarray = volume.transpose(tuple(range(lead)) + tuple(lead + a for a in axes))
    return moved


def from_network_axes(volume: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``to_network_axes``."""
    lead = volume.ndim - 3
    inverse = tuple(int(i) for i in np.argsort(axes))
    moved: np.ndarray = volume.transpose(tuple(range(lead)) + tuple(lead + a for a in inverse))
    return moved


def nonzero_box(images: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of voxels where any channel is > 0; the whole grid if there is none."""
    any_pos = images[0] > 0
    for channel in images[1:]:
        any_pos |= channel > 0
    xy = any_pos.any(axis=2)  # two passes over the volume for the three projections
    box = []
    for axis, hits in enumerate((xy.any(axis=1), xy.any(axis=0), any_pos.any(axis=(0, 1)))):
        hits = np.flatnonzero(hits)
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, any_pos.shape[axis]))
    return tuple(box)  # type: ignore[return-value]


def _zscore_where(channel: np.ndarray, where: np.ndarray | None, out: np.ndarray | None,
                  divisor: Callable[[float], float]) -> np.ndarray:
    """Z-score ``channel`` with the mean and std of its voxels in ``where`` (all if None) into ``out``
    (float32, the channel's shape; new if None); voxels outside ``where`` are 0. Whole-array passes,
    no gather or scatter of the selected voxels: the deviations are formed once in ``out``, their
    squares summed in float64, then scaled in place. ``divisor`` maps the std to what is divided by."""
    out = np.empty(channel.shape, dtype=np.float32) if out is None else out
    count = channel.size if where is None else int(np.count_nonzero(where))
    if count == 0:
        out[...] = 0
        return out
    mean = float(np.sum(channel, where=True if where is None else where, dtype=np.float64)) / count
    shift = np.float32(mean)
    np.subtract(channel, shift, out=out, dtype=np.float32)
    if where is not None:
        np.copyto(out, np.float32(0), where=~where)
    # variance about ``shift``, corrected to the mean (they differ by < 1 float32 ulp)
    variance = float(np.sum(np.square(out), dtype=np.float64)) / count - (mean - float(shift)) ** 2
    np.multiply(out, np.float32(1.0 / divisor(float(np.sqrt(max(variance, 0.0))))), out=out)
    return out


def zscore_nonzero(channel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Z-score the non-zero voxels of one channel in float32 (into ``out`` if given); zeros stay zero.
    A constant channel is divided by 1 (MONAI's ``NormalizeIntensity``)."""
    return _zscore_where(channel, channel != 0, out, lambda std: std if std > 0 else 1.0)


def zscore_all(channel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Z-score over every voxel of the channel (float32, into ``out`` if given)."""
    return _zscore_where(channel, None, out, lambda std: std if std > 0 else 1.0)


def foreground_mask(modalities: np.ndarray) -> np.ndarray:
    """nnU-Net's ``create_nonzero_mask``: voxels != 0 in any modality, holes filled."""
    from scipy.ndimage import binary_fill_holes

    filled: np.ndarray = binary_fill_holes((modalities != 0).any(axis=0))
    return filled


def zscore_mask(channel: np.ndarray, mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """nnU-Net's ``ZScoreNormalization`` with ``use_mask_for_norm``: z-score inside ``mask``, zero outside."""
    return _zscore_where(channel, mask, out, lambda std: max(std, 1e-8))


def none(channel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The channel as float32 (into ``out`` if given)."""
    if out is None:
        return channel.astype(np.float32)
    out[...] = channel
    return out


def max_scaled(channel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The channel divided by its maximum in float32 (into ``out`` if given), as the Keras BraTS
    tutorial scales a volume; a channel without a positive voxel is left as it is (no division by 0)."""
    out = none(channel, out)
    peak = out.max(initial=0.0)
    if peak > 0:
        np.divide(out, peak, out=out)  # a division, as the tutorial's x / max: x * (1 / max) rounds differently
    return out


# channel normalization → function of (channel, the mask of all modalities, out) that writes the
# normalised channel into ``out`` (float32, the channel's shape) and returns it; the card refuses
# names missing here (card.NORMALIZATIONS, a test keeps the two equal).
Normalizer = Callable[[np.ndarray, Callable[[], np.ndarray], np.ndarray], np.ndarray]
NORMALIZERS: dict[str, Normalizer] = {
    "zscore_nonzero": lambda c, mask, out: zscore_nonzero(c, out),
    "zscore_mask": lambda c, mask, out: zscore_mask(c, mask(), out),
    "zscore": lambda c, mask, out: zscore_all(c, out), "max": lambda c, mask, out: max_scaled(c, out),
    "none": lambda c, mask, out: none(c, out)}


def implemented(table: dict[str, Any], name: str, what: str, card: ModelCard) -> Any:
    """``table[name]``; ArtifactError (never a silent default) if this runtime lacks that name."""
    if name not in table:
        raise ArtifactError(f"model card {card.name!r}: {what} {name!r} is not implemented by this runtime "
                            f"(expected one of {list(table)})")
    return table[name]


def nvidia_mask(modalities: list[np.ndarray]) -> np.ndarray:
    """NVIDIA's BraTS21 mask channel: 1 where every normalised modality channel is > 0."""
    mask: np.ndarray = np.logical_and.reduce([c > 0 for c in modalities]).astype(np.float32)
    return mask


DERIVED: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {"nvidia_mask": nvidia_mask}


def channels(cropped: np.ndarray, card: ModelCard, out: np.ndarray | None = None) -> np.ndarray:
    """(M, …) modalities in the card's modality order → (C, …) float32 network channels in the card's
    order, written into ``out`` (possibly a view into the padded network tensor) if given. The
    modalities are normalised in parallel threads (numpy releases the GIL in its array loops)."""
    if out is None:
        out = np.empty((len(card.inputs.channels),) + cropped.shape[1:], dtype=np.float32)
    masks: list[np.ndarray] = []
    lock = threading.Lock()

    def mask() -> np.ndarray:  # computed once, only for normalizations that need it
        with lock:
            if not masks:
                masks.append(foreground_mask(cropped))
            return masks[0]

    slots = [i for i, c in enumerate(card.inputs.channels) if c.derived is None]
    normalizers = [implemented(NORMALIZERS, card.inputs.channels[i].normalization, "normalization", card)
                   for i in slots]

    def normalise(k: int) -> np.ndarray:
        slot: np.ndarray = out[slots[k]]
        result = normalizers[k](cropped[k], mask, slot)
        if result is not slot:  # a normalizer that returned a new array instead of filling ``slot``
            slot[...] = result
        return slot

    workers = min(len(slots), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            normalised = list(pool.map(normalise, range(len(slots))))
    else:
        normalised = [normalise(k) for k in range(len(slots))]
    for i, c in enumerate(card.inputs.channels):
        if c.derived is not None:
            out[i] = implemented(DERIVED, c.derived, "derived channel", card)(normalised)
    return out


def pad_shape(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Dimensions smaller than the patch grow to the patch (as MONAI's sliding window pads)."""
    return tuple(max(s, p) for s, p in zip(shape, patch))


def window_size(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """The window actually used: the card's patch, shrunk to the (padded) image where smaller."""
    return tuple(min(s, p) for s, p in zip(shape, patch))


def tiling_window(shape: tuple[int, ...], card: ModelCard, window: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The window to tile a tensor of spatial ``shape`` with: the card's patch, or a larger ``window``
    (a tuned profile's, multiples of the size divisor) capped per axis at ``shape`` rounded up to the
    size divisor, never below the patch: a window larger than the crop is the whole crop in one pass."""
    patch = tuple(card.patch_size)
    if not window:
        return patch
    div = card.size_divisor
    return tuple(max(p, min(w, -(-s // div) * div)) for p, w, s in zip(patch, window, shape))


def preprocess(images: np.ndarray, card: ModelCard, scale: tuple[float, ...] | None = None,
               window: tuple[int, ...] | None = None) -> tuple[np.ndarray, Inverse]:
    """(M, X, Y, Z) images in the card's modality order → network tensor (C, *spatial) + Inverse.

    Cropped to the non-zero box (or not, as the card says), normalised, derived channels added,
    spatial axes permuted to the card's order; with ``scale`` (input spacing / the card's, per
    array axis) resampled to round(scale × shape), cubic, after normalisation (as nnU-Net does).
    3D models: dimensions smaller than the patch (or ``tiling_window`` of a larger ``window``) are
    padded with zeros up to it, half before and half after (as MONAI's sliding window and
    NVIDIA's preprocessor pad), so every window has the size the network was built for.
    """
    if images.shape[0] != len(card.modalities):
        raise ArtifactError(f"model card {card.name!r}: {images.shape[0]} images for "
                            f"{len(card.modalities)} modalities {list(card.modalities)}")
    x, y, z = images.shape[1:]
    box = nonzero_box(images) if card.inputs.crop == "nonzero" else (slice(0, x), slice(0, y), slice(0, z))
    cropped = images[(slice(None),) + box]
    axes, resampled = tuple(card.inputs.axes), None
    box, keep = _slice_range(box, card)
    shape = tuple(b.stop - b.start for b in box)
    if scale is None:  # the channels are written straight into the padded tensor: no stack, no copies
        spatial = tuple(cropped.shape[1 + a] for a in axes)
        target, before = _padding(spatial, card, window)
        tensor = np.zeros((len(card.inputs.channels),) + target, dtype=np.float32)
        inside = tensor[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, spatial))]
        channels(cropped, card, from_network_axes(inside, axes))
        tensor = tensor[keep]  # 2D models only, never padded
    else:
        tensor = to_network_axes(channels(cropped, card), axes)[keep]
        resampled = tuple(int(round(scale[a] * shape[a])) for a in axes)
        tensor = resize(tensor, resampled, order=3)
        target, before = _padding(resampled, card, window)
        if target != resampled:
            tensor = np.pad(tensor, [(0, 0)] + [(b, t - s - b) for b, t, s in zip(before, target, resampled)])
    inverse = Inverse(tuple(images.shape[1:]), box, shape, axes, before, resampled)
    return np.ascontiguousarray(tensor, dtype=np.float32), inverse


def _slice_range(box: tuple[slice, slice, slice],
                 card: ModelCard) -> tuple[tuple[slice, slice, slice], tuple[Any, ...]]:
    """The crop box narrowed to a 2D card's slice range, and the index that cuts a network tensor of the
    whole box to it. Statistics of the normalisation are taken before the cut, over the whole box."""
    reads = card.slice_range()
    if reads is None:
        return box, (Ellipsis,)
    array_axis, first, stop = reads
    whole = box[array_axis]
    start = min(max(first, whole.start), whole.stop)
    stop = max(min(stop, whole.stop), start)
    parts = list(box)
    parts[array_axis] = slice(start, stop)
    keep = [slice(None)] * 4
    keep[1 + card.slice_spec().axis] = slice(start - whole.start, stop - whole.start)
    return (parts[0], parts[1], parts[2]), tuple(keep)


def _padding(spatial: tuple[int, ...], card: ModelCard,
             window: tuple[int, ...] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The padded spatial shape of a network tensor and the padding before each axis (3D models:
    up to the tiling window, half before and half after; 2D models: none)."""
    target = pad_shape(spatial, tiling_window(spatial, card, window)) if card.inputs.spatial_dims == 3 else spatial
    return target, tuple((t - s) // 2 for t, s in zip(target, spatial))


def crop_padding(volume: np.ndarray, inverse: Inverse) -> np.ndarray:
    """Drop the padding preprocess added (network layout kept)."""
    shape = inverse.grid_shape
    return volume[(Ellipsis,) + tuple(slice(b, b + s) for b, s in zip(inverse.pad_before, shape))]


def to_original_grid(volume: np.ndarray, inverse: Inverse, fill: float | int = 0) -> np.ndarray:
    """(K, *network-spatial) or (*network-spatial), padded or already unpadded → original (X, Y, Z) grid."""
    lead = volume.shape[:-3]
    crop = volume if volume.shape[-3:] == inverse.network_shape else crop_padding(volume, inverse)
    crop = from_network_axes(crop, inverse.axes)
    out = np.full(lead + inverse.original_shape, fill, dtype=volume.dtype)
    out[(Ellipsis,) + inverse.box] = crop
    return out
