"""seg_edge.synth.perturb: each mistake does exactly what it says, on label maps built by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seg_edge.errors import InputError
from seg_edge.synth.perturb import (
    add_speck,
    empty_like,
    lesions,
    remove_lesion,
    shift_boundary,
    split_lesion,
    swap_labels,
)


def _two_lesions() -> np.ndarray:
    """A 12x8x8 lesion (oedema around a 1 core and a 3 rim) and a 4x4x4 one of label 3, far apart."""
    labels = np.zeros((48, 40, 32), dtype=np.uint8)
    labels[6:18, 6:14, 6:14] = 2
    labels[9:15, 8:12, 8:12] = 3
    labels[11:13, 9:11, 9:11] = 1
    labels[30:34, 25:29, 20:24] = 3
    return labels


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("voxels", [1, 5, 19, 20, 21, 49, 50, 51, 80])
def test_a_speck_has_exactly_the_voxels_asked_for_in_one_piece_clear_of_the_rest(voxels):
    labels = _two_lesions()
    out = add_speck(labels, rng(voxels), voxels=voxels, label=1)
    added = out != labels
    assert added.sum() == voxels and (out[added] == 1).all()
    assert lesions(added.astype(np.uint8), (1,))[1] == 1
    assert ndimage.distance_transform_edt(labels == 0)[added].min() > 6.0
    assert np.array_equal(add_speck(labels, rng(voxels), voxels=voxels, label=1), out)  # seeded


def test_a_speck_without_room_is_refused():
    with pytest.raises(InputError, match="no room"):
        add_speck(np.ones((20, 20, 20), dtype=np.uint8), rng(), voxels=5, label=3)


def test_remove_lesion_removes_one_whole_lesion_and_nothing_else():
    labels = _two_lesions()
    out = remove_lesion(labels, rng(1))
    assert lesions(out)[1] == 1
    kept = out > 0
    assert np.array_equal(out[kept], labels[kept])
    core_only = remove_lesion(labels, rng(2), region=(1,))
    assert not (core_only == 1).any() and (core_only == 2).sum() == (labels == 2).sum()


@pytest.mark.parametrize("gap", [2, 8])
def test_split_cuts_the_largest_lesion_in_two_with_a_gap_of_that_width(gap):
    labels = _two_lesions()
    out = split_lesion(labels, rng(3), gap=gap)
    assert lesions(out)[1] == 3
    removed = (labels > 0) & (out == 0)
    assert np.unique(np.argwhere(removed)[:, 0]).size == gap  # a slab across the longest axis (x)
    # BraTS 2023 dilates the whole mask 3 times (18-connected): both halves grow, and meet across a 2-voxel cut
    # (across up to 6), not across an 8-voxel one
    dilated = ndimage.binary_dilation(out > 0, ndimage.generate_binary_structure(3, 2), iterations=3)
    assert (lesions(dilated.astype(np.uint8), (1,))[1] == 2) == (gap == 2)


def test_boundaries_grow_shrink_and_shift_by_a_voxel():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[10:20, 10:20, 10:20] = 2
    labels[13:17, 13:17, 13:17] = 3
    grown = shift_boundary(labels, rng(), mode="grow")
    assert (grown > 0).sum() == 10 ** 3 + 6 * 10 ** 2 and (grown[grown != labels] == 2).all()  # one face layer
    shrunk = shift_boundary(labels, rng(), mode="shrink")
    assert (shrunk > 0).sum() == 8 ** 3
    shifted = shift_boundary(labels, rng(4), mode="shift")
    assert (shifted > 0).sum() == 10 ** 3 and not np.array_equal(shifted, labels)
    assert sorted(np.unique(shifted)) == [0, 2, 3]
    with pytest.raises(InputError, match="grow, shrink or shift"):
        shift_boundary(labels, rng(), mode="wobble")


def test_swap_labels_inside_one_lesion_and_relabel_to_an_absent_label():
    labels = _two_lesions()
    big = ndimage.label(labels > 0, np.ones((3, 3, 3)))[0] == 1
    picks = {}
    for seed in range(8):  # the lesion is drawn at random: both are drawn over a few seeds
        swapped = swap_labels(labels, rng(seed), pairs=((1, 3),))
        inside = big if (swapped[big] != labels[big]).any() else ~big
        picks[bool(inside is big)] = True
        assert np.array_equal(swapped[~inside], labels[~inside])
        assert np.array_equal(swapped[inside & (labels == 1)], np.full(int((inside & (labels == 1)).sum()), 3))
        assert np.array_equal(swapped[inside & (labels == 3)], np.full(int((inside & (labels == 3)).sum()), 1))
    assert picks == {True: True, False: True}
    # the lesion is of the labels in region: the oedema shell holds no NETC voxel, so nothing is relabelled
    assert np.array_equal(swap_labels(labels, rng(0), pairs=((1, 4),), region=(2,)), labels)
    to_rc = swap_labels(labels, rng(0), pairs=((1, 4),), region=(1,))
    assert (to_rc == 4).sum() == (labels == 1).sum() and not (to_rc == 1).any()


def test_empty_and_nothing_to_pick():
    labels = _two_lesions()
    assert not empty_like(labels).any() and empty_like(labels).dtype == labels.dtype
    with pytest.raises(InputError, match="no lesion"):
        remove_lesion(empty_like(labels), rng())
