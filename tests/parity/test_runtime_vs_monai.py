"""The runtime (ONNX Runtime, numpy windows) against PyTorch + MONAI's sliding_window_inference.

The reference is independent of seg_edge.runtime: MONAI's bounding box and NormalizeIntensity,
the NVIDIA mask definition written out here, MONAI's sliding window on the torch model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import NormalizeIntensity
from monai.transforms.utils import generate_spatial_bounding_box
from typer.testing import CliRunner

from conftest import make_checkpoint
from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.model.checkpoints import load_network
from seg_edge.runtime.io import load_case
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.runtime.sessions.base import open_session
from seg_edge.synth import write_case

MODALITIES = ("flair", "t1", "t1ce", "t2")


def reference_probabilities(net, images: np.ndarray, patch, zyx: bool, overlap: float) -> np.ndarray:
    """PyTorch + MONAI: crop, z-score, NVIDIA mask, pad, sliding window, sigmoid, paste back."""
    start, end = generate_spatial_bounding_box(images)
    box = tuple(slice(s, e) for s, e in zip(start, end))
    x = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(images[(slice(None),) + box]))
    x = torch.as_tensor(x)
    mask = (x > 0).all(dim=0, keepdim=True).float()
    x = torch.cat([x, mask])
    if zyx:
        x = x.permute(0, 3, 2, 1)
    with torch.no_grad():  # MONAI pads dimensions smaller than the window itself (symmetrically)
        logits = sliding_window_inference(x[None].contiguous(), list(patch), 1, net, overlap=overlap,
                                          mode="gaussian", sigma_scale=0.125)[0]
    probs = torch.sigmoid(logits)
    if zyx:
        probs = probs.permute(0, 3, 2, 1)
    full = np.zeros((3,) + images.shape[1:], dtype=np.float32)
    full[(slice(None),) + box] = probs.numpy()
    return full


def reference_labels(probs: np.ndarray, et: int = 4) -> np.ndarray:
    wt, tc, en = probs > 0.5
    labels = np.zeros(wt.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[wt & tc] = 1
    labels[wt & en] = et
    return labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny seeded models of both preset families, exported through `seg-edge export`."""
    root = tmp_path_factory.mktemp("parity")
    models = {}
    for preset, check in (("edge", "32,32,32"), ("nvidia-brats21", "128,128,128")):
        ckpt = make_checkpoint(root / f"{preset}.pt", preset, seed=3)
        onnx_path = root / f"{preset}.onnx"
        result = CliRunner().invoke(app, ["export", str(ckpt), "--preset", preset, "--out", str(onnx_path),
                                          "--check-shape", check])
        assert result.exit_code == 0, result.output
        models[preset] = (onnx_path, load_network(ckpt, preset)[0])
    return models


CASES = [
    ("edge", (64, 72, 48), 0.5),
    ("edge", (96, 88, 64), 0.5),
    ("edge", (128, 120, 80), 0.25),
    ("nvidia-brats21", (64, 72, 48), 0.5),
    ("nvidia-brats21", (96, 104, 72), 0.5),
    # full size: 8 overlapping 128³ windows (make test-all); test_seven_level_overlapping_windows_small
    # checks the same behaviour at a size the default run affords
    pytest.param("nvidia-brats21", (240, 240, 155), 0.5, marks=pytest.mark.slow),
]


def assert_parity(result, ref: np.ndarray) -> None:
    """Probabilities within 1e-4, labels agreeing, and some tumour and some background predicted."""
    max_diff = float(np.abs(result.probabilities - ref).max())
    agreement = float((result.labels == reference_labels(ref)).mean())
    assert max_diff <= 1e-4, f"max probability difference {max_diff:.2e}"
    assert agreement >= 0.9999, f"label agreement {agreement:.6f}"
    # the comparison is not vacuous: the tiny model predicts some tumour and some background
    assert 0 < (result.labels > 0).sum() < result.labels.size


