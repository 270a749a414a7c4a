"""Crop, normalise each channel as the card says, add derived channels, permute axes, pad.

With NVIDIA's BraTS21 card this matches their preprocessor: the box is where any modality is > 0
(MONAI's ``generate_spatial_bounding_box``), normalisation is MONAI ``NormalizeIntensity(
nonzero=True, channel_wise=True)`` and the mask is 1 where all z-scored channels are > 0. Other
cards choose per-channel normalisation, no cropping, another axis order (docs/CARD.md).
"""

from __future__ import annotations

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
    return volume.transpose(tuple(range(lead)) + tuple(lead + a for a in axes))


def from_network_axes(volume: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``to_network_axes``."""
    lead = volume.ndim - 3
    inverse = tuple(int(i) for i in np.argsort(axes))
    return volume.transpose(tuple(range(lead)) + tuple(lead + a for a in inverse))


def nonzero_box(images: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of voxels where any channel is > 0; the whole grid if there is none."""
    any_pos = (images > 0).any(axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(any_pos.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, any_pos.shape[axis]))
    return tuple(box)  # type: ignore[return-value]


def zscore_nonzero(channel: np.ndarray) -> np.ndarray:
    """Z-score the non-zero voxels of one channel in place-safe float32; zeros stay zero."""
    out = np.zeros(channel.shape, dtype=np.float32)
    nz = channel != 0
    if not nz.any():
        return out
    values = channel[nz].astype(np.float64)
    std = values.std()
    out[nz] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def zscore_all(channel: np.ndarray) -> np.ndarray:
    """Z-score over every voxel of the channel (float32)."""
    values = channel.astype(np.float64)
    std = values.std()
    return ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def foreground_mask(modalities: np.ndarray) -> np.ndarray:
    """nnU-Net's ``create_nonzero_mask``: voxels != 0 in any modality, holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes((modalities != 0).any(axis=0))


def zscore_mask(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """nnU-Net's ``ZScoreNormalization`` with ``use_mask_for_norm``: z-score inside ``mask``, zero outside."""
    out = np.zeros(channel.shape, dtype=np.float32)
    if not mask.any():
        return out
    values = channel[mask].astype(np.float64)
    out[mask] = ((values - values.mean()) / max(float(values.std()), 1e-8)).astype(np.float32)
    return out


# channel normalization → function of (channel, the mask of all modalities); the card refuses names
# missing here (card.NORMALIZATIONS, a test keeps the two equal).
NORMALIZERS: dict[str, Callable[[np.ndarray, Callable[[], np.ndarray]], np.ndarray]] = {
    "zscore_nonzero": lambda c, mask: zscore_nonzero(c), "zscore_mask": lambda c, mask: zscore_mask(c, mask()),
    "zscore": lambda c, mask: zscore_all(c), "none": lambda c, mask: c.astype(np.float32)}


def implemented(table: dict[str, Any], name: str, what: str, card: ModelCard) -> Any:
    """``table[name]``; ArtifactError (never a silent default) if this runtime lacks that name."""
    if name not in table:
        raise ArtifactError(f"model card {card.name!r}: {what} {name!r} is not implemented by this runtime "
                            f"(expected one of {list(table)})")
    return table[name]


def nvidia_mask(modalities: list[np.ndarray]) -> np.ndarray:
    """NVIDIA's BraTS21 mask channel: 1 where every normalised modality channel is > 0."""
    return np.logical_and.reduce([c > 0 for c in modalities]).astype(np.float32)


DERIVED: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {"nvidia_mask": nvidia_mask}


def channels(cropped: np.ndarray, card: ModelCard) -> np.ndarray:
    """(M, …) modalities in the card's modality order → (C, …) network channels in the card's order."""
    normalised, masks = [], []

    def mask() -> np.ndarray:  # computed once, only for normalizations that need it
        if not masks:
            masks.append(foreground_mask(cropped))
        return masks[0]

    for image, channel in zip(cropped, (c for c in card.inputs.channels if c.derived is None)):
        normalised.append(implemented(NORMALIZERS, channel.normalization, "normalization", card)(image, mask))
    it = iter(normalised)
    out = [implemented(DERIVED, c.derived, "derived channel", card)(normalised) if c.derived else next(it)
           for c in card.inputs.channels]
    return np.stack(out)


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
    box = nonzero_box(images) if card.inputs.crop == "nonzero" else tuple(slice(0, s) for s in images.shape[1:])
    cropped = images[(slice(None),) + box]
    tensor = to_network_axes(channels(cropped, card), card.inputs.axes)
    resampled = None
    if scale is not None:
        resampled = tuple(int(round(scale[a] * cropped.shape[1 + a])) for a in card.inputs.axes)
        tensor = resize(tensor, resampled, order=3)
    spatial = tensor.shape[1:]
    target = pad_shape(spatial, tiling_window(spatial, card, window)) if card.inputs.spatial_dims == 3 else spatial
    before = tuple((t - s) // 2 for t, s in zip(target, tensor.shape[1:]))
    if target != tensor.shape[1:]:
        pads = [(0, 0)] + [(b, t - s - b) for b, t, s in zip(before, target, tensor.shape[1:])]
        tensor = np.pad(tensor, pads)
    inverse = Inverse(tuple(images.shape[1:]), box, tuple(cropped.shape[1:]), tuple(card.inputs.axes), before,
                      resampled)
    return np.ascontiguousarray(tensor), inverse


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
