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
