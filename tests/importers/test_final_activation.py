"""A source network that ends in its own softmax/sigmoid (issue 21, items 5 and 6).

Item 5: ``parity`` on an ONNX import whose final Softmax was removed must compare the graph with the
source network's own logits, not ``log(clamp(p))`` (which caps logit gaps at ~16 and, after the 2D
resize back, no longer matches the graph). Item 6: ``import torch`` of a network ending in a softmax
is unwrapped with a line saying so (a module) or refused by name (a call inside forward()); a 3D
softmax network on t1, t1ce, t2, flair with labels 0, 1, 2, 4 predicts exactly what the torch model
predicts through MONAI's sliding window, computed here without seg_edge.runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import NormalizeIntensity
from monai.transforms.utils import generate_spatial_bounding_box
from torch import nn
from typer.testing import CliRunner

from importer_fixtures import card_json, files_in, ort_run, run_ok
from seg_edge.cli.app import app
from test_onnx import TinyUNet2D, _export, seed_card
from test_parity_sources import predict_and_parity

runner = CliRunner()
HERE = Path(__file__).resolve()
CHANNELS = ("t1", "t1ce", "t2", "flair")
LABELS = (0, 1, 2, 4)  # class index → BraTS label


class SoftmaxNet3D(nn.Module):
    """A small 3D segmenter: 4 modalities in, 4 classes (background, NCR, ED, ET) out; ``final``:
    ``none`` gives logits, ``module`` ends in ``nn.Softmax``, ``call`` in ``torch.softmax``."""

    def __init__(self, final: str = "none", width: int = 8):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv3d(4, width, 3, padding=1), nn.ReLU(),
                                    nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.decode = nn.Sequential(nn.ConvTranspose3d(2 * width, width, 2, stride=2), nn.ReLU())
        self.head = nn.Conv3d(2 * width, 4, 1)
        self.final = final
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        first = self.encode[1](self.encode[0](x))
        logits = self.head(torch.cat((self.decode(self.encode[2:](first)), first), dim=1))
        if self.final == "module":
            return self.softmax(logits)
        return torch.softmax(logits, 1) if self.final == "call" else logits


def _zscored(case: Path) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The case's channels in CHANNELS order, cropped to the non-zero box and z-scored over non-zero
    voxels (MONAI's transforms), and the box."""
    images = np.stack([np.asanyarray(nib.load(str(case / f"{case.name}_{m}.nii.gz")).dataobj).astype(np.float32)
                       for m in CHANNELS])
    start, end = generate_spatial_bounding_box(images)
    box = tuple(slice(s, e) for s, e in zip(start, end))
    x = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(images[(slice(None),) + box]))
    return np.asarray(x, dtype=np.float32), box


@pytest.fixture(scope="module")
def trained(cases_dir, tmp_path_factory) -> tuple[Path, nn.Module]:
    """(weights file, network): SoftmaxNet3D trained for a few seeded steps on one synthetic case."""
    case = sorted(p for p in cases_dir.iterdir() if p.is_dir())[1]
    x, box = _zscored(case)
    seg = np.asanyarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj)[box]
    target = torch.from_numpy(np.searchsorted(LABELS, seg).astype(np.int64))[None, :, :, :]
    torch.manual_seed(21)
    net = SoftmaxNet3D()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    inputs = torch.from_numpy(x[None, :, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2])
    target = target[:, : inputs.shape[2], : inputs.shape[3], : inputs.shape[4]]
    for _ in range(15):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(net(inputs), target)
        loss.backward()
        optimiser.step()
    weights = tmp_path_factory.mktemp("softmax3d") / "softmax3d.pth"
    torch.save(net.state_dict(), weights)
    return weights, net.eval()


def _card(path: Path) -> Path:
    return card_json(path, name="softmax3d", inputs={
        "tensor": "image", "channels": [{"name": m, "normalization": "zscore_nonzero"} for m in CHANNELS],
        "crop": "nonzero", "axes": [0, 1, 2], "spatial_dims": 3, "slice": None},
        outputs={"tensor": "logits", "kind": "softmax", "channels": ["background", "NCR", "ED", "ET"],
                 "thresholds": [], "order": [],
                 "source_labels": {"0": "background", "1": "NCR", "2": "ED", "4": "ET"}},
        inference={"patch_size": [32, 32, 32], "size_divisor": 2, "overlap": 0.5, "blend": "gaussian",
                   "et_rule": {"enabled": False}})


def _import(weights: Path, final: str, card: Path, out: Path):
    return runner.invoke(app, ["import", "torch", "--network", f"{HERE}:SoftmaxNet3D", "--network-kwargs",
                               json.dumps({"final": final}), "--weights", str(weights), "--card", str(card),
                               "--out", str(out), "--check-shape", "16,16,16"])


def _monai_labels(net: nn.Module, case: Path) -> np.ndarray:
    """The torch model's own prediction: MONAI's sliding window (the card's window, overlap, gaussian blend)
    on the logits, arg-max, classes to BraTS labels, pasted back into the case grid."""
    x, box = _zscored(case)
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(x)[None], [32, 32, 32], 1, net, overlap=0.5,
                                          mode="gaussian", sigma_scale=0.125)[0]
    labels = np.zeros(nib.load(str(case / f"{case.name}_t1.nii.gz")).shape, dtype=np.uint8)
    labels[box] = np.asarray(LABELS, dtype=np.uint8)[logits.argmax(0).numpy()]
    return labels


