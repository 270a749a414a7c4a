"""`seg-edge lint --target tensorrt`: findings on purpose-made bad graphs, clean on good artifacts; card optional."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from seg_edge.calibration.quantize import QuantizeOptions, quantize, to_fp16
from seg_edge.cli.app import app
from seg_edge.export.lint import lint
from seg_edge.synth import write_case


@pytest.fixture(scope="module")
def variants(tmp_path_factory, edge_onnx):
    """INT8 (all Convs quantized) and FP16 versions of the tiny edge model."""
    root = tmp_path_factory.mktemp("lint")
    cases = root / "cases"
    for i in range(2):
        write_case(cases, 41, i, (72, 80, 56))
    int8, fp16 = root / "int8.onnx", root / "fp16.onnx"
    quantize(edge_onnx, cases, int8, options=QuantizeOptions(samples=2, budget=1.0), log=lambda s: None)
    quantize(edge_onnx, cases, fp16, options=QuantizeOptions(precision="fp16"), log=lambda s: None)
    return {"fp32": edge_onnx, "int8": int8, "fp16": fp16}


def _rules(path, version="10.3"):
    return {f.rule for f in lint(path, version)}


@pytest.mark.parametrize("kind", ["fp32", "int8", "fp16"])
def test_good_artifacts_are_clean(variants, kind):
    assert lint(variants[kind]) == []
    result = CliRunner().invoke(app, ["lint", str(variants[kind]), "--target", "tensorrt", "--trt-version", "10.3"])
    assert result.exit_code == 0 and "no findings" in result.stdout


def test_asymmetric_qdq_is_found(variants, tmp_path):
    model = onnx.load(str(variants["int8"]))
    zp = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and not t.dims)
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))
    bad = tmp_path / "asym.onnx"
    onnx.save(model, str(bad))
    assert "asymmetric-qdq" in _rules(bad)
    result = CliRunner().invoke(app, ["lint", str(bad)])
    assert result.exit_code == 1 and "asymmetric-qdq" in result.stdout


def test_unsupported_op_and_opset_are_found(variants, tmp_path):
    model = onnx.load(str(variants["fp32"]))
    out = model.graph.output[0].name
    model.graph.node.append(helper.make_node("QuickGelu", [out], ["gelu"], domain="com.microsoft", name="odd"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    bad = tmp_path / "op.onnx"
    onnx.save(model, str(bad))
    findings = lint(bad)
    assert any(f.rule == "unsupported-op" and f.node == "odd" for f in findings)
    model = onnx.load(str(variants["fp32"]))
    model.opset_import[0].version = 22
    newer = tmp_path / "opset.onnx"
    onnx.save(model, str(newer))
    assert "opset" in _rules(newer, "10.3") and "opset" not in _rules(newer, "11.0")


def test_fp16_instance_norm_is_found(variants, tmp_path):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(variants["fp32"])), keep_io_types=True)  # nothing kept FP32
    bad = tmp_path / "fp16_all.onnx"
    onnx.save(model, str(bad))
    assert "fp16-instancenorm" in _rules(bad)
    ok = tmp_path / "fp16_ok.onnx"
    to_fp16(variants["fp32"], ok)
    assert "fp16-instancenorm" not in _rules(ok)


def test_external_data_is_found(variants, tmp_path):
    model = onnx.load(str(variants["fp32"]))
    bad = tmp_path / "ext.onnx"
    onnx.save(model, str(bad), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert "external-data" in _rules(bad)


def test_unknown_trt_version_is_an_input_error(variants):
    result = CliRunner().invoke(app, ["lint", str(variants["fp32"]), "--trt-version", "8.6"])
    assert result.exit_code == 2 and "10.x or 11.x" in result.stderr


# ------------------------------------------------------------------------- the card is optional

def _plain_graph(path, op="Relu", domain="", card=None, shape=(1, 4)):
    """Any ONNX graph, as Polygraphy would lint it: one node, rank-2 I/O, no seg-edge card unless given."""
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain, name="only")], "plain",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(shape))])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if card is not None:
        helper.set_model_props(model, {"seg_edge.card": card})
    onnx.save(model, str(path))
    return path


def test_graph_without_card_is_linted_and_says_so(tmp_path):
    from seg_edge.export.lint import lint_model

    plain = _plain_graph(tmp_path / "plain.onnx")
    report = lint_model(plain)
    assert report.card == "absent" and report.findings == []
    result = CliRunner().invoke(app, ["lint", str(plain)])
    assert result.exit_code == 0, result.output
    assert "no seg-edge card: checked the graph only" in result.stdout and "no findings" in result.stdout
    data = json.loads(CliRunner().invoke(app, ["lint", str(plain), "--json"]).stdout)
    assert data["card"] == "absent" and data["findings"] == []


def test_graph_without_card_still_gets_graph_findings(tmp_path):
    odd = _plain_graph(tmp_path / "odd.onnx", op="QuickGelu", domain="com.microsoft")
    result = CliRunner().invoke(app, ["lint", str(odd)])
    assert result.exit_code == 1 and "unsupported-op" in result.stdout and "graph only" in result.stdout


def test_card_is_checked_when_present(variants, tmp_path):
    from seg_edge.artifact import load_artifact

    result = CliRunner().invoke(app, ["lint", str(variants["fp32"])])
    assert result.exit_code == 0 and "checked the graph and its seg-edge card" in result.stdout
    card = load_artifact(variants["fp32"]).card
    misfit = _plain_graph(tmp_path / "misfit.onnx", card=card.to_json())  # rank-2 graph, card wants rank 5
    findings = lint(misfit)
    assert [f.rule for f in findings] == ["card"]
    assert "inputs.tensor 'image' is not a graph input" in findings[0].message
    broken = _plain_graph(tmp_path / "broken.onnx", card=card.replace(size_divisor=0).to_json())
    result = CliRunner().invoke(app, ["lint", str(broken), "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["card"] == "invalid"
    assert any(f["rule"] == "card" and "size_divisor 0" in f["message"] for f in data["findings"])


def test_non_onnx_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    result = CliRunner().invoke(app, ["lint", str(bad)])
    assert result.exit_code == 2 and "bad.onnx" in result.stderr.replace("\n", "")
