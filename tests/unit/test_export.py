"""Export: a verified single-file ONNX with a card, or nothing at all."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_checkpoint
from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import InputError, ParityError
from seg_edge.export.norm import stabilise_instance_norms
from seg_edge.export.onnx import ExportOptions, InstanceNorm, export_onnx
from seg_edge.runtime.atomic import default_file_mode
from seg_edge.model.networks import build_network


def test_export_writes_one_checked_file_with_card(edge_onnx, edge_checkpoint):
    model = onnx.load(str(edge_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert not list(edge_onnx.parent.glob("*.data")), "weights must stay inline"
    assert model.opset_import[0].version >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 5, "16*x", "16*y", "16*z"]
    card = load_artifact(edge_onnx).card
    check = card.provenance["export_check"]
    assert 0 <= check["max_abs_logit_error"] <= check["tolerance"]
    assert len(card.provenance["checkpoint_sha256"]) == 64
    assert card.provenance["filters"] == [4, 8, 8, 16, 16]
    assert "InstanceNormalization" not in {n.op_type for n in model.graph.node}


def test_stable_instance_norm_equals_torch():
    torch.manual_seed(0)
    net = build_network("edge", (4, 8, 8, 16, 16)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(1, 5, 32, 48, 32) * 3 + 1
    with torch.no_grad():
        ref = net(x)
        assert stabilise_instance_norms(net) == 18  # input, 3 down, bottleneck, 4 up blocks; 2 norms each
        got = net(x)
    assert torch.allclose(ref, got, atol=1e-4)


def test_tolerance_breach_writes_nothing(tmp_path, edge_checkpoint):
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="nothing written"):
        export_onnx(edge_checkpoint, out, ExportOptions(check_shape=(32, 32, 32), tolerance=0.0))
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_are_input_errors(tmp_path, edge_checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a zip")
    with pytest.raises(InputError, match="junk.pt"):
        export_onnx(junk, tmp_path / "a.onnx")
    with pytest.raises(InputError, match="nvidia-brats21"):
        export_onnx(edge_checkpoint, tmp_path / "b.onnx", ExportOptions(preset="nvidia-brats21"))
    pickled = tmp_path / "pickled.pt"
    torch.save({"net": build_network("edge", (4, 8, 8, 16, 16))}, pickled)  # a module: not weights-only
    with pytest.raises(InputError, match="pickled.pt"):
        export_onnx(pickled, tmp_path / "c.onnx")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "c.onnx").exists()


def test_export_and_info_cli(tmp_path):
    ckpt = make_checkpoint(tmp_path / "w.pt", "edge", seed=5)
    out = tmp_path / "w.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--check-shape", "32,32,32",
                                 "--name", "unit", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_logit_error"] < 1e-3
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    channels = [c["name"] for c in data["card"]["inputs"]["channels"]]
    assert data["card"]["name"] == "unit" and channels == ["flair", "t1", "t1ce", "t2", "mask"]
    table = runner.invoke(app, ["info", str(out)])
    assert "window" in table.stdout and "patch 96×96×96" in table.stdout


def test_native_instance_norm_option_keeps_the_op(tmp_path, edge_checkpoint):
    out = tmp_path / "native.onnx"
    export_onnx(edge_checkpoint, out, ExportOptions(check_shape=(32, 32, 32), instance_norm="native"))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "InstanceNormalization" in ops
    assert [p.name for p in tmp_path.iterdir()] == ["native.onnx"]  # no temporary left beside it
    assert out.stat().st_mode & 0o777 == default_file_mode()
    assert load_artifact(out).card.provenance["instance_norm"] == "native"
    assert np.isfinite(load_artifact(out).card.provenance["export_check"]["max_abs_logit_error"])


@pytest.mark.parametrize("value", ["fast", "Stable", ""])
def test_instance_norm_choice_is_closed(value):
    with pytest.raises(InputError, match="expected one of stable, native"):
        ExportOptions(instance_norm=value)
    assert ExportOptions(instance_norm="native").instance_norm is InstanceNorm.native
