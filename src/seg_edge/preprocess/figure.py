"""The ``predict --raw --preview`` picture: what a person checks before trusting a raw study's result.

On the reference series' own grid (the scanner's space, skull included), three planes through the tumour:
the brain mask's outline over the reference; each co-registered series' edges over the reference (a
series that moved, or was registered wrongly, shows edges off the reference's anatomy); the labels. Pillow
only, through the runtime's figure helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from seg_edge.runtime.pictures import Line, Row, Volume3D, figure, require_pillow, tumour_centre, volume_lines

if TYPE_CHECKING:
    from PIL import Image

EDGE_SIGMA_MM = 1.0
EDGE_QUANTILE = 0.85  # of the gradient magnitude inside the head: the strongest 15 % are drawn as edges
SLAB = 6  # voxels each side of a shown plane: the Gaussian's reach (4 σ) and a voxel of rounding


def outline(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that touch its outside (a one-voxel contour)."""
    mask = mask.astype(bool)
    rim: np.ndarray = mask & ~ndimage.binary_erosion(mask)
    return rim


def edges(volume: np.ndarray, spacing: tuple[float, ...], within: np.ndarray) -> np.ndarray:
    """Strong intensity edges of ``volume`` inside ``within`` (bool): gradient magnitude, Gaussian σ 1 mm,
    above its ``EDGE_QUANTILE`` there, kept where it is near its local maximum (lines, not bands)."""
    sigma = [EDGE_SIGMA_MM / s for s in spacing]
    magnitude = ndimage.gaussian_gradient_magnitude(volume.astype(np.float32), sigma)
    inside = magnitude[within]
    if inside.size == 0 or float(inside.max()) <= 0.0:
        return np.zeros(volume.shape, dtype=bool)
    strong = within & (magnitude > np.quantile(inside, EDGE_QUANTILE))
    ridge = magnitude >= ndimage.maximum_filter(magnitude, size=3) * 0.9
    kept: np.ndarray = strong & ridge
    return kept


def edges_near(volume: np.ndarray, spacing: tuple[float, ...], within: np.ndarray,
               centre: tuple[int, ...]) -> np.ndarray:
    """``edges`` on the three slabs through ``centre`` only (the planes the figure shows), zero elsewhere:
    a tenth of the work of the whole volume."""
    out = np.zeros(volume.shape, dtype=bool)
    for axis, c in enumerate(centre):
        slab = [slice(None)] * 3
        slab[axis] = slice(max(c - SLAB, 0), min(c + SLAB + 1, volume.shape[axis]))
        region = tuple(slab)
        out[region] |= edges(volume[region], spacing, within[region])
    return out


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels (the whole grid for an empty mask)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(np.nonzero(mask), mask.shape))


def qc_image(reference: tuple[str, np.ndarray], others: dict[str, np.ndarray], brain: np.ndarray,
             labels: np.ndarray | None, affine: np.ndarray, spacing: tuple[float, ...], *,
             volumes: dict[str, float] | None, et: int, title: str, lines: list[Line] | None = None) -> Image.Image:
    """Rows: the brain mask's outline, then each series' edges, over the reference; then the labels.

    ``reference``: (name, volume) on its own grid; ``others``: name → that series resampled onto the
    reference grid; ``brain``: the brain mask there; arrays in NIfTI order with ``affine`` (RAS).
    """
    require_pillow()
    name, image = reference
    box = _box(brain.astype(bool), margin=8)  # the brain and a rim of skull: the rest is not looked at
    start = np.eye(4)
    start[:3, 3] = [b.start for b in box]
    affine = affine @ start
    image, brain = image[box], brain[box].astype(bool)
    others = {k: v[box] for k, v in others.items()}
    labels = None if labels is None else labels[box]
    head = ndimage.binary_dilation(brain, iterations=3)
    where = tumour_centre(labels if labels is not None else np.zeros(brain.shape, np.uint8), brain)
    masks: dict[str, np.ndarray] = {"brain": outline(brain).astype(np.uint8)}
    for other, volume in others.items():
        masks[f"edges:{other}"] = edges_near(volume, spacing, head, where).astype(np.uint8)
    if labels is not None:
        masks["labels"] = labels.astype(np.uint8)
    vol = Volume3D.canonical({name: image}, masks, affine, spacing)
    centre = tumour_centre(vol.labels.get("labels", vol.labels["brain"]), vol.labels["brain"])
    shown = "T1ce" if name == "t1ce" else name.upper()
    rows = [Row(f"brain mask\nover {shown}", name, None, "brain")]
    rows += [Row(f"{o.upper() if o != 't1ce' else 'T1ce'} edges\nover {shown}", name, None, f"edges:{o}")
             for o in others]
    if labels is not None:
        rows.append(Row(f"labels\nover {shown}", name, "labels"))
    legend: list[Line] = list(lines or [])
    if volumes is not None:
        legend += volume_lines(volumes, et)
    return figure(vol, rows, centre, et, title, legend)
