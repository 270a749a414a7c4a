"""MNI152-template anatomy (nilearn's shipped templates): labels, geometry, contrasts, determinism."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from seg_edge.errors import InputError, MissingExtra
from seg_edge.synth import mni
from seg_edge.synth.phantom import make_phantom

pytest.importorskip("nilearn")
SHAPE = (120, 120, 78)


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(np.random.default_rng([77, i]), SHAPE, anatomy="mni152") for i in range(3)]


def test_mni_phantom_is_valid_and_deterministic(phantoms):
    again = make_phantom(np.random.default_rng([77, 0]), SHAPE, anatomy="mni152")
    assert np.array_equal(again.images, phantoms[0].images) and np.array_equal(again.labels, phantoms[0].labels)
    for p in phantoms:
        assert p.images.shape == (4,) + SHAPE and p.images.dtype == np.int16
        assert set(np.unique(p.labels).tolist()) <= {0, 1, 2, 4}
        brain = p.images[0] > 0
        assert all(np.array_equal(brain, p.images[c] > 0) for c in range(4)), "one brain mask for all modalities"
        assert (p.labels[~brain] == 0).all()
        # the brain fills a realistic part of the grid and does not touch its faces
        assert 0.15 < brain.mean() < 0.5
        assert not brain[0].any() and not brain[-1].any() and not brain[:, 0].any() and not brain[:, -1].any()


def test_mni_contrasts(phantoms):
    flair_ed, flair_healthy, t1ce_et, t1ce_healthy = [], [], [], []
    for p in phantoms:
        healthy = (p.images[0] > 0) & (p.labels == 0)
        flair_healthy.append(p.images[0][healthy].mean())
        t1ce_healthy.append(p.images[2][healthy].mean())
        if (p.labels == 2).any():
            flair_ed.append(p.images[0][p.labels == 2].mean() / flair_healthy[-1])
        if (p.labels == 4).any():
            t1ce_et.append(p.images[2][p.labels == 4].mean() / t1ce_healthy[-1])
    assert flair_ed and min(flair_ed) > 1.2, "oedema is bright on FLAIR"
    assert t1ce_et and min(t1ce_et) > 1.1, "enhancing tumour is bright on T1ce"


def test_unknown_anatomy_and_missing_nilearn(monkeypatch):
    with pytest.raises(InputError, match="anatomy"):
        make_phantom(np.random.default_rng(0), SHAPE, anatomy="atlas")
    mni.tissue_maps.cache_clear()
    monkeypatch.setitem(sys.modules, "nilearn", None)
    try:
        with pytest.raises(MissingExtra, match=r"seg-edge\[synth\]"):  # exit 3, like every missing extra
            make_phantom(np.random.default_rng(0), SHAPE, anatomy="mni152")
    finally:
        mni.tissue_maps.cache_clear()
