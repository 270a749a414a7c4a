"""``seg-edge import onnx``: attach a card to an ONNX file made elsewhere, after checking it against the graph.

The seed's Keras model — a 2D U-Net on axial slices resized to 128×128, FLAIR + T1ce in, a 4-class
softmax out (labels 0, 1, 2, 3 where 3 stands for BraTS 4) — is stood in for by a torch model of the
same shape exported with the TorchScript exporter, as tf2onnx would give it: fixed 128×128 input,
a symbolic batch, Keras-style tensor names and the softmax still in the graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from typer.testing import CliRunner

from importer_fixtures import card_json, files_in, ort_run
from seg_edge.artifact import file_sha256, load_artifact
from seg_edge.cli.app import app
from seg_edge.importers.onnx import import_onnx

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


class TinyUNet2D(nn.Module):
    """Two levels down and up, skip connections by concatenation, softmax over 4 classes."""

    def __init__(self, width: int = 4):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(nn.Conv2d(2, w, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2))
        self.dec2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(2 * w, w, 2, 2))
        self.dec1 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 4, 1))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat((self.mid(e2), e2), dim=1))
        return self.softmax(self.dec1(torch.cat((d2, e1), dim=1)))


def _export(model: nn.Module, path: Path, channels: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, channels, 128, 128),), str(path), dynamo=False,
                          input_names=["input_1"], output_names=["conv2d_18"], opset_version=17,
                          dynamic_axes={"input_1": {0: "unk__"}, "conv2d_18": {0: "unk__"}})
    return path


@pytest.fixture(scope="module")
def keras_like(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = TinyUNet2D().eval()
    return _export(model, tmp_path_factory.mktemp("keras") / "unet2d.onnx", 2), model


def seed_card(path: Path, **changes) -> Path:
    """The seed's 2D model described: FLAIR + T1ce, axial slices at 128×128, softmax classes 0..3 → BraTS."""
    sections = {
        "name": "seed-unet2d", "preset": "keras-2d",
        "inputs": {"tensor": "input_1", "channels": [{"name": "flair", "normalization": "zscore_nonzero"},
                                                     {"name": "t1ce", "normalization": "zscore_nonzero"}],
                   "crop": "nonzero", "axes": [0, 1, 2], "spatial_dims": 2,
                   "slice": {"axis": 2, "size": [128, 128], "interpolation": "linear"}},
        "outputs": {"tensor": "conv2d_18", "kind": "softmax", "channels": ["background", "NCR", "ED", "ET"],
                    "thresholds": [], "order": [],
                    "source_labels": {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}},
        "inference": {"patch_size": [128, 128], "size_divisor": 4},
        "provenance": {"source_framework": "keras (tf2onnx)"}}
    sections.update(changes)
    return card_json(path, **sections)


