"""Skull stripping of a T1-weighted (or T1ce) head with deepbet's two networks, run as ONNX without torch.

deepbet (Fisch et al. 2024, MIT licence; ``src/seg_edge/assets/skullstrip/LICENSE.deepbet``) segments the brain
in two passes of a LinkNet3d: a bounding-box network sees the whole field of view squeezed to 128³ voxels, and
the largest connected part of its mask gives a box around the brain (10 % margin each side); a second network
sees that box squeezed to 256³ and gives the brain's probability. Both were converted from deepbet 1.0.2's
TorchScript files by ``tools/convert_deepbet.py`` (figures in PROVENANCE.json beside them). This module is
deepbet's own pre- and post-processing (``deepbet.bet.BrainExtraction``) rewritten in numpy and scipy:

- the volume is put in the closest RAS orientation by flipping and permuting axes (nibabel's
  ``as_closest_canonical``; no interpolation), and squeezed to the networks' shapes by PyTorch's
  ``nearest-exact`` rule, whatever its voxel size: that is what the networks were trained on;
- intensities are clipped to the 0.5 and 99.5 percentiles of the 128³ volume, scaled to 0–1, standardised
  (unbiased std, as torch's) and mapped to mean 0.449, std 0.226;
- probability > 0.5, then within the box: the largest 26-connected component, its holes filled; no dilation.

The mask comes back on the input image's own grid (the inverse flips and permutations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from seg_edge.errors import ArtifactError, InputError

MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "skullstrip"
BBOX_MODEL, MASK_MODEL = "deepbet_bbox.onnx", "deepbet_mask.onnx"
BBOX_SHAPE, MASK_SHAPE = (128, 128, 128), (256, 256, 256)
LOW_QUANTILE, HIGH_QUANTILE = 0.005, 0.995
MEAN, STD = 0.449, 0.226  # the ImageNet-like statistics deepbet maps its standardised input to
THRESHOLD = 0.5
BOX_MARGIN = 0.1  # of the box's size, on each side
BOX_PLANE_FRACTION = 0.02  # a 128² plane belongs to the box when this fraction of it is brain
MIN_VOXELS_PER_AXIS = 4
# A newborn's brain is about 350 mL: a smaller mask is not a whole brain (a slab, or no head at all). The
# networks do find a "brain" of plausible size in things that are not heads (measured: 2608 mL in smoothed
# noise, 1809 mL in a textured ellipsoid), so this floor refuses only the hopeless; a non-brain series is
# refused by the registration's quality control.
MIN_BRAIN_ML = 300.0
RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]])
# LPS ↔ RAS: x and y change sign
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# 26-connectivity: cc3d's default, which deepbet's largest-component step uses
FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class BrainMask:
    """The brain of one head: a uint8 0/1 mask on the input image's grid, its volume and the time taken."""

    mask: sitk.Image
    volume_ml: float
    seconds: float


def brain_mask(image: sitk.Image, *, threads: int = 1, source: str = "image") -> BrainMask:
    """The brain mask of ``image`` (a T1-weighted or T1ce head, skull and scalp included, any grid).

    ``threads`` is ONNX Runtime's intra-op thread count. ``source`` names the image in errors. An image that is
    not a 3D scalar volume, has NaNs, has no contrast, or in which the networks find no brain or one smaller
    than ``MIN_BRAIN_ML`` is an InputError.
    """
    start = time.perf_counter()
    if threads < 1:
        raise InputError(f"skull stripping threads {threads} (expected at least 1)")
    volume, ornt = _canonical(image, source)
    probability, box = _probability(volume, threads, source)
    mask = probability > THRESHOLD
    mask[box] = _largest_component(mask[box], source, "brain mask")
    mask[box] = ndimage.binary_fill_holes(mask[box])
    native = nib.apply_orientation(mask, nib.orientations.ornt_transform(RAS_ORNT, ornt))
    out = sitk.GetImageFromArray(np.ascontiguousarray(native.transpose(2, 1, 0).astype(np.uint8)))
    out.CopyInformation(image)
    volume_ml = float(mask.sum()) * float(np.prod(image.GetSpacing())) / 1000.0
    if volume_ml < MIN_BRAIN_ML:
        raise InputError(f"{source}: a brain mask of {volume_ml:.0f} mL (expected at least {MIN_BRAIN_ML:.0f} mL: "
                         f"a T1-weighted image of a whole head)")
    return BrainMask(out, volume_ml, time.perf_counter() - start)


