"""Quantize, bench, lint and build-engine on imported artifacts (issue 11's acceptance).

The imports: the seed's ``SimpleSegmentationModel`` (3D, 4 modalities, no mask channel), MONAI's
SegResNet in the bundle's channel/region order with crop ``none``, an NVIDIA BraTS21 checkpoint
(mask channel, ``zyx`` axes), and a 2D softmax U-Net on two modalities attached with
``import onnx``. Every tool reads what it needs from the card: channels, 2D or 3D, patch, divisor.
TensorRT is checked CPU-side (profile and build spec) as tests/unit/test_tensorrt_cpu.py does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from importer_fixtures import brats21_ckpt, card_json, import_2d_seed, import_monai_bundle_like, run_ok  # noqa: F401
from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.export.lint import lint
from seg_edge.export.tensorrt import BuildOptions, build_precision
from seg_edge.runtime.sessions.plans import BuildSpec, Profile, make_profile
from test_torch import SEED_NETWORK, SimpleSegmentationModel

runner = CliRunner()
@pytest.fixture(scope="module")
def seed3d(tmp_path_factory) -> tuple[Path, Path]:
    """(imported ONNX, its torch weights): the seed-style 3D model, 4 modalities, no mask channel."""
    root = tmp_path_factory.mktemp("seed3d")
    torch.manual_seed(3)
    weights = root / "modelo_entrenado.pth"
    torch.save(SimpleSegmentationModel(width=4).eval().state_dict(), weights)
    card = card_json(root / "card.json", name="seed", inputs={
        "tensor": "image", "channels": [{"name": m} for m in ("flair", "t1", "t1ce", "t2")]},
        inference={"patch_size": [32, 32, 32], "size_divisor": 2})
    model = root / "seed.onnx"
    run_ok("import", "torch", "--network", SEED_NETWORK, "--network-kwargs", '{"width": 4}', "--weights", weights,
           "--card", card, "--out", model, "--check-shape", "16,16,16")
    return model, weights


@pytest.fixture(scope="module")
def monai3d(tmp_path_factory) -> Path:
    """MONAI SegResNet, channels t1ce, t1, t2, flair, regions TC, WT, ET, crop none."""
    return import_monai_bundle_like(tmp_path_factory.mktemp("monai"))[0]


@pytest.fixture(scope="module")
def nvidia3d(brats21_ckpt, tmp_path_factory) -> Path:  # noqa: F811  (the fixture imported above)
    model = tmp_path_factory.mktemp("nvidia") / "nvidia.onnx"
    run_ok("import", "nvidia", brats21_ckpt[0], "--out", model, "--check-shape", "64,64,128")
    return model


@pytest.fixture(scope="module")
def unet2d(tmp_path_factory) -> Path:
    """The seed's 2D softmax U-Net (FLAIR + T1ce, 128×128 slices) attached with ``import onnx``."""
    return import_2d_seed(tmp_path_factory.mktemp("unet2d"))


def _split(cases_dir: Path, root: Path) -> tuple[Path, Path]:
    """(calibration folder: the first two cases, eval folder: the third), as links to the fixture's cases."""
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    cal, ev = root / "cal", root / "eval"
    for folder, members in ((cal, cases[:2]), (ev, cases[2:])):
        folder.mkdir()
        for case in members:
            (folder / case.name).symlink_to(case, target_is_directory=True)
    return cal, ev


def test_int8_quantize_of_the_seed_import_passes_parity_against_its_torch_source(seed3d, cases_dir, tmp_path):
    model, weights = seed3d
    cal, ev = _split(cases_dir, tmp_path)
    int8 = tmp_path / "seed.int8.onnx"
    result = run_ok("quantize", model, "--calibration", cal, "--eval", ev, "--out", int8, "--samples", 4,
                    "--budget", 0.05, "--json")
    report = json.loads(result.stdout)
    assert report["precision"] == "int8" and report["eval_cases"] == [p.name for p in ev.iterdir()]
    assert report["calibration"]["samples"] == 4
    card = load_artifact(int8).card
    assert card.precision == "int8" and card.in_channels == 4 and card.tolerances.min_region_dice == pytest.approx(0.95)
    assert card.provenance["source_sha256"] == load_artifact(model).card.provenance["source_sha256"]
    case = next(ev.iterdir())
    data = json.loads(run_ok("parity", int8, case, "--reference", weights, "--json").stdout)
    assert data["passed"], data  # at the INT8 card's tolerances
    assert lint(int8) == []


def test_int8_quantize_of_the_2d_import_calibrates_on_slices(unet2d, cases_dir, tmp_path):
    cal, ev = _split(cases_dir, tmp_path)
    int8 = tmp_path / "seed2d.int8.onnx"
    result = run_ok("quantize", unet2d, "--calibration", cal, "--eval", ev, "--out", int8, "--samples", 3,
                    "--budget", 1.0, "--json")
    report = json.loads(result.stdout)
    assert report["calibration"]["samples"] == 3 and set(report["dice_vs_fp32"]) == {"WT", "TC", "ET"}
    card = load_artifact(int8).card
    assert card.precision == "int8" and card.inputs.spatial_dims == 2
    assert lint(int8) == []
    data = json.loads(run_ok("bench", int8, "--iters", 1, "--warmup", 0, "--json").stdout)
    assert data["network"][0]["shape"] == [1, 2, 128, 128]


