"""Crop / z-score / mask / pad and its inverse, checked against MONAI where MONAI has the op."""

from __future__ import annotations

import numpy as np
import pytest

from seg_edge.card import ModelCard, schema1_card
from seg_edge.runtime.preprocess import (nonzero_box, pad_shape, preprocess, to_original_grid, window_size,
                                         zscore_nonzero)

pytest.importorskip("monai")
from monai.transforms import NormalizeIntensity  # noqa: E402
from monai.transforms.utils import generate_spatial_bounding_box  # noqa: E402


def card(**changes) -> ModelCard:
    return schema1_card(**{"name": "test", "preset": "edge", **changes})


def sparse_images(rng: np.random.Generator, shape=(4, 30, 26, 21), density=0.002) -> np.ndarray:
    """Mostly-zero channels with scattered positive voxels and some negative ones."""
    images = np.zeros(shape, dtype=np.float32)
    pos = rng.random(shape) < density
    images[pos] = rng.uniform(0.5, 100.0, size=int(pos.sum()))
    neg = rng.random(shape) < density
    images[neg & ~pos] = -rng.uniform(0.5, 100.0, size=int((neg & ~pos).sum()))
    return images


def brain_images(rng: np.random.Generator, shape=(40, 36, 20), box=(slice(3, 30), slice(5, 33), slice(2, 17))):
    """Four positive 'modalities' inside ``box``, zero outside, some zeros inside too."""
    images = np.zeros((4,) + shape, dtype=np.float32)
    inner = tuple(b.stop - b.start for b in box)
    for c in range(4):
        vol = rng.uniform(10.0, 500.0, size=inner).astype(np.float32) * (c + 1)
        vol[rng.random(inner) < 0.05] = 0.0
        images[(c,) + box] = vol
    # make the box tight in every channel-union sense: corners of the box are non-zero
    images[(0,) + tuple(slice(b.start, b.start + 1) for b in box)] = 7.0
    images[(1,) + tuple(slice(b.stop - 1, b.stop) for b in box)] = 9.0
    return images


# --------------------------------------------------------------------------------------- crop box

@pytest.mark.parametrize("seed", range(6))
def test_nonzero_box_matches_monai(seed):
    rng = np.random.default_rng(seed)
    images = sparse_images(rng, density=[0.0005, 0.002, 0.01][seed % 3])
    assert (images > 0).any()
    start, end = generate_spatial_bounding_box(images)
    box = nonzero_box(images)
    assert [(s.start, s.stop) for s in box] == [(int(a), int(b)) for a, b in zip(start, end)]


def test_nonzero_box_ignores_negative_values():
    images = np.zeros((4, 10, 10, 10), dtype=np.float32)
    images[2, 4:6, 3:5, 2:9] = 1.0
    images[1, 0, 0, 0] = -5.0
    images[3, 9, 9, 9] = -1.0
    assert nonzero_box(images) == (slice(4, 6), slice(3, 5), slice(2, 9))


def test_nonzero_box_of_empty_image_is_whole_grid():
    assert nonzero_box(np.zeros((4, 5, 6, 7))) == (slice(0, 5), slice(0, 6), slice(0, 7))


# ---------------------------------------------------------------------------------------- z-score

@pytest.mark.parametrize("seed", range(4))
def test_zscore_matches_monai_normalize_intensity(seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(200.0, 80.0, size=(4, 17, 15, 13)).astype(np.float32)
    images[rng.random(images.shape) < 0.4] = 0.0
    images[1] *= 0.01  # channels with very different scales
    ref = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(images))
    ours = np.stack([zscore_nonzero(c) for c in images])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # zeros stay zero; non-zero voxels have mean 0 and (population) std 1
    for c in range(4):
        nz = images[c] != 0
        assert np.all(ours[c][~nz] == 0)
        assert abs(float(ours[c][nz].mean())) < 1e-5
        assert abs(float(ours[c][nz].std()) - 1.0) < 1e-4


def test_zscore_constant_channel_does_not_divide_by_zero():
    channel = np.zeros((6, 5, 4), dtype=np.float32)
    channel[1:4, 1:3, 1:3] = 42.0
    with np.errstate(all="raise"):
        out = zscore_nonzero(channel)
    assert np.all(np.isfinite(out))
    assert np.all(out == 0.0)
    ref = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(channel[None]))[0]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_zscore_all_zero_channel():
    out = zscore_nonzero(np.zeros((3, 3, 3), dtype=np.int16))
    assert out.dtype == np.float32 and not out.any()


# --------------------------------------------------------------------------------- pad and window

