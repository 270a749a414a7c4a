"""Multifocal tumours and satellites for the phantom: more lesions per case, for lesion-wise evaluation.

The phantom's main tumour stays as it is; this module adds ``foci`` further tumours (a core of necrosis (NCR)
and enhancing rim (ET) inside oedema (ED) that spreads further in white matter than in grey, as the main one)
placed so that their oedema stays clear of every lesion already there, and ``satellites``: small enhancing
lesions (1-3 voxels in radius, a necrotic centre when large enough) near one of the tumours, outside its oedema.
Satellites alternate between *near* (their nearest voxel 2 to 3 voxels from the tumour's whole extent: not
touching, so a lesion of its own for panoptica's connected components, yet inside the tumour's own 3-voxel
dilation, so counted with its lesion by BraTS 2023's whole-tumour rule) and *far* (11 to 14 voxels). BraTS 2023
dilates the whole ground truth, satellite included, 3 times with the 18-connected structure and merges what then
touches: each dilation reaches at most 3·√2 voxels, so lesions more than 2·3·√2 + √3 ≈ 10.2 voxels apart are never
merged — the far satellites, and every pair of lesions that is not a satellite and its tumour (``CLEAR``).
Distances are between voxel centres, in voxels, Euclidean. Everything is drawn from the ``rng`` given, so a case
is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg_edge.errors import InputError
from seg_edge.synth.phantom import DGM, ED, ET, GM, NCR, WM

NEAR_GAP = (2.0, 3.0)  # nearest-voxel distance of a near satellite: not 26-adjacent, inside a 3-voxel dilation
FAR_GAP = (11.0, 14.0)  # two 3-voxel dilations (each at most 3·√2 voxels) cannot touch across 11 voxels
CLEAR = 11.0  # voxels between lesions that are not a satellite and its tumour, for the same reason
MAX_TRIES = 100


@dataclass(frozen=True)
class Lesion:
    """One added lesion: ``kind`` 'focus', 'near' or 'far' satellite; centre in voxels (of the box ``add_lesions``
    works on; ``Phantom.lesions`` gives it on the full grid), radius in voxels, and for satellites the
    nearest-voxel distance to its tumour and that tumour's index (0: the main tumour, then the foci in order)."""

    kind: str
    centre: tuple[int, int, int]
    radius: float
    gap: float = 0.0
    parent: int = 0


def add_lesions(tumour: np.ndarray, tissue: np.ndarray, rng: np.random.Generator, *, foci: int,
                satellites: int) -> tuple[np.ndarray, list[Lesion]]:
    """``tumour`` (0, ED, NCR, ET over the phantom's box) with ``foci`` tumours and ``satellites`` satellites
    added; the lesions added, in order. Raises InputError when the brain has no room left for one."""
    if foci < 0 or satellites < 0:
        raise InputError(f"foci {foci}, satellites {satellites} (expected counts >= 0)")
    out = tumour.copy()
    brain = tissue > 0
    lesions: list[Lesion] = []
    tumours = [tumour > 0]
    scale = float(np.cbrt(brain.sum())) / 100.0  # ~1 on the reference grid's brain
    for _ in range(foci):
        radius = max(float(rng.uniform(4.0, 7.0)) * scale, 3.0)
        centre, mask = _place_focus(out, tissue, rng, radius)
        out = np.where(mask > 0, mask, out)
        tumours.append(mask > 0)
        lesions.append(Lesion(kind="focus", centre=centre, radius=round(radius, 3)))
    for k in range(satellites):
        first = int(rng.integers(len(tumours)))
        gap = NEAR_GAP if k % 2 == 0 else FAR_GAP
        radius = float(rng.uniform(1.2, 3.0))
        parent, (centre, ball, found) = _satellite_of_any(out, brain, tumours, first, rng, radius, gap)
        out[ball] = ET
        voxels = np.argwhere(ball)
        inner = voxels[np.linalg.norm(voxels - np.array(centre), axis=1) < radius - 1.5]
        out[tuple(inner.T)] = NCR  # a necrotic centre in the larger satellites
        kind = "near" if gap is NEAR_GAP else "far"
        lesions.append(Lesion(kind=kind, centre=centre, radius=round(radius, 3), gap=round(found, 3), parent=parent))
    return out, lesions


def _ball_distance(shape: tuple[int, ...], centre: tuple[int, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))