@pytest.mark.parametrize("preset,shape,overlap", CASES)
def test_runtime_matches_pytorch_monai(exported, tmp_path, preset, shape, overlap):
    onnx_path, net = exported[preset]
    folder = write_case(tmp_path, 21, hash(shape) % 100, shape)
    case = load_case(folder, MODALITIES)
    options = SegmenterOptions(overlap=overlap, probabilities=True, et_rule=False)
    with Segmenter.open(onnx_path, options=options) as seg:
        result = seg.predict(case)
        card = seg.card
    ref = reference_probabilities(net, case.images, card.patch_size,
                                  tuple(card.inputs.axes) == (2, 1, 0), overlap)
    assert_parity(result, ref)


def test_seven_level_overlapping_windows_small(exported, tmp_path):
    """What the slow full-size case checks — the 7-level Z,Y,X model over several overlapping,
    gaussian-blended windows — on a 96×104×72 case, with 128×64×128 windows (Z,Y,X; 64 is the
    preset's divisor, and a 64³ window would leave InstanceNorm one bottleneck voxel)."""
    onnx_path, net = exported["nvidia-brats21"]
    patch = (128, 64, 128)
    artifact = load_artifact(onnx_path)
    artifact = dataclasses.replace(artifact, card=artifact.card.replace(patch_size=patch))
    case = load_case(write_case(tmp_path, 21, 5, (96, 104, 72)), MODALITIES)
    totals = []
    options = SegmenterOptions(overlap=0.5, probabilities=True, et_rule=False)
    with Segmenter(artifact, open_session(artifact, "onnxruntime"), options) as seg:
        result = seg.predict(case, on_window=lambda done, total: totals.append(total))
    assert totals and totals[-1] >= 2, f"{totals[-1:]} window(s): the case must need several"
    assert_parity(result, reference_probabilities(net, case.images, patch, True, 0.5))


def test_parity_detects_a_perturbed_model(exported, tmp_path):
    """A reference with perturbed weights must fail the same tolerance."""
    onnx_path, net = exported["edge"]
    folder = write_case(tmp_path, 21, 1, (64, 72, 48))
    case = load_case(folder, MODALITIES)
    with Segmenter.open(onnx_path, options=SegmenterOptions(probabilities=True, et_rule=False)) as seg:
        result = seg.predict(case)
        card = seg.card
    broken = load_network(exported["edge"][0].with_suffix(".pt"), "edge")[0]
    with torch.no_grad():
        for p in broken.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = reference_probabilities(broken, case.images, card.patch_size, False, 0.5)
    assert float(np.abs(result.probabilities - ref).max()) > 1e-4


@pytest.mark.parametrize("preset,shapes", [
    ("edge", [(1, 32, 32, 32), (2, 48, 32, 64), (1, 96, 96, 96)]),
    ("nvidia-brats21", [(1, 128, 128, 128), (2, 128, 192, 128), (1, 192, 128, 256)]),
])
def test_dynamic_axes_match_torch(exported, preset, shapes):
    """The exported graph's batch and spatial axes are really dynamic: ORT equals torch at each shape."""
    import onnxruntime as ort

    onnx_path, net = exported[preset]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for n, *spatial in shapes:
        x = rng.standard_normal((n, 5, *spatial)).astype(np.float32)
        x[:, 4] = (x[:, :4] > 0).all(axis=1)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) < 1e-3, (n, spatial)


def test_batched_windows_equal_single_windows(exported, tmp_path):
    onnx_path, _ = exported["edge"]
    case = load_case(write_case(tmp_path, 21, 9, (128, 120, 80)), MODALITIES)
    outs = []
    for batch in (1, 3):
        with Segmenter.open(onnx_path, options=SegmenterOptions(batch_size=batch, probabilities=True)) as seg:
            outs.append(seg.predict(case))
    assert float(np.abs(outs[0].probabilities - outs[1].probabilities).max()) < 1e-5
    assert np.array_equal(outs[0].labels, outs[1].labels)
