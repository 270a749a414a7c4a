"""Procedural brain + tumour phantom with per-case randomised MRI contrasts.

Anatomy: an irregular ellipsoidal brain with a folded grey-matter cortex, deep grey nuclei,
lateral ventricles and sulcal CSF around white matter. Tumour: a distorted sphere with a
necrotic core (1), an enhancing rim (ET) and oedema (2) that spreads further along white
matter than into grey matter. Contrasts follow what a radiologist expects (ET bright on T1ce,
oedema bright on T2/FLAIR, CSF dark on FLAIR and bright on T2, necrosis dark on T1ce) and are
randomised per case (SynthSeg-style): tissue means, bias field, noise, blur, small rotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from seg_edge.errors import InputError

REFERENCE_SHAPE = (240, 240, 155)
# Brain semi-axes in mm for the reference grid (left-right, anterior-posterior, inferior-superior).
BRAIN_AXES_MM = np.array([66.0, 82.0, 60.0])
CSF, GM, WM, DGM, ED, NCR, ET = 1, 2, 3, 4, 5, 6, 7
# Mean intensity per tissue class (rows: bg, CSF, GM, WM, deep GM, ED, NCR, ET);
# columns: FLAIR, T1, T1ce, T2.
TISSUE_MEANS = np.array([
    [0.00, 0.00, 0.00, 0.00],
    [0.12, 0.20, 0.22, 1.00],
    [0.55, 0.55, 0.55, 0.62],
    [0.42, 0.78, 0.74, 0.42],
    [0.52, 0.64, 0.62, 0.55],
    [0.92, 0.45, 0.47, 0.85],
    [0.58, 0.25, 0.20, 0.92],
    [0.72, 0.52, 1.00, 0.64],
], dtype=np.float32)


@dataclass(frozen=True)
class Phantom:
    """One synthetic case: images (4, X, Y, Z) int16 in FLAIR, T1, T1ce, T2 order; labels uint8; the lesions
    added to the main tumour (``tumours`` > 1 or ``satellites`` > 0; centres on the full grid)."""

    images: np.ndarray
    labels: np.ndarray
    has_et: bool
    lesions: tuple = field(default=())


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish random field varying over about ``cell`` voxels."""
    coarse = [max(2, int(np.ceil(s / cell)) + 1) for s in shape]
    field = rng.standard_normal(coarse).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse)]
    return ndimage.zoom(field, zoom, order=1, mode="nearest", grid_mode=True)[
        tuple(slice(0, s) for s in shape)]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    rot = np.eye(3)
    for axis in range(3):
        angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


def _coordinates(box: tuple[int, ...], rot: np.ndarray, axes: np.ndarray) -> list[np.ndarray]:
    """Brain-normalised coordinates (the brain is roughly the unit ball) over the box."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in box],
                        indexing="ij", sparse=True)
    out = []
    for row in range(3):
        comp = sum(np.float32(rot[row, k]) * grids[k] for k in range(3))
        out.append(comp / np.float32(axes[row]))
    return out


def _anatomy(u: list[np.ndarray], rng: np.random.Generator, box: tuple[int, ...]) -> np.ndarray:
    x, y, z = u
    r = np.sqrt(x * x + y * y + z * z)
    surface = _smooth_noise(box, rng, 12.0)
    folds = _smooth_noise(box, rng, 4.0)
    brain = (r < 1.0 + 0.035 * surface) & (z > -0.78 + 0.03 * surface)
    tissue = np.zeros(box, dtype=np.uint8)
    tissue[brain] = WM
    cortex = brain & (r > 0.84 + 0.05 * folds)
    tissue[cortex] = GM
    sulci = brain & (r > 0.9) & (folds > 0.9)
    tissue[sulci | (brain & (r > 0.985))] = CSF
    bend = 0.15 * y * y
    for side in (-1.0, 1.0):
        vx = (x - side * 0.14) / 0.09
        vy = (y + 0.05) / 0.32
        vz = (z - 0.12 + bend) / 0.13
        tissue[brain & (vx * vx + vy * vy + vz * vz < 1.0)] = CSF
        nx, ny, nz = (x - side * 0.33) / 0.12, (y + 0.02) / 0.17, (z + 0.02) / 0.15
        tissue[brain & (nx * nx + ny * ny + nz * nz < 1.0)] = DGM
    return tissue


def _tumour(u: list[np.ndarray], tissue: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Return tumour classes (0, ED, NCR, ET) over the box and whether ET is present."""
    box = tissue.shape
    small = rng.random() < 0.15
    radius = rng.uniform(0.06, 0.11) if small else rng.uniform(0.13, 0.30)
    side = rng.choice([-1.0, 1.0])
    centre = np.array([side * rng.uniform(0.22, 0.5), rng.uniform(-0.5, 0.45), rng.uniform(-0.25, 0.4)])
    stretch = rng.uniform(0.8, 1.25, size=3)
    d2 = sum(((u[k] - np.float32(centre[k])) / np.float32(radius * stretch[k])) ** 2 for k in range(3))
    d = np.sqrt(d2) * (1.0 + 0.22 * _smooth_noise(box, rng, 10.0))
    brain = tissue > 0
    core = brain & (d < 1.0)
    out = np.zeros(box, dtype=np.uint8)
    reach_wm = rng.uniform(1.5, 2.7)
    reach_gm = rng.uniform(1.05, 1.3)
    edema = ((d < reach_wm) & (tissue == WM)) | ((d < reach_gm) & ((tissue == GM) | (tissue == DGM)))
    out[edema & brain] = ED
    kind = rng.random()
    has_et = not small and kind >= 0.12 or small and kind >= 0.5
    if not has_et:
        out[core] = NCR
        return out, False
    necrotic = kind >= 0.25
    out[core] = ET
    if necrotic:
        frac = rng.uniform(0.45, 0.8)
        out[core & (d < frac * (1.0 + 0.1 * _smooth_noise(box, rng, 6.0)))] = NCR
    return out, bool((out == ET).any())