def test_2d_calibration_slices_are_the_runtime_slices(unet2d, cases_dir):
    from seg_edge.calibration.sampler import PatchReader, plan_patches

    card = load_artifact(unet2d).card
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())[:1]
    plans = plan_patches(cases, card, 3, seed=0)
    assert [len(p.corner) for p in plans] == [1, 1, 1] and {p.stratum for p in plans} <= {"tumour", "healthy", "border"}
    batches = list(PatchReader(plans, card))
    assert [b["input_1"].shape for b in batches] == [(1, 2, 128, 128)] * 3


@pytest.mark.parametrize("which,shape", [("seed3d", [1, 4, 32, 32, 32]), ("monai3d", [1, 4, 32, 32, 32]),
                                         ("unet2d", [1, 2, 128, 128])])
def test_bench_network_latency_on_imports(which, shape, request):
    fixture = request.getfixturevalue(which)
    model = fixture[0] if isinstance(fixture, tuple) else fixture
    data = json.loads(run_ok("bench", model, "--iters", 2, "--warmup", 0, "--json").stdout)
    (row,) = data["network"]
    assert row["shape"] == shape and len(row["latencies_s"]) == 2 and row["mean_s"] > 0
    voxels = 1
    for n in shape[2:]:
        voxels *= n
    assert row["mvoxel_per_s"] == pytest.approx(voxels / row["mean_s"] / 1e6)
    assert row["gflop"] and row["gflop"] > 0


def test_bench_library_checks_the_rank_against_the_card(unet2d, seed3d):
    from seg_edge.evaluation.bench import bench_network

    with pytest.raises(InputError, match="N,2,H,W"):
        bench_network(unet2d, "onnxruntime", (1, 2, 128, 128, 1), iters=1)
    with pytest.raises(InputError, match="N,4,X,Y,Z"):
        bench_network(seed3d[0], "onnxruntime", (1, 5, 32, 32, 32), iters=1)
    assert bench_network(unet2d, "onnxruntime", (2, 2, 128, 128), warmup=0, iters=1).shape == (2, 2, 128, 128)


@pytest.mark.parametrize("which", ["seed3d", "monai3d", "nvidia3d", "unet2d"])
def test_lint_is_clean_on_imports(which, request):
    fixture = request.getfixturevalue(which)
    model = fixture[0] if isinstance(fixture, tuple) else fixture
    assert lint(model) == []
    result = runner.invoke(app, ["lint", str(model), "--target", "tensorrt"])
    assert result.exit_code == 0 and "no findings" in result.stdout, result.output


def test_lint_still_reports_a_rank_that_disagrees_with_the_card(unet2d, tmp_path):
    import onnx

    from seg_edge.export.lint import _check_shapes

    model = onnx.load(str(unet2d))
    card = load_artifact(unet2d).card
    assert _check_shapes(model, card) == []
    three_d = card.replace(inputs=card.inputs.__class__(card.inputs.channels, "input_1", spatial_dims=3))
    (finding,) = _check_shapes(model, three_d)
    assert "rank 4 (expected N, C, X, Y, Z" in finding.message


def test_tensorrt_profile_and_build_spec_for_a_2d_card(unet2d):
    card = load_artifact(unet2d).card
    profile = make_profile(card)
    assert profile == Profile((1, 2, 128, 128), (1, 2, 128, 128), (1, 2, 128, 128))
    # sizes are the card's business (this graph is fixed at 128×128; TensorRT would refuse other sizes)
    p = make_profile(card, batch=8, min_xyz=(64, 64), max_xyz=(256, 256))
    assert p.min == (1, 2, 64, 64) and p.opt == (1, 2, 128, 128) and p.max == (8, 2, 256, 256)
    with pytest.raises(InputError, match="expected 2 sizes"):
        make_profile(card, min_xyz=(64, 64, 64))
    with pytest.raises(InputError, match="multiple of 4"):
        make_profile(card, max_xyz=(130, 128))
    precision, typed = build_precision(card, "fp16", 10)
    spec = BuildSpec(precision, typed, BuildOptions(precision.value, profile=p).profile)
    assert spec.profile.max == (8, 2, 256, 256) and (precision.value, typed) == ("fp16", False)


@pytest.mark.parametrize("which,channels,patch", [("seed3d", 4, (32, 32, 32)), ("monai3d", 4, (32, 32, 32)),
                                                  ("nvidia3d", 5, None)])
def test_tensorrt_profile_for_3d_imports(which, channels, patch, request):
    fixture = request.getfixturevalue(which)
    card = load_artifact(fixture[0] if isinstance(fixture, tuple) else fixture).card
    patch = patch or tuple(card.patch_size)
    assert make_profile(card) == Profile((1, channels, *patch), (1, channels, *patch), (1, channels, *patch))
    assert build_precision(card.replace(precision="int8"), "int8", 10) == (build_precision(card, "fp32", 10)[0]
                                                                          .__class__("int8"), True)
    with pytest.raises(InputError, match="expected 3 sizes"):
        make_profile(card, max_xyz=(64, 64))
