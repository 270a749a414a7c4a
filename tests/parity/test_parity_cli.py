"""`seg-edge parity`: passes on a faithful export, fails (exit 1) on a perturbed one."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from seg_edge.cli.app import app


def _parity(*args):
    return CliRunner().invoke(app, ["parity", *map(str, args)])


def test_parity_passes_on_faithful_export(edge_onnx, edge_checkpoint, cases_dir):
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())[:2]
    result = _parity(edge_onnx, *cases, "--reference", edge_checkpoint, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and len(data["results"]) == 2
    for r in data["results"]:
        assert r["max_abs"] <= 1e-4 and min(r["dice"].values()) >= 0.999 and r["labels_changed"] <= 5
    table = _parity(edge_onnx, cases[0], "--reference", edge_checkpoint)
    assert table.exit_code == 0 and "pass" in table.stdout


def test_perturbed_weights_fail_with_exit_1(tmp_path, edge_onnx, edge_checkpoint, case_dir):
    model = onnx.load(str(edge_onnx))
    weights = [t for t in model.graph.initializer if len(t.dims) == 5]
    first = weights[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.05), first.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = _parity(broken, case_dir, "--reference", edge_checkpoint)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "max probability difference" in result.stdout


def test_reference_from_another_checkpoint_is_refused(tmp_path, edge_onnx, case_dir):
    from conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other.pt", "edge", seed=99)
    result = _parity(edge_onnx, case_dir, "--reference", other)
    assert result.exit_code == 2
    assert "sha256" in result.stderr and "other.pt" in result.stderr


def test_missing_default_reference_names_the_option(tmp_path, edge_onnx, case_dir):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(edge_onnx.read_bytes())
    result = _parity(lone, case_dir)
    assert result.exit_code == 2 and "--reference" in result.stderr


def test_the_verdict_is_said_once(edge_onnx, edge_checkpoint, case_dir):
    result = _parity(edge_onnx, case_dir, "--reference", edge_checkpoint)
    assert result.exit_code == 0, result.output
    said = [line for line in (result.stdout + result.stderr).splitlines() if "pass" in line.split()]
    assert len(said) == 1, result.stdout + result.stderr  # the table's row; progress says "compared"
    assert "compared" in result.stderr


def test_onnx_import_without_reference_says_only_what_to_give(tmp_path, case_dir):
    """No '<model>.pt: reference not found' first: an ONNX import needs --network, said in one line."""
    import torch
    from torch import nn

    from seg_edge.importers.onnx import import_onnx

    source = tmp_path / "graph.onnx"
    torch.onnx.export(nn.Conv3d(4, 3, 1), (torch.zeros(1, 4, 8, 8, 8),), str(source), dynamo=False,
                      input_names=["image"], output_names=["logits"], opset_version=17,
                      dynamic_axes={name: {0: "n", 2: "x", 3: "y", 4: "z"} for name in ("image", "logits")})
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"schema": 2, "name": "g", "preset": "custom",
                                "inputs": {"tensor": "image", "channels": [{"name": m} for m in
                                                                           ("flair", "t1", "t1ce", "t2")]},
                                "outputs": {"tensor": "logits", "kind": "sigmoid", "channels": ["WT", "TC", "ET"],
                                            "thresholds": [0.5, 0.5, 0.5], "rule": "nested",
                                            "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]},
                                "inference": {"patch_size": [32, 32, 32], "size_divisor": 1}}))
    model = import_onnx(source, card, tmp_path / "imported.onnx").path
    result = _parity(model, case_dir)
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1, result.output
    assert "imported from ONNX" in line and "--network" in line and "reference not found" not in line, line