def _render(tissue: np.ndarray, rng: np.random.Generator, box: tuple[int, ...],
            fractions: np.ndarray | None = None) -> np.ndarray:
    means = TISSUE_MEANS * rng.uniform(0.88, 1.12, size=TISSUE_MEANS.shape).astype(np.float32)
    # keep the defining contrasts even after jitter
    means[ET, 2] = max(means[ET, 2], means[WM, 2] * 1.25)
    means[ED, 0] = max(means[ED, 0], means[WM, 0] * 1.5, means[GM, 0] * 1.25)
    means[NCR, 2] = min(means[NCR, 2], means[ET, 2] * 0.45)
    means[CSF, 3] = max(means[CSF, 3], means[GM, 3] * 1.3)
    texture = 1.0 + 0.04 * _smooth_noise(box, rng, 3.0)
    bias = np.exp(0.12 * _smooth_noise(box, rng, 48.0))
    images = np.empty((4,) + box, dtype=np.float32)
    healthy = np.isin(tissue, (CSF, GM, WM)) if fractions is not None else None
    for ch in range(4):
        img = means[tissue, ch] * texture
        if fractions is not None and healthy is not None:  # partial volume from template fractions (CSF, GM, WM)
            mix = np.tensordot(means[[CSF, GM, WM], ch], fractions, axes=1) / np.maximum(fractions.sum(0), 1e-3)
            img = np.where(healthy, mix * texture, img)
        img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.5, 1.0), truncate=3.0)
        img *= bias
        img += rng.normal(0.0, rng.uniform(0.01, 0.035), size=box).astype(np.float32)
        images[ch] = img * rng.uniform(400.0, 1600.0)
    return images


def _mni_anatomy(rng: np.random.Generator, shape: tuple[int, int, int], scale: float):
    from seg_edge.synth.mni import resampled_fractions

    rot = _rotation(rng, 6.0)
    fractions = resampled_fractions(rng, rot, scale, shape)
    box = fractions.shape[1:]
    brain = fractions.sum(0) > 0.5
    tissue = np.where(brain, np.argmax(fractions, axis=0).astype(np.uint8) + CSF, 0).astype(np.uint8)
    extent = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    axes = np.array([(e[-1] - e[0] + 1) / 2.0 for e in extent])
    return tissue, fractions, _coordinates(box, np.eye(3), axes), box


def make_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = REFERENCE_SHAPE,
                 et_label: int = 4, anatomy: str = "procedural", *, tumours: int = 1,
                 satellites: int = 0) -> Phantom:
    """Generate one case on a grid of ``shape`` voxels (1 mm), deterministic for a given ``rng``.

    ``anatomy`` is 'procedural' (no dependencies) or 'mni152' (nilearn's templates). ``tumours`` > 1 adds
    further tumours and ``satellites`` small lesions near them (``seg_edge.synth.multifocal``); with the
    defaults the case is the one earlier versions wrote.
    """
    scale = min(s / r for s, r in zip(shape, REFERENCE_SHAPE))
    fractions = None
    if anatomy == "mni152":
        tissue, fractions, u, box = _mni_anatomy(rng, shape, scale)
    elif anatomy == "procedural":
        axes = BRAIN_AXES_MM * scale * rng.uniform(0.92, 1.08, size=3)
        box = tuple(min(s, int(2 * a * 1.12) + 4) for s, a in zip(shape, axes))
        u = _coordinates(box, _rotation(rng, 6.0), axes)
        tissue = _anatomy(u, rng, box)
    else:
        raise InputError(f"anatomy '{anatomy}' (expected procedural or mni152)")
    tumour, has_et = _tumour(u, tissue, rng)
    lesions: list = []
    if tumours != 1 or satellites != 0:
        from seg_edge.synth.multifocal import add_lesions

        if tumours < 1:
            raise InputError(f"tumours {tumours} (expected >= 1)")
        # one draw seeds the lesions' own stream (their placement retries vary in number); without the options
        # nothing is drawn here, so default cases stay as they were
        tumour, lesions = add_lesions(tumour, tissue, np.random.default_rng(rng.integers(2 ** 63)),
                                      foci=tumours - 1, satellites=satellites)
        has_et = bool((tumour == ET).any())
    tissue = np.where(tumour > 0, tumour, tissue)
    brain = tissue > 0
    box_images = _render(tissue, rng, box, fractions)
    box_images = np.where(brain, np.clip(box_images, 1.0, 32000.0), 0.0)
    box_labels = np.zeros(box, dtype=np.uint8)
    box_labels[tissue == NCR] = 1
    box_labels[tissue == ED] = 2
    box_labels[tissue == ET] = et_label
    offset = [(s - b) // 2 + int(rng.integers(-2, 3)) if s - b >= 4 else (s - b) // 2
              for s, b in zip(shape, box)]
    where = tuple(slice(o, o + b) for o, b in zip(offset, box))
    images = np.zeros((4,) + tuple(shape), dtype=np.int16)
    images[(slice(None),) + where] = np.rint(box_images).astype(np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[where] = box_labels
    shift = np.array(offset)
    placed = tuple(replace(lesion, centre=tuple(int(c) for c in np.array(lesion.centre) + shift))
                   for lesion in lesions)
    return Phantom(images=images, labels=labels, has_et=has_et, lesions=placed)
