"""The card's grid and window rules beyond MONAI's: nnU-Net's windows, gaussian and masked
z-score (checked against nnU-Net's own functions when nnunetv2 is installed), and the input
geometry checks (spacing refused unless --resample, orientation never changed)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from seg_edge.card import Channel, Inputs, ModelCard
from seg_edge.errors import ArtifactError, InputError
from seg_edge.runtime.preprocess import foreground_mask, preprocess, zscore_mask
from seg_edge.runtime.resample import check_geometry, resize
from seg_edge.runtime.window import importance_map, nnunet_starts, window_slices

SIZES = [(100, 64, 50), (64, 64, 48), (240, 240, 155), (129, 130, 131), (33, 48, 40)]
PATCHES = [(64, 64, 48), (32, 48, 40), (128, 128, 128)]


def _nnunet():
    return pytest.importorskip("nnunetv2.inference.sliding_window_prediction",
                               reason="nnunetv2 (extra 'nnunet') is not installed")


@pytest.mark.parametrize("overlap", [0.5, 0.75, 0.7])
def test_nnunet_steps_equal_nnunets_own(overlap):
    sw = _nnunet()
    for size in SIZES:
        for patch in PATCHES:
            if any(p > s for p, s in zip(patch, size)):
                continue
            expected = sw.compute_steps_for_sliding_window(size, patch, 1 - overlap)
            assert [nnunet_starts(s, p, overlap) for s, p in zip(size, patch)] == expected


def test_nnunet_gaussian_equals_nnunets_own():
    import torch

    sw = _nnunet()
    for patch in PATCHES:
        theirs = sw.compute_gaussian(patch, 1 / 8, 10, device=torch.device("cpu")).float().numpy()
        ours = importance_map(patch, "nnunet_gaussian")
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=0)  # float16 rounding of one ulp at most
        assert ours.min() > 0


def test_nnunet_steps_cover_every_voxel_and_end_flush():
    for size in (50, 64, 97, 240):
        starts = nnunet_starts(size, 48, 0.5)
        assert starts[0] == 0 and starts[-1] == size - 48
        assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    assert window_slices((40, 40, 40), (40, 40, 40), 0.5, "nnunet") == [(slice(0, 40),) * 3]


def test_zscore_mask_is_nnunets_crop_and_normalization(rng):
    """Our crop + zscore_mask against nnU-Net's crop_to_nonzero + ZScoreNormalization(use_mask_for_norm)."""
    pytest.importorskip("nnunetv2", reason="nnunetv2 (extra 'nnunet') is not installed")
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    images = np.zeros((2, 30, 34, 28), np.float32)
    images[:, 5:25, 6:30, 4:22] = rng.uniform(10, 100, (2, 20, 24, 18))
    images[:, 12:15, 14:17, 10:13] = 0  # a hole inside the brain: nnU-Net's mask fills it
    images[1, 20:25, 6:10, 4:8] = 0  # one modality zero where the other is not
    cropped, seg, _ = crop_to_nonzero(images.copy())
    theirs = np.stack([ZScoreNormalization(use_mask_for_norm=True, intensityproperties={}).run(c.copy(), seg[0])
                       for c in cropped])
    card = ModelCard("t", "t", inputs=Inputs(tuple(Channel(m, "zscore_mask") for m in ("flair", "t1"))))
    ours, _ = preprocess(images, card.replace(patch_size=(16, 16, 16), size_divisor=16))
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert foreground_mask(images)[13, 15, 11]  # the hole is inside the mask


def test_zscore_mask_zero_outside_and_standardised_inside(rng):
    channel = rng.uniform(1, 5, (10, 10, 10)).astype(np.float32)
    mask = np.zeros(channel.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    out = zscore_mask(channel, mask)
    assert not out[~mask].any()
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-4


def _card(spacing=None, orientation=None) -> ModelCard:
    base = ModelCard("grid", "test")
    return ModelCard.from_json(json.dumps({**json.loads(base.to_json()), "inputs": {
        **json.loads(base.to_json())["inputs"], "spacing": spacing, "orientation": orientation}}))


def test_spacing_mismatch_is_refused_naming_both_unless_resample():
    card = _card(spacing=[1.0, 1.0, 1.0])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(InputError, match=r"scan.nii.gz: voxel spacing 2×2×2 mm .*1×1×1 mm; pass --resample"):
        check_geometry("scan.nii.gz", (40, 40, 30), (2.0, 2.0, 2.0), affine, card, resample=False)
    assert check_geometry("s", (40, 40, 30), (2.0, 2.0, 2.0), affine, card, resample=True) == (2.0, 2.0, 2.0)
    # nnU-Net's rule: spacing that would not change the array's shape is not a mismatch
    assert check_geometry("s", (40, 40, 30), (1.001, 1.0, 1.0), np.eye(4), card, resample=False) is None
    assert check_geometry("s", (40, 40, 30), (2.0, 2.0, 2.0), affine, _card(), resample=False) is None


def test_orientation_mismatch_is_refused_never_reoriented():
    card = _card(orientation="RAS")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    with pytest.raises(InputError, match=r"orientation LPS .* expects RAS; seg-edge does not reorient"):
        check_geometry("scan.nii.gz", (8, 8, 8), (1.0, 1.0, 1.0), lps, card, resample=True)
    assert check_geometry("s", (8, 8, 8), (1.0, 1.0, 1.0), np.eye(4), card, resample=False) is None


@pytest.mark.parametrize("bad", [{"spacing": [1.0, 0.0, 1.0]}, {"spacing": [1.0, 1.0]}, {"orientation": "RAX"},
                                 {"orientation": "RRS"}])
def test_card_refuses_bad_grid_fields(bad):
    base = json.loads(ModelCard("grid", "test").to_json())
    base["inputs"].update(bad)
    with pytest.raises(ArtifactError, match="inputs." + next(iter(bad))):
        ModelCard.from_json(json.dumps(base))


def test_resize_keeps_a_constant_and_round_trips_shape(rng):
    volume = np.full((2, 20, 24, 18), 3.0, np.float32)
    up = resize(volume, (40, 48, 36), order=3)
    assert up.shape == (2, 40, 48, 36) and np.allclose(up, 3.0, atol=1e-5)
    assert resize(up, (20, 24, 18), order=1).shape == volume.shape


def test_predict_with_resample_returns_the_input_grid(tmp_path, case_dir, edge_onnx):
    """A 2 mm copy of a case: refused by a card trained at 1 mm; with --resample segmented on its own grid."""
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
    from seg_edge.runtime.sessions.base import open_session

    import dataclasses

    artifact = load_artifact(edge_onnx)
    card = artifact.card.replace(inputs=dataclasses.replace(artifact.card.inputs, spacing=(1.0, 1.0, 1.0)))
    artifact = dataclasses.replace(artifact, card=card)
    folder = tmp_path / case_dir.name
    folder.mkdir()
    for path in case_dir.glob("*.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj)[::2, ::2, ::2]
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), folder / path.name)
    case = load_case(folder, artifact.card.modalities)
    session = open_session(artifact, "onnxruntime", threads=1)
    with pytest.raises(InputError, match="pass --resample"):
        Segmenter(artifact, session).predict(case)
    seg = Segmenter(artifact, session, SegmenterOptions(resample=True)).predict(case)
    assert seg.labels.shape == case.images.shape[1:]
    assert any("resampled to 1×1×1 mm" in w for w in seg.warnings)
