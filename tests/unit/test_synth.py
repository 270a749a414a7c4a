"""The synthetic phantom: determinism, label sets, background, and the contrasts it promises."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from seg_edge.synth import make_phantom, write_case
from seg_edge.synth.phantom import REFERENCE_SHAPE
from seg_edge.synth.writer import brats_affine, case_id

FLAIR, T1, T1CE, T2 = range(4)
GRID = (96, 96, 64)
SEEDS = range(8)


def phantom(seed: int, index: int = 0, shape=GRID, et_label: int = 4):
    return make_phantom(np.random.default_rng([seed, index]), shape, et_label)


@pytest.fixture(scope="module")
def phantoms():
    return [phantom(s) for s in SEEDS]


# ------------------------------------------------------------------------------------ determinism

def test_same_seed_and_index_are_identical():
    a, b = phantom(5, 2), phantom(5, 2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.has_et == b.has_et


def test_different_index_or_seed_differs():
    a = phantom(5, 2)
    for other in (phantom(5, 3), phantom(6, 2)):
        assert not np.array_equal(a.images, other.images)
        assert not np.array_equal(a.labels, other.labels)


def test_write_case_is_deterministic_and_brats_shaped(tmp_path):
    shape = (40, 44, 32)
    f1 = write_case(tmp_path / "one", 3, 1, shape)
    f2 = write_case(tmp_path / "two", 3, 1, shape)
    cid = case_id(3, 1)
    assert f1.name == cid == "SynBraTS_0003_001"
    names = sorted(p.name for p in f1.iterdir())
    assert names == sorted(f"{cid}_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2", "seg"))
    expected = phantom(3, 1, shape)
    for i, suffix in enumerate(("flair", "t1", "t1ce", "t2", "seg")):
        img1 = nib.load(f1 / f"{cid}_{suffix}.nii.gz")
        img2 = nib.load(f2 / f"{cid}_{suffix}.nii.gz")
        d1, d2 = np.asarray(img1.dataobj), np.asarray(img2.dataobj)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(d1, expected.labels if suffix == "seg" else expected.images[i])
        assert d1.dtype == (np.uint8 if suffix == "seg" else np.int16)
        np.testing.assert_array_equal(img1.affine, brats_affine(shape))
        assert int(img1.header["qform_code"]) == 1 and int(img1.header["sform_code"]) == 1
        assert img1.header.get_zooms() == (1.0, 1.0, 1.0)
    assert not list(f1.glob("*.part*"))


# ------------------------------------------------------------------------------------ label sets

def test_label_sets(phantoms):
    seen = set()
    for p in phantoms:
        values = set(np.unique(p.labels).tolist())
        assert values <= {0, 1, 2, 4}
        assert p.has_et == (4 in values)
        seen |= values
    assert seen == {0, 1, 2, 4}  # over several seeds every class appears


def test_et_label_3():
    for seed in (0, 1, 3):
        p4, p3 = phantom(seed), phantom(seed, et_label=3)
        assert set(np.unique(p3.labels).tolist()) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(p3.labels, np.where(p4.labels == 4, 3, p4.labels))
        np.testing.assert_array_equal(p3.images, p4.images)


def test_shape_and_dtypes(phantoms):
    for p in phantoms:
        assert p.images.shape == (4,) + GRID and p.images.dtype == np.int16
        assert p.labels.shape == GRID and p.labels.dtype == np.uint8


# ------------------------------------------------------------------------------------- background

def test_background_zero_and_brain_positive(phantoms):
    for p in phantoms:
        brain = p.images[0] > 0
        for ch in range(4):
            # the same brain in every modality: > 0 inside, exactly 0 outside
            np.testing.assert_array_equal(p.images[ch] > 0, brain)
            assert np.all(p.images[ch][~brain] == 0)
        assert p.images.min() >= 0
        assert not p.labels[~brain].any()  # the tumour lies in the brain
        frac = brain.mean()
        assert 0.1 < frac < 0.8
        # the brain does not touch the grid's faces (it is skull-stripped, centred)
        for axis in range(3):
            assert not np.take(brain, 0, axis=axis).any() and not np.take(brain, -1, axis=axis).any()


# -------------------------------------------------------------------------------------- contrasts

def _core(mask: np.ndarray) -> np.ndarray:
    """Voxels of a class not on its boundary: the render blurs (sigma 0.5-1 voxel), so one-voxel
    rims (common for ET on a downscaled grid) are mixed with their neighbours and carry no contrast."""
    return ndimage.binary_erosion(mask)


def _healthy(p, margin: int = 2) -> np.ndarray:
    """Brain away from the skull-strip edge and at least 3 voxels from any tumour label."""
    brain = p.images[0] > 0
    tumour_zone = ndimage.binary_dilation(p.labels > 0, iterations=3)
    return ndimage.binary_erosion(brain, iterations=margin) & ~tumour_zone


def _white_matter_ish(p) -> np.ndarray:
    """Deep healthy brain (inside the cortex ribbon) minus the CSF-like half (bright on T2)."""
    deep = _healthy(p, margin=7)
    t2 = p.images[T2][deep]
    wm = deep.copy()
    wm[deep] = t2 < np.median(t2)
    assert wm.sum() > 1000
    return wm


def test_et_brighter_than_white_matter_on_t1ce(phantoms):
    checked = 0
    for p in phantoms:
        et = _core(p.labels == 4)
        if et.sum() < 5:
            continue
        wm = _white_matter_ish(p)
        assert p.images[T1CE][et].mean() > 1.05 * p.images[T1CE][wm].mean()
        checked += 1
    assert checked >= 4


def test_oedema_bright_on_flair(phantoms):
    for p in phantoms:
        ed = _core(p.labels == 2)
        assert ed.sum() >= 10
        assert p.images[FLAIR][ed].mean() > 1.3 * p.images[FLAIR][_healthy(p)].mean()


def test_necrosis_darker_than_et_on_t1ce(phantoms):
    checked = 0
    for p in phantoms:
        ncr, et = _core(p.labels == 1), _core(p.labels == 4)
        if ncr.sum() < 5 or et.sum() < 5:
            continue
        assert p.images[T1CE][ncr].mean() < 0.7 * p.images[T1CE][et].mean()
        checked += 1
    assert checked >= 3


def test_contrasts_pooled_over_all_voxels(phantoms):
    """Without erosion too: pooled over cases, ET > white matter > necrosis on T1ce."""
    sums = {"et": [0.0, 0], "wm": [0.0, 0], "ncr": [0.0, 0]}
    for p in phantoms:
        wm = _white_matter_ish(p)
        scale = p.images[T1CE][wm].mean()  # per-case white matter: the random per-case gain drops out
        for key, mask in (("et", p.labels == 4), ("ncr", p.labels == 1), ("wm", wm)):
            sums[key][0] += float(p.images[T1CE][mask].sum()) / scale
            sums[key][1] += int(mask.sum())
    mean = {k: v[0] / v[1] for k, v in sums.items()}
    assert mean["et"] > mean["wm"] > mean["ncr"]


# ------------------------------------------------------------------------------------- full size

@pytest.mark.slow
def test_full_size_case_shape_and_time():
    t0 = time.perf_counter()
    p = make_phantom(np.random.default_rng([0, 0]))
    elapsed = time.perf_counter() - t0
    assert p.images.shape == (4,) + REFERENCE_SHAPE == (4, 240, 240, 155)
    assert p.labels.shape == REFERENCE_SHAPE
    assert elapsed < 10.0, f"full-size phantom took {elapsed:.1f} s (budget 10 s)"
