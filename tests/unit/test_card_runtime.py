"""The runtime does what a schema-2 card says: channel order and subsets, normalisations, crop,
axis permutations, region rules and softmax classes, mirroring TTA, 2D slices."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from seg_edge.card import Channel, Inference, Inputs, ModelCard, Outputs, SliceSpec
from seg_edge.runtime.inference import Plan, mirrored, network_logits, slicewise
from seg_edge.runtime.postprocess import et_probability, softmax, to_labels
from seg_edge.runtime.preprocess import from_network_axes, preprocess, to_network_axes, to_original_grid
from seg_edge.runtime.regions import regions_to_labels


def brain(rng, shape=(20, 24, 18), n=4) -> np.ndarray:
    images = np.zeros((n,) + shape, dtype=np.float32)
    images[:, 3:17, 4:20, 2:15] = rng.uniform(1, 10, size=(n, 14, 16, 13))
    return images


def card(channels=("flair", "t1", "t1ce", "t2"), norm="zscore_nonzero", crop="nonzero", axes=(0, 1, 2),
         outputs=None, patch=(8, 8, 8), **inputs) -> ModelCard:
    chans = tuple(Channel(c, norm) for c in channels)
    return ModelCard("t", "custom", Inputs(chans, crop=crop, axes=axes, **inputs), outputs or Outputs(),
                     Inference(patch_size=patch, size_divisor=4))


# ---------------------------------------------------------------------------------------- inputs

def test_channel_subset_order_and_normalisations(rng):
    images = brain(rng, n=2)  # the card's two modalities, in the card's order
    t = preprocess(images, card(("t1ce", "flair"), norm="zscore"))[0]
    assert t.shape[0] == 2
    crop = images[:, 3:17, 4:20, 2:15]
    expect = (crop[1] - crop[1].mean()) / crop[1].std()  # zscore over all (cropped) voxels
    np.testing.assert_allclose(t[1], expect, atol=1e-5)
    raw = preprocess(images, card(("t1ce", "flair"), norm="none"))[0]
    np.testing.assert_array_equal(raw, crop)


def test_crop_none_keeps_the_whole_volume_and_pastes_back(rng):
    images = brain(rng)
    t, inverse = preprocess(images, card(crop="none"))
    assert t.shape[1:] == images.shape[1:]
    back = to_original_grid(t[:1], inverse)
    np.testing.assert_allclose(back[0][images[0] > 0], t[0][images[0] > 0])


@pytest.mark.parametrize("axes", list(itertools.permutations((0, 1, 2))))
def test_every_axis_permutation_round_trips(rng, axes):
    images = brain(rng)
    t, inverse = preprocess(images, card(axes=axes, patch=(4, 4, 4)))
    assert t.shape[1:] == tuple(inverse.cropped_shape[a] for a in axes)
    np.testing.assert_array_equal(from_network_axes(to_network_axes(images, axes), axes), images)
    labels = (t[0] > 0).astype(np.uint8)
    back = to_original_grid(labels, inverse)
    assert back.shape == images.shape[1:]
    np.testing.assert_array_equal(back[3:17, 4:20, 2:15], (preprocess(images, card(patch=(4, 4, 4)))[0][0] > 0))


# --------------------------------------------------------------------------------------- outputs

def regions_probs(rng, shape=(6, 7, 5)) -> np.ndarray:
    return rng.uniform(0, 1, size=(3,) + shape).astype(np.float32)


def test_nested_rule_is_nvidias(rng):
    probs = regions_probs(rng)
    for et in (4, 3):
        np.testing.assert_array_equal(to_labels(probs, Outputs(), et), regions_to_labels(probs, (0.5,) * 3, et))


def test_sequential_rule_paints_in_order_and_reads_channel_names(rng):
    probs = regions_probs(rng)  # channels TC, WT, ET (MONAI's BraTS bundle order)
    out = Outputs(channels=("TC", "WT", "ET"), rule="sequential")
    labels = to_labels(probs, out, 4)
    tc, wt, et = probs > 0.5
    expect = np.zeros(wt.shape, np.uint8)
    expect[wt], expect[tc], expect[et] = 2, 1, 4  # "ET → 4, else TC → 1, else WT → 2"
    np.testing.assert_array_equal(labels, expect)
    assert np.any(et & ~wt) and np.all(labels[et & ~wt] == 4)  # sequential: ET outside WT counts
    assert np.all(to_labels(probs[[1, 0, 2]], Outputs(), 4)[et & ~wt] != 4)  # nested: it does not
    np.testing.assert_array_equal(et_probability(probs, out), probs[2])


def test_softmax_classes_become_labels_by_name(rng):
    logits = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    out = Outputs(kind="softmax", channels=("background", "NCR", "ED", "ET"), thresholds=(), order=())
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    labels = to_labels(probs, out, 3)
    np.testing.assert_array_equal(labels, np.array([0, 1, 2, 3], np.uint8)[logits.argmax(0)])
    swapped = dataclasses.replace(out, channels=("background", "ED", "NCR", "ET"))  # nnU-Net-like order
    np.testing.assert_array_equal(to_labels(probs, swapped, 4), np.array([0, 2, 1, 4], np.uint8)[logits.argmax(0)])


# ------------------------------------------------------------------------------------- inference

def test_mirroring_averages_the_flipped_back_predictions(rng):
    batch = rng.normal(size=(2, 1, 4, 5, 6)).astype(np.float32)
    ramp = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)

    def predict(b):  # not flip-equivariant: adds a position-dependent ramp
        return b + ramp

    got = mirrored(predict, (0, 2))(batch)
    flips = [(), (2,), (4,), (2, 4)]
    expect = np.mean([np.flip(predict(np.flip(batch, f)), f) for f in flips], axis=0)
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert mirrored(predict, ()) is predict


def two_d_card(size, interpolation="linear") -> ModelCard:
    return card(("flair", "t1ce"), spatial_dims=2, slice=SliceSpec(axis=2, size=size, interpolation=interpolation),
                patch=size)


def test_slices_go_to_the_network_at_its_size_and_come_back(rng):
    images = brain(rng, n=2)
    c = two_d_card((16, 16))
    tensor, _ = preprocess(images, c)  # (2, 14, 16, 13): slices along the last axis, 14×16 in-plane
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return batch[:, :1] * 2.0

    logits = slicewise(tensor, predict, c, batch_size=5)
    assert [s[0] for s in seen] == [5, 5, 3] and all(s[1:] == (2, 16, 16) for s in seen)
    assert logits.shape == (1,) + tensor.shape[1:]
    exact = slicewise(tensor, predict, two_d_card((14, 16)), batch_size=5)  # no resize: exact
    np.testing.assert_allclose(exact[0], tensor[0] * 2.0, rtol=1e-6)
    flat = np.full_like(tensor, 3.0)  # a constant survives linear resizing both ways exactly
    np.testing.assert_allclose(slicewise(flat, predict, c, 5), 6.0, rtol=1e-5)
    plan = Plan(0.5, "gaussian", 5, ())
    np.testing.assert_allclose(network_logits(tensor, predict, c, plan), logits, atol=1e-6)
