"""Window planning: all-zero windows skipped with the network's own all-zero output, larger windows
capped at the crop, and the segmenter's plan from options and from a tuned profile."""

from __future__ import annotations

import numpy as np
import pytest

from seg_edge.card import InferenceProfile, Machine
from seg_edge.errors import InputError
from seg_edge.model.networks import card_for
from seg_edge.runtime.preprocess import pad_shape, preprocess, tiling_window
from seg_edge.runtime.segmenter import SegmenterOptions
from seg_edge.runtime.window import WindowPlan, blend_windows, window_slices


def conv_like(x: np.ndarray) -> np.ndarray:
    """A predictor that is not pointwise and gives non-zero output for zero input (bias, border effect):
    a 3-voxel box sum along the last axis plus a ramp, two output channels."""
    padded = np.pad(x[:, :1], ((0, 0), (0, 0), (0, 0), (0, 0), (1, 1)))
    box = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    ramp = np.arange(x.shape[-1], dtype=np.float32) * 0.01 + 0.3
    return np.concatenate([box + ramp, -box - ramp], axis=1).astype(np.float32)


def image_with_empty_corner(rng) -> np.ndarray:
    image = np.zeros((2, 40, 36, 30), dtype=np.float32)
    image[:, 14:, 10:, 6:] = rng.standard_normal((2, 26, 26, 24))  # windows at the (0, 0, 0) corner see zeros
    return image


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_skipping_empty_windows_gives_the_same_logits(rng, mode, batch_size):
    image = image_with_empty_corner(rng)
    calls = []

    def predict(x):
        calls.append(x.shape[0])
        return conv_like(x)

    plan = WindowPlan((12, 12, 12), 0.5, mode, "monai", batch_size)
    full = blend_windows(image, predict, plan)
    ran_all = sum(calls)
    calls.clear()
    skipped = blend_windows(image, predict, WindowPlan((12, 12, 12), 0.5, mode, "monai", batch_size, True))
    slices = window_slices(image.shape[1:], (12, 12, 12), 0.5)
    empty = sum(not image[(slice(None),) + s].any() for s in slices)
    assert ran_all == len(slices) and empty >= 4
    assert sum(calls) == len(slices) - empty + 1  # + the one all-zero window, computed once
    np.testing.assert_allclose(skipped, full, rtol=1e-6, atol=1e-6)
    # the skipped windows' voxels carry the network's zero-input output, not a zero or a guess
    assert np.abs(full[:, :4, :4, :4]).min() > 0.1


def test_background_cache_is_reused_across_calls(rng):
    image = image_with_empty_corner(rng)
    calls = []

    def predict(x):
        calls.append(x.shape[0])
        return conv_like(x)

    cache: dict = {}
    plan = WindowPlan((12, 12, 12), 0.5, skip_empty=True)
    blend_windows(image, predict, plan, background=cache)
    first = sum(calls)
    calls.clear()
    blend_windows(image, predict, plan, background=cache)
    assert sum(calls) == first - 1 and len(cache) == 1


def test_an_all_zero_image_is_one_network_call(rng):
    image = np.zeros((2, 30, 30, 30), dtype=np.float32)
    calls = []
    plan = WindowPlan((12, 12, 12), 0.5, skip_empty=True)
    out = blend_windows(image, lambda x: calls.append(1) or conv_like(x), plan)
    assert len(calls) == 1 and out.shape == (2, 30, 30, 30)
    np.testing.assert_allclose(out, blend_windows(image, conv_like, WindowPlan((12, 12, 12), 0.5)), atol=1e-6)


def test_tiling_window_is_the_patch_or_a_larger_window_capped_at_the_crop():
    card = card_for("edge")  # patch 96³, divisor 16
    assert tiling_window((149, 179, 154), card) == (96, 96, 96)
    assert tiling_window((149, 179, 154), card, (128, 128, 128)) == (128, 128, 128)
    assert tiling_window((149, 179, 154), card, (256, 256, 256)) == (160, 192, 160)  # the whole crop
    assert tiling_window((50, 179, 154), card, (256, 128, 256)) == (96, 128, 160)  # never below the patch
    assert pad_shape((149, 179, 154), (160, 192, 160)) == (160, 192, 160)


def test_preprocess_pads_to_a_larger_window(rng):
    card = card_for("edge")
    images = np.zeros((4, 60, 70, 50), dtype=np.float32)
    images[:, 5:55, 5:65, 5:45] = rng.uniform(1, 2, (4, 50, 60, 40))
    tensor, inverse = preprocess(images, card, window=(128, 128, 128))
    assert tensor.shape[1:] == (96, 96, 96)  # a 50×60×40 crop: one 96³ window covers it, not 128³
    tensor, inverse = preprocess(images, card)
    assert tensor.shape[1:] == (96, 96, 96) and inverse.network_shape == (50, 60, 40)


def machine() -> Machine:
    return Machine("Some CPU", ("avx2", "fma"), 2, {"openvino": "1.0"})


def test_options_take_the_profile_where_the_user_said_nothing():
    profile = InferenceProfile(machine(), "openvino", None, threads=2, window=(160, 192, 160), overlap=0.25,
                               blend="constant", steps="nnunet", batch_size=2)
    card = card_for("edge")
    plan = SegmenterOptions().with_profile(profile).plan(card)
    assert (plan.window, plan.overlap, plan.blend, plan.steps, plan.batch_size) == (
        (160, 192, 160), 0.25, "constant", "nnunet", 2)
    plan = SegmenterOptions(overlap=0.5, batch_size=1).with_profile(profile).plan(card)
    assert (plan.overlap, plan.batch_size, plan.blend) == (0.5, 1, "constant")
    default = SegmenterOptions().plan(card)
    assert (default.window, default.overlap, default.batch_size, default.steps) == (None, 0.5, 1, "monai")


@pytest.mark.parametrize("window", [(100, 96, 96), (64, 96, 96), (96, 96)])
def test_a_window_must_be_divisor_multiples_no_smaller_than_the_patch(window):
    with pytest.raises(InputError, match="window"):
        SegmenterOptions(window=window).plan(card_for("edge"))
