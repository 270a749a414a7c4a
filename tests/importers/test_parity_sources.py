"""Import → predict → parity against the source, for each source format (issue 11's acceptance):
an NVIDIA DLE Lightning checkpoint, a seed-style PyTorch state dict, MONAI's SegResNet in the BraTS
bundle's channel/region order, and a 2D softmax U-Net on two modalities attached with ``import onnx``.
The reference is the source network rebuilt by its importer and run through MONAI's
``sliding_window_inference`` with the card's preprocessing (2D: slice by slice)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from typer.testing import CliRunner

from importer_fixtures import brats21_ckpt, card_json, import_monai_bundle_like, run_ok  # noqa: F401
from seg_edge.cli.app import app
from test_onnx import TinyUNet2D, _export, seed_card
from test_torch import SEED_NETWORK, SimpleSegmentationModel

runner = CliRunner()
HERE = Path(__file__).resolve().parent


def predict_and_parity(model: Path, case: Path, tmp: Path, *parity_args) -> dict:
    """``seg-edge predict`` writes labels in BraTS values; ``seg-edge parity`` passes against the source."""
    out = tmp / "pred.nii.gz"
    run_ok("predict", case, "--model", model, "--out", out)
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    result = run_ok("parity", model, case, *parity_args, "--json")
    data = json.loads(result.stdout)
    assert data["passed"], data
    (row,) = data["results"]
    assert row["label_agreement"] >= 0.9999 and min(row["dice"].values()) >= 0.999, row
    print(f"{model.name}: max |Δp| {row['max_abs']:.2e}, labels agree {row['label_agreement']:.6f}, "
          f"Dice {row['dice']}")  # shown with -s; the closing note quotes it
    return row


def test_nvidia_checkpoint(brats21_ckpt, case_dir, tmp_path):
    path, _ = brats21_ckpt
    model = tmp_path / "nvidia.onnx"
    run_ok("import", "nvidia", path, "--out", model, "--check-shape", "64,64,128")
    predict_and_parity(model, case_dir, tmp_path, "--reference", path)


def test_seed_state_dict(case_dir, tmp_path):
    torch.manual_seed(3)
    weights = tmp_path / "modelo_entrenado.pth"
    torch.save(SimpleSegmentationModel(width=4).eval().state_dict(), weights)
    card = card_json(tmp_path / "card.json", name="seed", inputs={
        "tensor": "image", "channels": [{"name": m} for m in ("flair", "t1", "t1ce", "t2")]},
        inference={"patch_size": [32, 32, 32], "size_divisor": 2, "tta_axes": [0, 1, 2]})
    model = tmp_path / "seed.onnx"
    run_ok("import", "torch", "--network", SEED_NETWORK, "--network-kwargs", '{"width": 4}', "--weights", weights,
           "--card", card, "--out", model, "--check-shape", "16,16,16")
    row = predict_and_parity(model, case_dir, tmp_path, "--reference", weights)  # mirroring on, from the card
    assert row["max_abs"] < 1e-4


def test_monai_segresnet_bundle_order(case_dir, tmp_path):
    model, weights = import_monai_bundle_like(tmp_path)
    predict_and_parity(model, case_dir, tmp_path, "--reference", weights)


def test_2d_softmax_onnx_with_its_torch_source(case_dir, tmp_path):
    torch.manual_seed(0)
    net = TinyUNet2D().eval()
    weights = tmp_path / "unet2d.pth"
    torch.save(net.state_dict(), weights)
    source = _export(net, tmp_path / "unet2d.onnx", 2)
    model = tmp_path / "seed2d.onnx"
    run_ok("import", "onnx", source, "--card", seed_card(tmp_path / "c.json"), "--out", model)
    # the ONNX's source is the torch module: its softmax output is turned back into logits for the reference
    predict_and_parity(model, case_dir, tmp_path, "--reference", weights,
                       "--network", f"{HERE / 'test_onnx.py'}:TinyUNet2D")


def test_onnx_import_without_a_framework_reference_is_refused(case_dir, tmp_path):
    torch.manual_seed(0)
    source = _export(TinyUNet2D().eval(), tmp_path / "unet2d.onnx", 2)
    model = tmp_path / "seed2d.onnx"
    run_ok("import", "onnx", source, "--card", seed_card(tmp_path / "c.json"), "--out", model)
    result = runner.invoke(app, ["parity", str(model), str(case_dir), "--reference", str(source)])
    assert result.exit_code == 2 and "--network" in result.stderr, result.output