def _canonical(image: sitk.Image, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The image's voxels as float32 in the closest RAS orientation (x, y, z index order), and that orientation
    (nibabel's ``io_orientation`` of its RAS affine), after the checks every input gets."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source}: a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                         f"component(s) per voxel (expected a 3D scalar volume of a head)")
    size = tuple(int(s) for s in image.GetSize())
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{source}: size {size} voxels (expected at least {MIN_VOXELS_PER_AXIS} along every "
                         f"axis: a 3D volume of a head, not a slice)")
    values = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(f"{source}: has {int(values.size - finite.sum())} NaN or infinite voxels (expected "
                         f"finite intensities)")
    if values.min() == values.max():
        raise InputError(f"{source}: every voxel is {float(values.min()):g} (expected an image of a head)")
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    ornt = nib.io_orientation(LPS_TO_RAS @ affine)
    return np.ascontiguousarray(nib.apply_orientation(values, ornt), dtype=np.float32), ornt


def _probability(volume: np.ndarray, threads: int, source: str) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The brain's probability on ``volume``'s grid (0 outside the box) and the box around the brain."""
    small = resize_nearest(volume, BBOX_SHAPE)
    low, high = np.quantile(small, [LOW_QUANTILE, HIGH_QUANTILE]).astype(np.float32)
    if high <= low:
        raise InputError(f"{source}: 99% of the image's voxels have one value, {float(low):g} (expected an "
                         f"image of a head)")
    coarse = _run(BBOX_MODEL, normalise(small, low, high), threads)
    box = bounding_box(_largest_component(coarse > THRESHOLD, source, "head's bounding box"), volume.shape,
                       source)
    crop = resize_nearest(volume[box], MASK_SHAPE)
    fine = _run(MASK_MODEL, normalise(crop, low, high), threads)
    probability = np.zeros(volume.shape, dtype=np.float32)
    probability[box] = resize_nearest(fine, probability[box].shape)
    return probability, box


def resize_nearest(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``volume`` on ``shape`` voxels by PyTorch's ``nearest-exact`` interpolation (pixel centres, no
    align_corners): output voxel i takes input voxel floor((i + 0.5) · in/out), computed in float32 as torch
    does, so that the indices are torch's."""
    index = []
    for size_in, size_out in zip(volume.shape, shape):
        scale = np.float32(size_in) / np.float32(size_out)
        centres = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale
        index.append(np.minimum(np.floor(centres).astype(np.int64), size_in - 1))
    return np.ascontiguousarray(volume[np.ix_(*index)])


def normalise(volume: np.ndarray, low: np.floating[Any], high: np.floating[Any]) -> np.ndarray:
    """deepbet's input normalisation: clipped to [low, high] and scaled to 0–1, then standardised and given the
    mean and standard deviation the networks were trained with."""
    scaled = np.clip((volume - low) / (high - low), 0.0, 1.0, dtype=np.float32)
    spread = scaled.std(ddof=1)  # torch's Tensor.std is the unbiased one
    return np.asarray(STD * (scaled - scaled.mean()) / spread + MEAN, dtype=np.float32)


def bounding_box(coarse: np.ndarray, shape: tuple[int, ...], source: str) -> tuple[slice, ...]:
    """deepbet's box around the brain: the planes of the 128³ mask that are at least 2 % brain, scaled to
    ``shape``, grown by 10 % of its size on each side, clipped to the volume. In float32 with round-half-to-even
    and truncation towards zero, as deepbet's torch code."""
    ranges = [np.flatnonzero(coarse.mean(axis=axes, dtype=np.float32) > BOX_PLANE_FRACTION)
              for axes in ((1, 2), (0, 2), (0, 1))]
    if any(r.size == 0 for r in ranges):
        raise InputError(f"{source}: the head's bounding box has no plane that is {BOX_PLANE_FRACTION:.0%} brain "
                         f"(expected a T1-weighted image of a head)")
    scale = np.asarray(shape, dtype=np.float32) / np.asarray(coarse.shape, dtype=np.float32)
    centre = scale * np.asarray([(r.max() + 1 + r.min()) / 2 for r in ranges], dtype=np.float32)
    extent = scale * np.asarray([r.max() + 1 - r.min() for r in ranges], dtype=np.float32)
    extent = (np.float32(1) + np.float32(2) * np.float32(BOX_MARGIN)) * extent
    centre, extent = np.round(centre), np.round(extent)
    return tuple(slice(max(0, int(c - e / 2)), min(s, int(c + e / 2)))
                 for c, e, s in zip(centre, extent, shape))


def _largest_component(mask: np.ndarray, source: str, what: str) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=FULL)
    if count == 0:
        raise InputError(f"{source}: the {what} is empty (expected a T1-weighted image of a head)")
    largest = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    return np.asarray(labels == largest)


def _run(name: str, volume: np.ndarray, threads: int) -> np.ndarray:
    """The brain channel of one network's softmax for ``volume``."""
    session = _session(name, threads)
    output = session.run(None, {session.get_inputs()[0].name: volume[None, None]})[0]
    return np.asarray(output[0, 1], dtype=np.float32)


@lru_cache(maxsize=4)
def _session(name: str, threads: int) -> Any:
    """One ONNX Runtime session per network and thread count, kept: loading one takes about 0.1 s."""
    import onnxruntime as ort

    path = MODEL_DIR / name
    if not path.is_file():
        raise ArtifactError(f"{path}: the skull-stripping model is missing (expected it in the package; "
                            f"tools/convert_deepbet.py writes it)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types, not exported stably
        raise ArtifactError(f"{path}: ONNX Runtime cannot load the skull-stripping model ({exc})") from exc
