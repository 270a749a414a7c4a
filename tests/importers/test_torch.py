"""``seg-edge import torch``: any nn.Module (by factory) + weights-only state dict + a card JSON → verified ONNX.

The seed's model is a plain 3D conv net of the user's own, defined in this very file (the importer
loads it by path), saved as ``torch.save(model.state_dict(), "modelo_entrenado.pth")``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from importer_fixtures import card_json, files_in, ort_run
from seg_edge.artifact import file_sha256, load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.export.onnx import OnnxOptions
from seg_edge.importers.torch import TorchOptions, import_torch, parse_kwargs, resolve_factory

runner = CliRunner()
HERE = Path(__file__).resolve()
SEED_NETWORK = f"{HERE}:SimpleSegmentationModel"


class SimpleSegmentationModel(nn.Module):
    """A user's own small 3D segmentation net: 4 modalities in, 3 sigmoid regions (WT, TC, ET) out."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, width: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.MaxPool3d(2),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.BatchNorm3d(2 * width), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose3d(2 * width, width, 2, stride=2), nn.ReLU(inplace=True),
            nn.Conv3d(width, out_channels, 1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory) -> tuple[Path, nn.Module]:
    """The seed's trained model: a state dict in 'modelo_entrenado.pth' (BatchNorm statistics not trivial)."""
    torch.manual_seed(0)
    model = SimpleSegmentationModel(width=4)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 4, 8, 8, 8) * 2 + 1)  # moves the BatchNorm running statistics
    model.eval()
    path = tmp_path_factory.mktemp("seed") / "modelo_entrenado.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_seed_model_imports_from_its_file(seed_model, tmp_path):
    weights, model = seed_model
    card = card_json(tmp_path / "card.json", name="seed-unet", inputs={
        "tensor": "image", "channels": [{"name": m, "normalization": "zscore_nonzero"}
                                        for m in ("flair", "t1", "t1ce", "t2")],
        "crop": "nonzero", "axes": [0, 1, 2], "spatial_dims": 3, "slice": None},
        inference={"patch_size": [64, 64, 64], "size_divisor": 2})
    out = tmp_path / "seed.onnx"
    result = runner.invoke(app, ["import", "torch", "--network", SEED_NETWORK, "--network-kwargs", '{"width": 4}',
                                 "--weights", str(weights), "--card", str(card), "--out", str(out),
                                 "--check-shape", "16,16,16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["max_abs_logit_error"] <= 1e-3 and data["card"]["name"] == "seed-unet"
    loaded = load_artifact(out).card
    assert loaded.modalities == ("flair", "t1", "t1ce", "t2") and loaded.in_channels == 4
    prov = loaded.provenance
    assert prov["source_framework"] == "pytorch" and prov["source_file"] == "modelo_entrenado.pth"
    assert prov["source_sha256"] == file_sha256(weights) and prov["network"] == SEED_NETWORK
    assert prov["network_kwargs"] == {"width": 4} and prov["export_check"]["input_shape"] == [1, 4, 16, 16, 16]
    x = np.random.default_rng(5).standard_normal((1, 4, 24, 8, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(out, x) - ref).max() < 1e-4


def test_monai_segresnet_with_the_bundles_channel_and_region_order(tmp_path):
    from monai.networks.nets import SegResNet

    kwargs = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 4, "in_channels": 4,
              "out_channels": 3, "dropout_prob": 0.2, "norm": ["GROUP", {"num_groups": 2}]}
    torch.manual_seed(1)
    net = SegResNet(**kwargs).eval()
    weights = tmp_path / "model.pt"
    torch.save(net.state_dict(), weights)
    card = card_json(
        tmp_path / "monai.json", name="monai-brats", preset="monai-bundle",
        inputs={"tensor": "image", "channels": [{"name": m, "normalization": "zscore_nonzero"}
                                                for m in ("t1ce", "t1", "t2", "flair")],
                "crop": "none", "axes": [0, 1, 2], "spatial_dims": 3, "slice": None},
        outputs={"tensor": "logits", "kind": "sigmoid", "channels": ["TC", "WT", "ET"], "thresholds": [0.5] * 3,
                 "rule": "sequential", "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]},
        inference={"patch_size": [240, 240, 160], "size_divisor": 8, "overlap": 0.5},
        provenance={"source_framework": "monai-bundle", "bundle": "brats_mri_segmentation"})
    report = import_torch("monai.networks.nets:SegResNet", weights, card, tmp_path / "segresnet.onnx",
                          TorchOptions(kwargs=kwargs, onnx=OnnxOptions(check_shape=(16, 16, 16))))
    loaded = load_artifact(report.path).card
    assert loaded.modalities == ("t1ce", "t1", "t2", "flair") and loaded.inputs.crop == "none"
    assert not any(c.derived for c in loaded.inputs.channels)
    assert loaded.outputs.channels == ("TC", "WT", "ET") and loaded.outputs.rule == "sequential"
    assert loaded.provenance["source_framework"] == "monai-bundle"  # the card's own word is kept
    assert loaded.provenance["bundle"] == "brats_mri_segmentation" and loaded.provenance["network_kwargs"] == kwargs
    x = np.random.default_rng(2).standard_normal((1, 4, 24, 16, 8)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(report.path, x) - ref).max() < 1e-3


def test_network_specs_resolve_or_say_why():
    assert resolve_factory("monai.networks.nets:SegResNet").__name__ == "SegResNet"
    assert resolve_factory(SEED_NETWORK).__name__ == "SimpleSegmentationModel"
    assert resolve_factory("torch.nn:Conv3d") is nn.Conv3d
    for spec, expected in [("no_such_package_xyz.mod:Net", "cannot import 'no_such_package_xyz.mod'"),
                           ("monai.networks.nets:NoSuchNet", "has no 'NoSuchNet'"),
                           ("SegResNet", "expected PKG.MODULE:FACTORY"),
                           ("torch:__version__", "expected a class or function"),
                           ("/no/such/file.py:Net", "file /no/such/file.py not found")]:
        with pytest.raises(InputError, match=re.escape(expected)):
            resolve_factory(spec)
    assert parse_kwargs(None) == {} and parse_kwargs('{"a": [1, 2]}') == {"a": [1, 2]}


def _bad_runs(tmp, weights: Path, card: Path) -> dict[str, tuple[list[str], str, str]]:
    """name → (CLI arguments replacing the good ones, error label, expected text)."""
    pickled = tmp / "pickled.pth"
    torch.save({"model": SimpleSegmentationModel(width=4)}, pickled)  # a module object: not weights-only
    bad_json = tmp / "bad.json"
    bad_json.write_text("{not json")
    five = card_json(tmp / "five.json", inputs={"channels": [{"name": m} for m in ("flair", "t1", "t1ce", "t2")]
                                                + [{"name": "mask", "derived": "nvidia_mask"}]})
    two_out = card_json(tmp / "two.json", outputs={"channels": ["WT", "TC"], "thresholds": [0.5, 0.5],
                                                   "order": [["WT", "ED"], ["TC", "NCR"]]},
                        inference={"patch_size": [64, 64, 64], "size_divisor": 2, "et_rule": {"enabled": False}})
    wrong_value = card_json(tmp / "value.json", inference={"patch_size": [65, 64, 64], "size_divisor": 2})
    return {
        "not importable": (["--network", "no_such_package_xyz:Net"], "input error", "cannot import"),
        "kwargs not JSON": (["--network-kwargs", "{width: 4}"], "input error", "--network-kwargs is not JSON"),
        "kwargs a list": (["--network-kwargs", "[4]"], "input error", "expected an object"),
        "kwargs refused": (["--network-kwargs", '{"depth": 4}'], "input error", "unexpected keyword"),
        "weights missing": (["--weights", str(tmp / "none.pth")], "input error", "file not found"),
        "pickle refused": (["--weights", str(pickled)], "input error", "refused by weights-only loading (it needs"),
        "weights misfit": (["--network-kwargs", '{"width": 8}'], "input error", "weights do not fit"),
        "card missing": (["--card", str(tmp / "none.json")], "input error", "card file not found"),
        "card not JSON": (["--card", str(bad_json)], "model error", "not valid JSON"),
        "card invalid": (["--card", str(wrong_value)], "model error", "inference.patch_size [65, 64, 64]"),
        "card 5 channels": (["--card", str(five)], "input error", "network refuses the card's input [1, 5,"),
        "card 2 outputs": (["--card", str(two_out)], "input error", "network output has shape [1, 3,"),
        "check shape": (["--check-shape", "15,16,16"], "input error", "check shape [15, 16, 16]"),
    }


def test_bad_inputs_are_one_line_errors_and_write_nothing(seed_model, tmp_path):
    weights, _ = seed_model
    card = card_json(tmp_path / "card.json")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    base = {"--network": SEED_NETWORK, "--network-kwargs": '{"width": 4}', "--weights": str(weights),
            "--card": str(card), "--out": str(out_dir / "m.onnx"), "--check-shape": "16,16,16"}
    for name, (changes, label, expected) in _bad_runs(tmp_path, weights, card).items():
        args = dict(base, **dict(zip(changes[::2], changes[1::2])))
        result = runner.invoke(app, ["import", "torch", *[v for kv in args.items() for v in kv]])
        line = result.stderr.strip()
        assert result.exit_code == 2 and len(line.splitlines()) == 1, (name, result.output)
        assert line.startswith(f"{label}:") and expected in line, (name, line)
    assert files_in(out_dir) == []