def test_pad_shape():
    """Dimensions smaller than the patch grow to the patch; larger ones stay (never shrink)."""
    assert pad_shape((50, 130, 7), (128, 128, 128)) == (128, 130, 128)
    assert pad_shape((128, 129, 127), (128, 128, 128)) == (128, 129, 128)
    assert pad_shape((32, 33, 1), (64, 32, 16)) == (64, 33, 16)
    assert pad_shape((200, 200, 200), (128, 128, 128)) == (200, 200, 200)


def test_window_size():
    assert window_size((64, 130, 16), (128, 128, 128)) == (64, 128, 16)
    # after padding, the window is always the full patch
    assert window_size(pad_shape((64, 130, 16), (128, 128, 128)), (128, 128, 128)) == (128, 128, 128)
    assert window_size((240, 240, 155), (128, 128, 128)) == (128, 128, 128)
    assert window_size((96, 96, 96), (96, 128, 64)) == (96, 96, 64)


# ------------------------------------------------------------------------------------- preprocess

@pytest.mark.parametrize("axis_order", ["xyz", "zyx"])
def test_preprocess_equals_reference_pipeline(rng, axis_order):
    images = brain_images(rng)
    c = card(patch_size=(32, 32, 32), axis_order=axis_order)
    tensor, inverse = preprocess(images, c)

    start, end = generate_spatial_bounding_box(images)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end))
    cropped = images[(slice(None),) + box]
    normed = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(cropped))
    mask = np.all(normed > 0, axis=0).astype(np.float32)
    ref = np.concatenate([normed, mask[None]])
    if axis_order == "zyx":
        ref = ref.transpose(0, 3, 2, 1)
    target = tuple(max(n, 32) for n in ref.shape[1:])  # zero-pad up to the patch, half before (as MONAI)
    ref = np.pad(ref, [(0, 0)] + [((t - s) // 2, t - s - (t - s) // 2) for t, s in zip(target, ref.shape[1:])])

    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    assert tensor.shape == ref.shape
    np.testing.assert_allclose(tensor, ref, rtol=1e-5, atol=1e-5)
    # the geometry: crop (27, 28, 15) padded to the (32, 32, 32) patch in the network's axis order
    expected = (5, 32, 32, 32)
    assert tensor.shape == expected
    assert inverse.original_shape == (40, 36, 20)
    assert inverse.cropped_shape == (27, 28, 15)
    assert inverse.box == (slice(3, 30), slice(5, 33), slice(2, 17))


def test_mask_channel_is_one_exactly_where_all_zscored_channels_are_positive(rng):
    images = brain_images(rng)
    tensor, _ = preprocess(images, card(patch_size=(32, 32, 32)))
    assert tensor.shape[0] == 5
    mask = tensor[4]
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, np.all(tensor[:4] > 0, axis=0).astype(np.float32))
    assert 0 < mask.sum() < mask.size  # non-trivial


def test_no_mask_channel(rng):
    images = brain_images(rng)
    tensor, _ = preprocess(images, card(mask_channel="none", patch_size=(32, 32, 32)))
    assert tensor.shape[0] == 4


def test_preprocess_dispatches_on_each_channels_normalization(rng, monkeypatch):
    import dataclasses

    from seg_edge.card import NORMALIZATIONS
    from seg_edge.errors import ArtifactError
    from seg_edge.runtime import preprocess as module

    assert tuple(module.NORMALIZERS) == NORMALIZATIONS  # what the card accepts is what the runtime has
    images = brain_images(rng)
    base = card(patch_size=(32, 32, 32))
    chans = tuple(dataclasses.replace(c, normalization="minmax") if c.derived is None else c
                  for c in base.inputs.channels)
    # as if the card check missed it
    unvalidated = base.replace(inputs=dataclasses.replace(base.inputs, channels=chans))
    with pytest.raises(ArtifactError, match="normalization 'minmax' is not implemented.*zscore_nonzero"):
        preprocess(images, unvalidated)  # never a silent z-score
    monkeypatch.setitem(module.NORMALIZERS, "minmax", lambda c, mask, out: (c / c.max()).astype(np.float32))
    tensor, _ = preprocess(images, unvalidated)
    assert tensor[:4].max() == 1.0 and tensor[:4].min() == 0.0


def test_preprocess_large_image_is_not_padded(rng):
    # dimensions at least as large as the patch are neither padded nor cropped further
    images = np.zeros((4, 50, 44, 40), dtype=np.float32)
    images[:, 2:48, 1:43, 3:39] = rng.uniform(1, 10, size=(4, 46, 42, 36))
    tensor, inverse = preprocess(images, card(patch_size=(32, 32, 32)))
    assert tensor.shape == (5, 46, 42, 36)
    assert inverse.cropped_shape == (46, 42, 36)


def test_preprocess_constant_channel_is_finite(rng):
    images = brain_images(rng)
    images[2][images[2] != 0] = 300.0
    with np.errstate(divide="raise", invalid="raise"):
        tensor, _ = preprocess(images, card(patch_size=(32, 32, 32)))
    assert np.all(np.isfinite(tensor))
    assert not tensor[2].any()
    assert not tensor[4].any()  # the constant channel is never > 0, so neither is the mask


# ---------------------------------------------------------------------------------------- inverse

@pytest.mark.parametrize("axis_order", ["xyz", "zyx"])
@pytest.mark.parametrize("marker", [(3, 5, 2), (29, 32, 16), (17, 20, 9)])
def test_to_original_grid_inverts_geometry(rng, axis_order, marker):
    images = brain_images(rng)
    images[(0,) + marker] = 1e6  # a unique maximum of channel 0, inside the box
    tensor, inverse = preprocess(images, card(patch_size=(32, 32, 32), axis_order=axis_order))

    # a label volume on the network grid with the marker only
    labels = (tensor[0] == tensor[0].max()).astype(np.uint8)
    assert labels.sum() == 1
    back = to_original_grid(labels, inverse)
    assert back.shape == images.shape[1:] and back.dtype == np.uint8
    assert [tuple(int(i) for i in p) for p in np.argwhere(back)] == [marker]

    # channels-first volumes too, with a fill value outside the box
    back4 = to_original_grid(tensor[:4], inverse, fill=-7.0)
    assert back4.shape == images.shape
    assert np.unravel_index(np.argmax(back4[0]), back4.shape[1:]) == marker
    box = (slice(None),) + inverse.box
    outside = np.ones(images.shape, dtype=bool)
    outside[box] = False
    assert np.all(back4[outside] == -7.0)
    # inside the box the z-scored images come back exactly where they were
    ref = np.stack([zscore_nonzero(c) for c in images[box]])
    np.testing.assert_array_equal(back4[box], ref)


def test_to_original_grid_drops_padding():
    c = card(patch_size=(16, 32, 48), axis_order="zyx")
    images = np.zeros((4, 40, 18, 10), dtype=np.float32)
    images[:, 2:39, 1:17, 0:10] = 5.0
    tensor, inverse = preprocess(images, c)
    # cropped (37, 16, 10) → network zyx (10, 16, 37) → padded to (16, 32, 48)
    assert tensor.shape[1:] == (16, 32, 48)
    # padding (network axes): 6 → (3, 3), 16 → (8, 8), 11 → (5, 6)
    assert inverse.pad_before == (3, 8, 5)
    net = np.full(tensor.shape[1:], 9, dtype=np.int16)
    net[3:13, 8:24, 5:42] = 0  # everything but the padding
    assert not to_original_grid(net, inverse).any()
    net[3 + 9, 8 + 15, 5 + 36] = 3  # the last real voxel: original (x, y, z) = (2 + 36, 1 + 15, 0 + 9)
    back = to_original_grid(net, inverse)
    assert [tuple(int(i) for i in p) for p in np.argwhere(back)] == [(38, 16, 9)]


def _gathered_zscore(channel, where, floor):
    """The straightforward form: gather the selected voxels, standardise them in float64, scatter back."""
    out = np.zeros(channel.shape, dtype=np.float32)
    values = channel[where].astype(np.float64)
    if values.size:
        out[where] = ((values - values.mean()) / floor(values.std())).astype(np.float32)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_whole_array_zscores_equal_the_gathered_form(seed):
    from seg_edge.runtime.preprocess import zscore_all, zscore_mask

    rng = np.random.default_rng(seed)
    channel = np.zeros((30, 26, 22), dtype=np.float32)
    channel[4:27, 3:24, 2:20] = rng.normal(600.0, 150.0, size=(23, 21, 18)).round()
    channel[channel < 300] = 0  # holes inside the brain, as skull-stripped images have
    view = np.zeros((2, 34, 30, 26), dtype=np.float32)[1, 2:32, 2:28, 2:24]  # a slot of a padded tensor
    for ours, ref in [(zscore_nonzero(channel, view), _gathered_zscore(channel, channel != 0, lambda s: s or 1.0)),
                      (zscore_all(channel), _gathered_zscore(channel, np.ones(channel.shape, bool),
                                                             lambda s: s or 1.0))]:
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)
    assert not view[channel == 0].any()  # written into the slot, zero outside the non-zero voxels
    mask = rng.uniform(size=channel.shape) < 0.4  # a mask that cuts across zeros and non-zeros
    np.testing.assert_allclose(zscore_mask(channel, mask), _gathered_zscore(channel, mask, lambda s: max(s, 1e-8)),
                               rtol=1e-5, atol=2e-6)
