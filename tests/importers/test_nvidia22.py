"""``seg-edge import nvidia`` on a BraTS22 checkpoint: NVIDIA's own UNet3D (``--brats22_model``), heads dropped."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from importer_fixtures import brats22_ckpt, ort_run, unet3d_reference  # noqa: F401
from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app

runner = CliRunner()


def test_brats22_checkpoint_imports_their_unet3d(brats22_ckpt, tmp_path):
    path, state = brats22_ckpt
    out = tmp_path / "nvidia22.onnx"
    result = runner.invoke(app, ["import", "nvidia", str(path), "-o", str(out), "--name", "b22",
                                 "--check-shape", "32,32,32", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["size_bytes"] == out.stat().st_size
    assert 0 <= data["max_abs_logit_error"] <= data["tolerance"] == 1e-3
    card = load_artifact(out).card
    assert data["card"]["name"] == card.name == "b22" and card.preset == "nvidia-dle-brats22"
    assert card.provenance["variant"] == "brats22" and card.size_divisor == 8  # 4 levels
    assert card.provenance["dropped_keys"] == 4 and card.inference.tta_axes == ()
    assert card.inputs.axes == (2, 1, 0) and card.in_channels == 5 and card.outputs.channels == ("WT", "TC", "ET")
    # independent reference: their UNet3D's forward written with torch.nn.functional on the raw weights
    x = np.random.default_rng(3).standard_normal((1, 5, 32, 48, 16)).astype(np.float32)
    with torch.no_grad():
        ref = unet3d_reference(state, torch.from_numpy(x), levels=4).numpy()
    assert np.abs(ort_run(out, x) - ref).max() < 1e-3
