"""Sliding-window positions, importance map and blending, checked against MONAI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seg_edge.runtime.window import importance_map, sliding_window, window_slices, window_starts

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
from monai.data.utils import compute_importance_map, dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.inferers.utils import _get_scan_interval  # noqa: E402

OVERLAPS = (0.0, 0.25, 0.5, 0.75)


def monai_slices(shape, window, overlap):
    interval = _get_scan_interval(shape, window, len(shape), (overlap,) * len(shape))
    return [tuple((int(s.start), int(s.stop)) for s in sl) for sl in dense_patch_slices(shape, window, interval)]


def as_pairs(slices):
    return [tuple((s.start, s.stop) for s in sl) for sl in slices]


# ---------------------------------------------------------------------------------------- positions

@pytest.mark.parametrize("overlap", OVERLAPS + (0.1, 0.625, 0.9))
def test_window_starts_match_monai_1d(overlap):
    for size in range(1, 70, 3):
        for window in range(1, size + 1):
            ours = window_starts(size, window, overlap)
            ref = [pair[0][0] for pair in monai_slices((size,), (window,), overlap)]
            assert ours == ref, (size, window, overlap)
            # properties that hold independently of MONAI
            assert ours[0] == 0 and ours[-1] + window == size
            assert all(b > a for a, b in zip(ours, ours[1:]))


SHAPES_WINDOWS = [
    ((64, 72, 48), (32, 32, 32)),
    ((64, 72, 48), (48, 64, 48)),   # window == image along z
    ((64, 72, 48), (64, 72, 48)),   # window == image everywhere: one window
    ((57, 33, 20), (17, 33, 7)),
    ((128, 160, 112), (128, 128, 96)),
    ((240, 240, 155), (128, 128, 128)),
    ((5, 9, 16), (1, 2, 16)),
]


@pytest.mark.parametrize(("shape", "window"), SHAPES_WINDOWS)
@pytest.mark.parametrize("overlap", OVERLAPS)
def test_window_slices_match_monai(shape, window, overlap):
    ours = as_pairs(window_slices(shape, window, overlap))
    assert ours == monai_slices(shape, window, overlap)


def test_window_slices_cover_image_and_stay_inside():
    shape, window = (37, 50, 23), (16, 32, 16)
    cover = np.zeros(shape, dtype=int)
    for sl in window_slices(shape, window, 0.5):
        assert all(s.stop - s.start == w for s, w in zip(sl, window))
        assert all(0 <= s.start and s.stop <= n for s, n in zip(sl, shape))
        cover[sl] += 1
    assert cover.min() >= 1


def test_single_window_when_window_equals_image():
    assert window_slices((20, 30, 40), (20, 30, 40), 0.5) == [(slice(0, 20), slice(0, 30), slice(0, 40))]


# ---------------------------------------------------------------------------------- importance map

@pytest.mark.parametrize("window", [(7, 7, 7), (8, 8, 8), (9, 16, 5), (32, 24, 17), (1, 4, 3),
                                    (128, 128, 128), (96, 128, 64)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_importance_map_matches_monai(window, mode):
    ours = importance_map(window, mode)
    ref = compute_importance_map(window, mode=mode, sigma_scale=0.125).numpy()
    assert ours.shape == window and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_importance_map_properties():
    w = importance_map((9, 12, 7))
    assert not w.flags.writeable  # cached: must not be modifiable by callers
    assert w.min() >= 1e-3 - 1e-9
    assert w.max() <= 1.0 + 1e-6
    # symmetric along every axis and peaked at the centre
    for axis in range(3):
        np.testing.assert_allclose(w, np.flip(w, axis=axis), rtol=1e-6)
    assert np.unravel_index(np.argmax(w), w.shape) == (4, 5, 3)


def test_importance_map_rejects_unknown_mode():
    with pytest.raises(ValueError, match="blend mode"):
        importance_map((4, 4, 4), "triangle")


# ---------------------------------------------------------------------------------------- blending

@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_pointwise_predictor_is_reproduced(rng, batch_size, mode, overlap):
    image = rng.standard_normal((3, 23, 30, 17)).astype(np.float32)
    calls = []

    def predict(x):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert x.shape[0] <= batch_size and x.shape[1:] == (3, 12, 16, 8)
        return 3.0 * x[:, :2] + 1.0

    out = sliding_window(image, predict, (12, 16, 8), overlap, mode, batch_size,
                         on_window=lambda done, total: calls.append((done, total)))
    assert out.shape == (2, 23, 30, 17) and out.dtype == np.float32
    np.testing.assert_allclose(out, 3.0 * image[:2] + 1.0, rtol=1e-5, atol=1e-5)
    n = len(window_slices((23, 30, 17), (12, 16, 8), overlap))
    assert calls[-1] == (n, n)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert len(calls) == -(-n // batch_size)


def _seeded_conv(in_ch: int, out_ch: int, seed: int):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1)
    conv.eval()
    return conv


@pytest.mark.parametrize(("shape", "window", "overlap", "batch_size"), [
    ((26, 21, 19), (16, 12, 10), 0.5, 1),
    ((26, 21, 19), (16, 12, 10), 0.25, 4),
    ((24, 20, 16), (24, 12, 8), 0.5, 2),     # window == image along x
    ((30, 18, 22), (10, 18, 14), 0.75, 3),
    ((20, 20, 20), (20, 20, 20), 0.5, 1),    # one window
])
def test_sliding_window_matches_monai_inference(rng, shape, window, overlap, batch_size):
    conv = _seeded_conv(2, 3, seed=7)
    image = rng.standard_normal((2,) + shape).astype(np.float32)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return conv(torch.from_numpy(x)).numpy()

    ours = sliding_window(image, predict, window, overlap, "gaussian", batch_size)
    with torch.no_grad():
        ref = sliding_window_inference(torch.from_numpy(image)[None], window, batch_size, conv, overlap=overlap,
                                       mode="gaussian", sigma_scale=0.125, padding_mode="constant")
    ref = np.asarray(ref)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # and the conv is not pointwise: the windowed result differs from one whole-image pass where
    # windows overlap (zero padding at window borders), so this comparison has teeth
    if len(window_slices(shape, window, overlap)) > 1:
        with torch.no_grad():
            whole = conv(torch.from_numpy(image)[None]).numpy()[0]
        assert np.abs(whole - ours).max() > 1e-3


def test_sliding_window_constant_mode_matches_monai(rng):
    conv = _seeded_conv(2, 2, seed=3)
    image = rng.standard_normal((2, 22, 19, 17)).astype(np.float32)

    def predict(x):
        with torch.no_grad():
            return conv(torch.from_numpy(x)).numpy()

    ours = sliding_window(image, predict, (12, 10, 8), 0.5, "constant", 2)
    with torch.no_grad():
        ref = sliding_window_inference(torch.from_numpy(image)[None], (12, 10, 8), 2, conv, overlap=0.5,
                                       mode="constant", padding_mode="constant")
    np.testing.assert_allclose(ours, np.asarray(ref)[0], rtol=1e-5, atol=1e-5)


def test_window_order_is_c_order():
    slices = window_slices((40, 40, 40), (32, 32, 32), 0.5)
    starts = [tuple(s.start for s in sl) for sl in slices]
    assert starts == sorted(starts)
    assert starts == list(itertools.product([0, 8], repeat=3))


# ----------------------------------------------------------------------------------------- overlap

# (40, 52, 30) under 16³ windows: several windows along every axis. Starts written out by hand from
# the rule (step int(16 · (1 - overlap)), last window flush with the end), not from the code.
OVERLAP_STARTS = {
    0.0: ([0, 16, 24], [0, 16, 32, 36], [0, 14]),
    0.25: ([0, 12, 24], [0, 12, 24, 36], [0, 12, 14]),
    0.5: ([0, 8, 16, 24], [0, 8, 16, 24, 32, 36], [0, 8, 14]),
}


@pytest.mark.parametrize("overlap", sorted(OVERLAP_STARTS))
def test_overlap_sets_window_positions_and_count(rng, overlap):
    shape, window = (40, 52, 30), (16, 16, 16)
    starts = OVERLAP_STARTS[overlap]
    assert [window_starts(n, w, overlap) for n, w in zip(shape, window)] == list(starts)
    expected = [tuple(slice(a, a + 16) for a in corner) for corner in itertools.product(*starts)]
    assert window_slices(shape, window, overlap) == expected
    calls = []
    sliding_window(rng.standard_normal((1,) + shape).astype(np.float32), lambda x: x, window, overlap,
                   on_window=lambda done, total: calls.append(total))
    assert calls[-1] == len(expected) == {0.0: 24, 0.25: 36, 0.5: 72}[overlap]


def test_overlap_changes_the_blend_of_a_position_dependent_predictor(rng):
    """Windows that see a different neighbourhood give different logits, so the overlap shows."""
    shape, window = (40, 52, 30), (16, 16, 16)
    image = rng.standard_normal((1,) + shape).astype(np.float32)

    def predict(x):
        # the mean of the window: depends on where the window sits, not only on the voxel
        return np.broadcast_to(x.mean(axis=(2, 3, 4), keepdims=True), x.shape).copy()

    quarter, half = (sliding_window(image, predict, window, o) for o in (0.25, 0.5))
    assert np.abs(quarter - half).max() > 1e-3
