"""Predictions made from a ground truth by known mistakes, to test lesion-wise evaluation against a reference.

Each function takes a label map (uint8, BraTS labels) and returns a new one with one kind of mistake a model
makes: a false-positive speck of an exact voxel count, a lesion missed, a lesion split in two by a cut, a
boundary moved (grown, shrunk or shifted), labels swapped inside a lesion, an empty prediction. Lesions are the
26-connected components of the labels named (the whole tumour by default), as the BraTS evaluations define
instances. Every choice is drawn from the ``rng`` given, so a prediction is the same on every run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg_edge.errors import InputError

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
WHOLE_TUMOUR = (1, 2, 3, 4)


def lesions(labels: np.ndarray, region: tuple[int, ...] = WHOLE_TUMOUR) -> tuple[np.ndarray, int]:
    """26-connected components of the voxels whose label is in ``region``: (component map, count)."""
    components, count = ndimage.label(np.isin(labels, region), structure=CONNECTIVITY_26)
    return components, int(count)


def _pick(labels: np.ndarray, rng: np.random.Generator, region: tuple[int, ...], what: str) -> np.ndarray:
    components, count = lesions(labels, region)
    if count == 0:
        raise InputError(f"no lesion of labels {list(region)} to {what} (expected a label map with one)")
    return components == int(rng.integers(1, count + 1))


def add_speck(labels: np.ndarray, rng: np.random.Generator, *, voxels: int, label: int,
              clearance: float = 6.0) -> np.ndarray:
    """A compact false positive of exactly ``voxels`` voxels of ``label``, at least ``clearance`` voxels from
    every labelled voxel and from the volume's edge (the voxels nearest a random centre: 26-connected)."""
    if voxels < 1:
        raise InputError(f"speck of {voxels} voxels (expected >= 1)")
    # chessboard distance never exceeds the Euclidean one, so the clearance holds; 10x faster than the EDT
    room = (ndimage.distance_transform_cdt(labels == 0, metric="chessboard") if labels.any()
            else np.full(labels.shape, np.inf))
    inner = np.zeros(labels.shape, dtype=bool)
    pad = int(np.ceil(clearance + np.cbrt(voxels)))
    inner[tuple(slice(pad, n - pad) for n in labels.shape)] = True
    candidates = np.argwhere(inner & (room > clearance + np.cbrt(voxels)))
    if len(candidates) == 0:
        raise InputError(f"no room for a speck of {voxels} voxels in a {labels.shape} label map")
    centre = candidates[rng.integers(len(candidates))]
    r = int(np.ceil(np.cbrt(voxels))) + 1
    box = np.argwhere(np.ones((2 * r + 1,) * 3, dtype=bool)) - r
    order = np.lexsort((box[:, 2], box[:, 1], box[:, 0], np.linalg.norm(box, axis=1)))
    out = labels.copy()
    out[tuple((box[order[:voxels]] + centre).T)] = label
    return out


def remove_lesion(labels: np.ndarray, rng: np.random.Generator, region: tuple[int, ...] = WHOLE_TUMOUR) -> np.ndarray:
    """A miss: one lesion of ``region`` (chosen at random) set to background."""
    out = labels.copy()
    out[_pick(labels, rng, region, "remove")] = 0
    return out


def split_lesion(labels: np.ndarray, rng: np.random.Generator, *, gap: int = 2,
                 region: tuple[int, ...] = WHOLE_TUMOUR) -> np.ndarray:
    """The largest lesion of ``region`` cut in two by a slab ``gap`` voxels thick through its centre, across
    its longest axis (BraTS 2023 dilates the whole mask 3 voxels before counting lesions, so both halves grow:
    a cut of up to 6 voxels still counts as one lesion there, 8 as two)."""
    components, count = lesions(labels, region)
    if count == 0:
        raise InputError(f"no lesion of labels {list(region)} to split (expected a label map with one)")
    sizes = np.bincount(components.ravel())[1:]
    lesion = components == int(np.argmax(sizes)) + 1
    hits = np.argwhere(lesion)
    axis = int(np.argmax(hits.max(axis=0) - hits.min(axis=0)))
    centre = int(np.round(hits[:, axis].mean())) + int(rng.integers(-1, 2))
    cut = np.zeros(labels.shape, dtype=bool)
    index = [slice(None)] * 3
    index[axis] = slice(centre - gap // 2, centre - gap // 2 + gap)
    cut[tuple(index)] = True
    out = labels.copy()
    out[lesion & cut] = 0
    return out


def shift_boundary(labels: np.ndarray, rng: np.random.Generator, *, mode: str,
                   region: tuple[int, ...] = WHOLE_TUMOUR) -> np.ndarray:
    """One lesion of ``region`` with its boundary moved by one voxel: ``grow`` (background next to it takes
    its nearest label), ``shrink`` (its outer voxels become background) or ``shift`` (moved 1-2 voxels along a
    random axis)."""
    lesion = _pick(labels, rng, region, "move")
    out = labels.copy()
    if mode == "grow":
        ring = ndimage.binary_dilation(lesion) & (labels == 0)
        _, nearest = ndimage.distance_transform_edt(~lesion, return_indices=True)
        out[ring] = labels[tuple(n[ring] for n in nearest)]
    elif mode == "shrink":
        out[lesion & ~ndimage.binary_erosion(lesion)] = 0
    elif mode == "shift":
        axis, step = int(rng.integers(3)), int(rng.choice([-2, -1, 1, 2]))
        moved = np.roll(np.where(lesion, labels, 0), step, axis=axis)
        out[lesion] = 0
        out[moved > 0] = moved[moved > 0]
    else:
        raise InputError(f"boundary mode '{mode}' (expected grow, shrink or shift)")
    return out


def swap_labels(labels: np.ndarray, rng: np.random.Generator, *, pairs: tuple[tuple[int, int], ...],
                region: tuple[int, ...] = WHOLE_TUMOUR) -> np.ndarray:
    """Inside one lesion of ``region``, each label ``a`` of ``pairs`` becomes ``b`` and ``b`` becomes ``a``
    (a pair ``(a, b)`` with ``b`` absent from the map relabels: e.g. (1, 4) NETC called resection cavity)."""
    lesion = _pick(labels, rng, region, "relabel")
    out = labels.copy()
    for a, b in pairs:
        out[lesion & (labels == a)] = b
        out[lesion & (labels == b)] = a
    return out


def empty_like(labels: np.ndarray) -> np.ndarray:
    """An empty prediction: background everywhere."""
    return np.zeros_like(labels)
