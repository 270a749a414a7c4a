"""Surface distances, HD95 and NSD as the official evaluation defines them, on shapes worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from seg_edge.evaluation import surface
from seg_edge.evaluation.lesionwise import panoptica_region
from seg_edge.evaluation.metrics import hd95 as legacy_hd95


def cubes(shift: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A 3×3×3 cube and the same cube moved ``shift`` voxels along the third axis."""
    ref = np.zeros((9, 9, 9), dtype=bool)
    ref[3:6, 3:6, 2:5] = True
    return ref, np.roll(ref, shift, axis=2)


def test_border_is_the_mask_minus_its_6_connected_erosion():
    ref, _ = cubes()
    b = surface.border(ref)
    assert b.sum() == 26 and not b[4, 4, 3]  # every voxel but the centre


def test_distances_by_hand_with_anisotropic_spacing():
    # Surfaces: each cube less its centre (26 voxels). Reference → prediction, spacing (1, 1, 2):
    # - the 9 voxels of the reference's z=2 face lie 1 voxel (2 mm) from the prediction's bottom face;
    # - the voxel over the reference's centre, on its top face, is the prediction's centre: 1 mm to its
    #   x neighbour (x spacing 1), 2 mm to its z neighbour;
    # - the other 16 surface voxels are surface voxels of the prediction too: 0.
    # The prediction → reference direction is the mirror image.
    ref, pred = cubes()
    from_ref, from_pred = surface.surface_distances(ref, pred, (1.0, 1.0, 2.0))
    for d in (from_ref, from_pred):
        assert sorted(d.tolist()) == [0.0] * 16 + [1.0] + [2.0] * 9
    # pooled: 52 values, 32 zeros, 2 ones, 18 twos; the 95th percentile sits at rank 48.45 → 2 mm
    assert surface.hd95(from_ref, from_pred) == pytest.approx(2.0)
    # NSD at the smallest spacing (1 mm): 17 of 26 on each side
    assert surface.nsd(from_ref, from_pred, 1.0) == pytest.approx(17 / 26)
    assert surface.nsd(from_ref, from_pred, 2.0) == pytest.approx(1.0)
    # a 0.5 mm tolerance keeps only the coinciding 16
    assert surface.nsd(from_ref, from_pred, 0.5) == pytest.approx(16 / 26)


def test_spacing_on_the_other_axes_changes_the_answer():
    # The same cubes with the 2 mm on the first axis instead: the faces are 1 mm apart, and the voxel over the
    # centre is 1 mm from its y neighbour, so every distance is 0 or 1 mm.
    ref, pred = cubes()
    from_ref, from_pred = surface.surface_distances(ref, pred, (2.0, 1.0, 1.0))
    assert sorted(from_ref.tolist()) == [0.0] * 16 + [1.0] * 10
    assert surface.hd95(from_ref, from_pred) == pytest.approx(1.0)
    assert surface.nsd(from_ref, from_pred, 1.0) == pytest.approx(1.0)


def test_pooled_hd95_is_not_the_legacy_max_of_directed_percentiles():
    # A 5×5×5 cube against its 3×3×3 core: of the reference's 98 surface voxels the 54 inside its faces are
    # 1 voxel from the core's surface, the 36 along its edges √2, the 8 corners √3; each of the core's 26
    # surface voxels touches a face of the reference: 1.
    ref = np.zeros((9, 9, 9), dtype=bool)
    ref[2:7, 2:7, 2:7] = True
    pred = np.zeros_like(ref)
    pred[3:6, 3:6, 3:6] = True
    from_ref, from_pred = surface.surface_distances(ref, pred, (1.0, 1.0, 1.0))
    assert sorted(from_ref.tolist()) == pytest.approx([1.0] * 54 + [2 ** 0.5] * 36 + [3 ** 0.5] * 8)
    assert sorted(from_pred.tolist()) == pytest.approx([1.0] * 26)
    pooled = np.sort(np.concatenate([from_ref, from_pred]))  # 124 values: 80 ones, 36 √2, 8 √3
    rank = 0.95 * 123  # 116.85: between the 117th and 118th, both √3
    assert pooled[int(rank)] == pytest.approx(3 ** 0.5)
    assert surface.hd95(from_ref, from_pred) == pytest.approx(3 ** 0.5)
    assert legacy_hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(3 ** 0.5)


def test_legacy_and_official_hd95_differ_where_one_side_is_far():
    # A 10×5×2 slab (all 100 voxels surface) and the same slab plus a 2×2×2 speck 15 voxels away: the speck's
    # 8 distances are 7.4 % of the prediction's 108 (its 95th percentile is one of them) but only 3.8 % of the
    # 208 pooled (the pooled 95th percentile is 0). The legacy HD95 takes the larger directed one.
    ref = np.zeros((30, 30, 4), dtype=bool)
    ref[0:10, 0:5, 1:3] = True
    pred = ref.copy()
    pred[25:27, 0:2, 1:3] = True
    from_ref, from_pred = surface.surface_distances(ref, pred, (1.0, 1.0, 1.0))
    assert surface.hd95(from_ref, from_pred) == 0.0
    assert legacy_hd95(pred, ref, (1.0, 1.0, 1.0)) >= 16.0


def test_global_figures_ignore_the_spacing_instance_figures_use_it():
    # panoptica computes the global metrics without the voxel spacing (HD95 in voxels, NSD at 0.5 voxel)
    # and the matched pairs' with it (NSD at the smallest spacing).
    ref, pred = cubes()
    s = panoptica_region("wt", ref, pred, (1.0, 1.0, 2.0))
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.global_dice == pytest.approx(2 * 18 / 54)
    assert s.global_hd95 == pytest.approx(1.0)
    assert s.global_nsd == pytest.approx(16 / 26)
    pair = s.pairs[0]
    assert pair.dice == pytest.approx(2 * 18 / 54)
    assert pair.hd95 == pytest.approx(2.0)
    assert pair.nsd == pytest.approx(17 / 26)
    assert pair.reference.volume_mm3 == pytest.approx(27 * 2.0)


def test_union_box_of_empty_masks_is_none():
    assert surface.union_box(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)) is None