def test_keras_like_2d_softmax_model_gets_its_card(keras_like, tmp_path):
    model_path, model = keras_like
    before = model_path.read_bytes()
    out = tmp_path / "seed2d.onnx"
    result = runner.invoke(app, ["import", "onnx", str(model_path), "--card", str(seed_card(tmp_path / "c.json")),
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["removed_activation"] == "Softmax" and data["size_bytes"] == out.stat().st_size
    assert model_path.read_bytes() == before  # the source file is never touched
    artifact = load_artifact(out)
    card = artifact.card
    assert card.inputs.spatial_dims == 2 and card.inputs.slice.axis == 2 and card.inputs.slice.size == (128, 128)
    assert card.modalities == ("flair", "t1ce") and card.outputs.kind == "softmax"
    assert card.outputs.channels == ("background", "NCR", "ED", "ET") and card.outputs.source_labels["3"] == "ET"
    prov = card.provenance
    assert prov["source_framework"] == "keras (tf2onnx)" and prov["source_sha256"] == file_sha256(model_path)
    assert prov["removed_output_activation"] == "Softmax" and prov["source_file"] == "unet2d.onnx"
    assert [t.name for t in artifact.inputs] == ["input_1"] and len(artifact.outputs[0].dims) == 4
    x = np.random.default_rng(4).standard_normal((3, 2, 128, 128)).astype(np.float32)
    logits = ort_run(out, x)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(probs - ref).max() < 1e-5 and not np.allclose(logits.sum(axis=1), 1)


def test_the_card_check_needs_no_onnxruntime(keras_like, tmp_path):
    model_path, _ = keras_like
    card, out = seed_card(tmp_path / "c.json"), tmp_path / "no-ort.onnx"
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from seg_edge.importers.onnx import import_onnx\n"
            f"print(import_onnx({str(model_path)!r}, {str(card)!r}, {str(out)!r}).removed_activation)\n"
            "assert sys.modules['onnxruntime'] is None")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "Softmax", proc.stderr[-2000:]


def _graph(path: Path, tail: list, out_dims=("N", 4, 128, 128), opset: int = 17) -> Path:
    """A 1×1 conv from 2 channels to 4 logits (tensor 'logits'), then ``tail`` nodes ending in 'probs'."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 1, 1], np.arange(8, dtype=np.float32) / 8)
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"])] + tail
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                         ["N", 2, 128, 128])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, list(out_dims))], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_channels_last_softmax_behind_a_transpose_is_removed(tmp_path):
    tail = [helper.make_node("Transpose", ["logits"], ["nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("Softmax", ["nhwc"], ["p"], axis=-1),
            helper.make_node("Transpose", ["p"], ["probs"], perm=[0, 3, 1, 2])]
    src = _graph(tmp_path / "nhwc.onnx", tail)
    card = seed_card(tmp_path / "c.json", inputs=dict(json.loads(seed_card(tmp_path / "d.json").read_text())["inputs"],
                                                      tensor="image"),
                     outputs={"tensor": "probs", "kind": "softmax", "channels": ["background", "NCR", "ED", "ET"],
                              "thresholds": [], "order": []})
    report = import_onnx(src, card, tmp_path / "out.onnx")
    assert report.removed_activation == "Softmax"
    x = np.random.default_rng(0).standard_normal((2, 2, 128, 128)).astype(np.float32)
    expected = np.einsum("oc,nchw->nohw", np.arange(8, dtype=np.float32).reshape(4, 2) / 8, x)
    assert np.abs(ort_run(report.path, x) - expected).max() < 1e-5


def _bad_imports(tmp: Path, good_model: Path) -> dict[str, tuple[Path, Path, str, str]]:
    """name → (model, card, error label, expected text)."""
    good = seed_card(tmp / "good.json")
    base = json.loads(good.read_text())
    spatial = _graph(tmp / "spatial.onnx", [helper.make_node("Softmax", ["logits"], ["probs"], axis=2)])
    sigmoid = _graph(tmp / "sigmoid.onnx", [helper.make_node("Sigmoid", ["logits"], ["probs"])])
    old = _graph(tmp / "old.onnx", [helper.make_node("Softmax", ["logits"], ["probs"], axis=1)], opset=11)
    tensors = {"inputs": dict(base["inputs"], tensor="image"), "outputs": dict(base["outputs"], tensor="probs")}
    junk = tmp / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    return {
        "3 channels": (good_model, seed_card(tmp / "3.json", inputs=dict(base["inputs"], channels=[
            {"name": "flair"}, {"name": "t1ce"}, {"name": "t2"}])), "model error", "3 input channels but graph"),
        "3D card": (good_model, seed_card(tmp / "3d.json", inputs=dict(base["inputs"], spatial_dims=3, slice=None),
                                          inference={"patch_size": [128, 128, 128], "size_divisor": 4}),
                    "model error", "has rank 4 (expected 5"),
        "sigmoid card": (good_model, seed_card(tmp / "sig.json", outputs={
            "tensor": "conv2d_18", "kind": "sigmoid", "channels": ["WT", "TC", "ET"], "thresholds": [0.5] * 3,
            "rule": "nested", "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]}), "model error",
            "3 output channels but graph"),
        "input name": (good_model, seed_card(tmp / "name.json", inputs=dict(base["inputs"], tensor="image")),
                       "model error", "inputs.tensor 'image' is not a graph input"),
        "patch": (good_model, seed_card(tmp / "patch.json", inputs=dict(base["inputs"], slice=dict(
            base["inputs"]["slice"], size=[96, 96])), inference={"patch_size": [96, 96], "size_divisor": 4}),
            "model error", "fixes spatial axis 0 at 128"),
        "sigmoid graph": (sigmoid, seed_card(tmp / "t1.json", **tensors), "model error", "ends in Sigmoid"),
        "spatial softmax": (spatial, seed_card(tmp / "t2.json", **tensors), "model error", "not run over the channels"),
        "opset 11 softmax": (old, seed_card(tmp / "t3.json", **tensors), "model error", "opset 11"),
        "not onnx": (junk, good, "model error", "junk.onnx: not"),
        "missing model": (tmp / "none.onnx", good, "input error", "ONNX file not found"),
        "missing card": (good_model, tmp / "none.json", "input error", "card file not found"),
        "bad card": (good_model, seed_card(tmp / "bad.json", label_scheme="brats2019"), "model error",
                     "label_scheme \"brats2019\""),
    }


def test_cards_that_do_not_fit_are_refused_and_nothing_is_written(keras_like, tmp_path):
    model_path, _ = keras_like
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (model, card, label, expected) in _bad_imports(tmp_path, model_path).items():
        result = runner.invoke(app, ["import", "onnx", str(model), "--card", str(card),
                                     "--out", str(out_dir / "m.onnx")])
        line = result.stderr.strip()
        assert result.exit_code == 2 and len(line.splitlines()) == 1, (name, result.output)
        assert line.startswith(f"{label}:") and expected in line, (name, line)
    assert files_in(out_dir) == []
