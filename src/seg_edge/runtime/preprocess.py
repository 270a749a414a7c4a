"""Crop to the non-zero box, normalise each channel as the card says, append the mask channel, pad.

Matches NVIDIA's BraTS21 preprocessor: the box is where any modality is > 0 (MONAI's
``generate_spatial_bounding_box``), normalisation is MONAI ``NormalizeIntensity(nonzero=True,
channel_wise=True)`` and the mask is 1 where all z-scored channels are > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from seg_edge.artifact import ModelCard
from seg_edge.errors import ArtifactError


@dataclass(frozen=True)
class Inverse:
    """What postprocessing needs to put a prediction back on the original grid."""

    original_shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]
    cropped_shape: tuple[int, int, int]
    axis_order: str
    pad_before: tuple[int, int, int] = (0, 0, 0)  # network layout


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


# card.normalization → per-channel function; the card refuses names missing here (artifact.NORMALIZATIONS).
NORMALIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"zscore_nonzero": zscore_nonzero}


def implemented(table: dict[str, Any], card: ModelCard, field: str) -> Any:
    """``table[card.<field>]``; ArtifactError (never a silent default) if this runtime lacks that name."""
    name = getattr(card, field)
    if name not in table:
        raise ArtifactError(f"model card {card.name!r}: {field} {name!r} is not implemented by this runtime "
                            f"(expected one of {list(table)})")
    return table[name]


def normalizer(card: ModelCard) -> Callable[[np.ndarray], np.ndarray]:
    """The per-channel normalisation the card names."""
    return implemented(NORMALIZERS, card, "normalization")


def pad_shape(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Dimensions smaller than the patch grow to the patch (as MONAI's sliding window pads)."""
    return tuple(max(s, p) for s, p in zip(shape, patch))


def window_size(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """The window actually used: the card's patch, shrunk to the (padded) image where smaller."""
    return tuple(min(s, p) for s, p in zip(shape, patch))


def preprocess(images: np.ndarray, card: ModelCard) -> tuple[np.ndarray, Inverse]:
    """(4, X, Y, Z) images in the card's modality order → network tensor (C, *spatial) + Inverse.

    The spatial axes of the result follow the card's ``axis_order``; dimensions smaller than the
    patch are padded with zeros up to the patch, half before and half after (as MONAI's sliding
    window and NVIDIA's preprocessor pad), so every window has the patch size the network was
    built for (a deep U-Net's bottleneck would otherwise shrink to one voxel).
    """
    normalize = normalizer(card)
    box = nonzero_box(images)
    cropped = images[(slice(None),) + box]
    channels = [normalize(c) for c in cropped]
    if card.mask_channel == "nvidia":
        mask = np.logical_and.reduce([c > 0 for c in channels]).astype(np.float32)
        channels.append(mask)
    tensor = np.stack(channels)
    if card.axis_order == "zyx":
        tensor = tensor.transpose(0, 3, 2, 1)
    target = pad_shape(tensor.shape[1:], card.patch_size)
    before = tuple((t - s) // 2 for t, s in zip(target, tensor.shape[1:]))
    if target != tensor.shape[1:]:
        pads = [(0, 0)] + [(b, t - s - b) for b, t, s in zip(before, target, tensor.shape[1:])]
        tensor = np.pad(tensor, pads)
    inverse = Inverse(tuple(images.shape[1:]), box, tuple(cropped.shape[1:]), card.axis_order, before)
    return np.ascontiguousarray(tensor), inverse


def crop_padding(volume: np.ndarray, inverse: Inverse) -> np.ndarray:
    """Drop the padding preprocess added (network layout kept)."""
    shape = inverse.cropped_shape[::-1] if inverse.axis_order == "zyx" else inverse.cropped_shape
    return volume[(Ellipsis,) + tuple(slice(b, b + s) for b, s in zip(inverse.pad_before, shape))]


def to_original_grid(volume: np.ndarray, inverse: Inverse, fill: float | int = 0) -> np.ndarray:
    """(K, *network-spatial) or (*network-spatial), padded or already unpadded → original (X, Y, Z) grid."""
    lead = volume.shape[:-3]
    net_shape = inverse.cropped_shape[::-1] if inverse.axis_order == "zyx" else inverse.cropped_shape
    crop = volume if volume.shape[-3:] == tuple(net_shape) else crop_padding(volume, inverse)
    if inverse.axis_order == "zyx":
        crop = np.moveaxis(crop, (-3, -2, -1), (-1, -2, -3))
    out = np.full(lead + inverse.original_shape, fill, dtype=volume.dtype)
    out[(Ellipsis,) + inverse.box] = crop
    return out