def test_3d_softmax_network_predicts_what_torch_predicts(trained, case_dir, tmp_path):
    weights, net = trained
    model = tmp_path / "softmax3d.onnx"
    result = _import(weights, "none", _card(tmp_path / "card.json"), model)
    assert result.exit_code == 0, result.output
    assert "removed" not in result.output  # logits already: nothing to unwrap
    out = tmp_path / "pred.nii.gz"
    run_ok("predict", case_dir, "--model", model, "--out", out)
    got = np.asanyarray(nib.load(str(out)).dataobj)
    expected = _monai_labels(net, case_dir)
    assert set(np.unique(expected).tolist()) >= {0, 2}, "the few training steps found no tumour"
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"
    (tmp_path / "parity").mkdir()
    predict_and_parity(model, case_dir, tmp_path / "parity", "--reference", weights)


def test_a_final_softmax_module_is_removed_with_a_line(trained, case_dir, tmp_path):
    weights, net = trained
    card = _card(tmp_path / "card.json")
    plain, wrapped = tmp_path / "plain.onnx", tmp_path / "wrapped.onnx"
    assert _import(weights, "none", card, plain).exit_code == 0
    result = _import(weights, "module", card, wrapped)
    assert result.exit_code == 0, result.output
    line = [s for s in result.stderr.splitlines() if "removed" in s]
    assert len(line) == 1 and "nn.Softmax (module 'softmax')" in line[0], result.stderr
    from seg_edge.artifact import load_artifact

    assert load_artifact(wrapped).card.provenance["removed_output_activation"] == "nn.Softmax (module 'softmax')"
    x = np.random.default_rng(3).standard_normal((1, 4, 24, 16, 32)).astype(np.float32)
    assert np.abs(ort_run(wrapped, x) - ort_run(plain, x)).max() < 1e-5  # the logits, not probabilities
    # the reference rebuilt from the weights ends in the softmax too: parity reads the logits before it
    row = predict_and_parity(wrapped, case_dir, tmp_path, "--reference", weights)
    assert row["labels_changed"] == 0


def test_a_softmax_called_in_forward_is_refused_by_name(trained, tmp_path):
    weights, _ = trained
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _import(weights, "call", _card(tmp_path / "card.json"), out_dir / "m.onnx")
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1, result.output
    assert "network ends in torch.softmax" in line and "--network" in line, line
    assert files_in(out_dir) == []


def test_a_sigmoid_network_on_a_softmax_card_is_refused(tmp_path):
    from seg_edge.card import ModelCard
    from seg_edge.errors import ArtifactError
    from seg_edge.export.onnx import OnnxOptions, export_network

    card = ModelCard.from_json(_card(tmp_path / "card.json").read_text(), "card")
    net = nn.Sequential(nn.Conv3d(4, 4, 1), nn.Sigmoid())
    with pytest.raises(ArtifactError, match=r"network ends in nn.Sigmoid \(module '1'\) but the card's outputs.kind "
                                            r"is 'softmax'"):
        export_network(net, card, tmp_path / "m.onnx", OnnxOptions(check_shape=(8, 8, 8)))
    assert not (tmp_path / "m.onnx").exists()


def test_probabilities_made_without_a_softmax_call_are_refused(tmp_path):
    from seg_edge.card import ModelCard
    from seg_edge.errors import InputError
    from seg_edge.export.onnx import OnnxOptions, export_network

    class ExpNormalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(4, 4, 1)

        def forward(self, x):
            e = self.conv(x).exp()
            return e / e.sum(dim=1, keepdim=True)

    card = ModelCard.from_json(_card(tmp_path / "card.json").read_text(), "card")
    with pytest.raises(InputError, match=r"in \[0, 1\] and sums to 1 over its 4 channels: probabilities"):
        export_network(ExpNormalised(), card, tmp_path / "m.onnx", OnnxOptions(check_shape=(8, 8, 8)))


def test_import_torch_leaves_stderr_clean(trained, tmp_path):
    """No FutureWarning or other chatter from torch's exporter reaches the user's terminal."""
    weights, _ = trained
    args = [str(Path(sys.executable).with_name("seg-edge")), "import", "torch", "--network", f"{HERE}:SoftmaxNet3D",
            "--weights", str(weights), "--card", str(_card(tmp_path / "card.json")), "--out", str(tmp_path / "m.onnx"),
            "--check-shape", "16,16,16"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}  # the network's file imports the test helpers
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]


def test_parity_compares_the_sources_own_logits_past_the_clamp(case_dir, tmp_path):
    """Logit gaps beyond 16: log(clamp(softmax)) would cap them, and the 2D resize back would differ."""
    torch.manual_seed(0)
    net = TinyUNet2D().eval()
    with torch.no_grad():  # sharpen the output: the final weights scaled up, no bias (else one class wins everywhere)
        net.dec1[-1].weight.mul_(1000)
        net.dec1[-1].bias.zero_()
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 2, 128, 128)).astype(np.float32))
        logits = net.dec1(torch.cat((net.dec2(torch.cat((net.mid(net.enc2(net.enc1(x))), net.enc2(net.enc1(x))),
                                                        1)), net.enc1(x)), 1))
    top = logits.topk(2, dim=1).values
    assert float((top[:, 0] - top[:, 1]).max()) > 16
    weights = tmp_path / "sharp2d.pth"
    torch.save(net.state_dict(), weights)
    source = _export(net, tmp_path / "sharp2d.onnx", 2)
    model = tmp_path / "sharp2d-imported.onnx"
    imported = run_ok("import", "onnx", source, "--card", seed_card(tmp_path / "c.json"), "--out", model)
    assert "note: the graph ends in Softmax: removed" in imported.stderr  # said, not only in the table
    row = predict_and_parity(model, case_dir, tmp_path, "--reference", weights,
                             "--network", f"{HERE.parent / 'test_onnx.py'}:TinyUNet2D")
    assert row["labels_changed"] == 0 and row["max_abs"] < 1e-4