def _place_focus(tumour: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                 radius: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """A tumour of core radius ``radius`` whose every voxel (oedema included) keeps more than ``CLEAR`` voxels
    from every lesion present: centres drawn where the core fits, the focus drawn, kept when it is clear."""
    clear = ndimage.distance_transform_edt(tumour == 0) if tumour.any() else np.full(tumour.shape, np.inf)
    inner = ndimage.binary_erosion(tissue > 0, iterations=max(1, int(radius)))
    candidates = np.argwhere(inner & (clear > 1.5 * radius + CLEAR))
    reach = int(np.ceil(2.0 * radius * 1.25 * 1.3)) + 2  # oedema reach x stretch x lumps: the most they draw
    for _ in range(MAX_TRIES if len(candidates) else 0):
        centre = tuple(int(v) for v in candidates[rng.integers(len(candidates))])
        box = _box(centre, centre, reach, tissue.shape)
        local = tuple(int(c) - b.start for c, b in zip(centre, box))
        mask = np.zeros(tissue.shape, dtype=np.uint8)
        mask[box] = _focus(tissue[box], rng, local, radius)
        if float(clear[mask > 0].min()) > CLEAR:
            return centre, mask  # type: ignore[return-value]
    raise InputError(f"no room for another tumour of radius {radius:.1f} voxels in a brain of "
                     f"{int((tissue > 0).sum())} voxels (expected fewer --tumours or a larger --shape)")


def _box(low: tuple[int, ...] | np.ndarray, high: tuple[int, ...] | np.ndarray, pad: int,
         shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box from ``low`` to ``high`` (inclusive) grown by ``pad`` voxels, inside ``shape``."""
    return tuple(slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n)) for a, b, n in zip(low, high, shape))


def _focus(tissue: np.ndarray, rng: np.random.Generator, centre: tuple[int, ...], radius: float) -> np.ndarray:
    """Tumour classes (0, ED, NCR, ET) of one focus: a distorted ellipsoid core, ET rim around NCR, oedema."""
    stretch = rng.uniform(0.8, 1.25, size=3)
    grids = np.ogrid[tuple(slice(0, n) for n in tissue.shape)]
    d = np.sqrt(sum(((g - c) / (radius * s)) ** 2 for g, c, s in zip(grids, centre, stretch)))
    d = d * (1.0 + 0.15 * _lumps(tissue.shape, rng, centre, radius))
    brain = tissue > 0
    out = np.zeros(tissue.shape, dtype=np.uint8)
    reach_wm, reach_gm = rng.uniform(1.5, 2.0), rng.uniform(1.05, 1.3)
    edema = ((d < reach_wm) & (tissue == WM)) | ((d < reach_gm) & ((tissue == GM) | (tissue == DGM)))
    out[edema & brain] = ED
    core = brain & (d < 1.0)
    out[core] = ET
    out[core & (d < rng.uniform(0.45, 0.75))] = NCR
    return out


def _lumps(shape: tuple[int, ...], rng: np.random.Generator, centre: tuple[int, ...], radius: float) -> np.ndarray:
    """A smooth random field near ``centre`` (a few random cosine waves: cheap on any grid size)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    field = np.zeros([1] * len(shape), dtype=np.float64)
    for _ in range(3):
        k = rng.normal(size=3) / max(radius, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        field = field + np.cos(sum(kk * (g - c) for kk, g, c in zip(k, grids, centre)) + phase)
    return field / np.sqrt(3.0)


def _satellite_of_any(tumour: np.ndarray, brain: np.ndarray, tumours: list[np.ndarray], first: int,
                      rng: np.random.Generator, radius: float,
                      gap: tuple[float, float]) -> tuple[int, tuple[tuple[int, int, int], np.ndarray, float]]:
    """A satellite of tumour ``first``, or where it has no room, of the next tumour that has."""
    order = [(first + step) % len(tumours) for step in range(len(tumours))]
    for parent in order[:-1]:
        try:
            return parent, _place_satellite(tumour, brain, tumours[parent], rng, radius, gap)
        except InputError:
            continue
    return order[-1], _place_satellite(tumour, brain, tumours[order[-1]], rng, radius, gap)


def _place_satellite(tumour: np.ndarray, brain: np.ndarray, parent: np.ndarray, rng: np.random.Generator,
                     radius: float, gap: tuple[float, float]) -> tuple[tuple[int, int, int], np.ndarray, float]:
    """A ball of ``radius`` whose nearest voxel lies ``gap`` voxels from ``parent`` and > ``CLEAR`` from any other
    lesion; the centre, the ball and the distance found. Works in a box around the parent (distances to lesions
    outside it are larger than any it looks for)."""
    hits = np.argwhere(parent)
    box = _box(hits.min(axis=0), hits.max(axis=0), int(gap[1] + radius + CLEAR) + 2, tumour.shape)
    origin = np.array([b.start for b in box])
    centre, ball, found = _satellite_in(tumour[box], brain[box], parent[box], rng, radius, gap)
    full = np.zeros(tumour.shape, dtype=bool)
    full[box] = ball
    return tuple(int(c) for c in np.array(centre) + origin), full, found  # type: ignore[return-value]


def _satellite_in(tumour: np.ndarray, brain: np.ndarray, parent: np.ndarray, rng: np.random.Generator,
                  radius: float, gap: tuple[float, float]) -> tuple[tuple[int, ...], np.ndarray, float]:
    to_parent = ndimage.distance_transform_edt(~parent)
    others = (tumour > 0) & ~parent
    to_others = ndimage.distance_transform_edt(~others) if others.any() else np.full(tumour.shape, np.inf)
    free = (tumour == 0) & brain
    want = (to_parent > gap[0] + radius - 0.5) & (to_parent < gap[1] + radius + 0.5) & free
    want &= to_others > radius + CLEAR
    candidates = np.argwhere(want)
    for _ in range(MAX_TRIES if len(candidates) else 0):
        centre = tuple(int(v) for v in candidates[rng.integers(len(candidates))])
        ball = _ball_distance(tumour.shape, centre) <= radius
        if not (ball & ~free).any():
            found = float(to_parent[ball].min())
            if gap[0] <= found <= gap[1] and float(to_others[ball].min()) > CLEAR:
                return centre, ball, found  # type: ignore[return-value]
    raise InputError(f"no room for a satellite {gap[0]:g}-{gap[1]:g} voxels from its tumour (expected fewer "
                     f"--satellites or a larger --shape)")
