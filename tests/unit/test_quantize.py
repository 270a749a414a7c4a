"""INT8 Q/DQ (symmetric, Conv only), the accuracy budget loop, and FP16 with FP32 InstanceNorm."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.calibration.quantize import QuantizeOptions, quantize
from seg_edge.export.graph import instance_norm_nodes
from seg_edge.calibration.sampler import PatchReader, plan_patches
from seg_edge.cli.app import app
from seg_edge.synth import write_case


@pytest.fixture(scope="module")
def qcases(tmp_path_factory):
    root = tmp_path_factory.mktemp("qcases")
    for i in range(3):
        write_case(root, 31, i, (72, 80, 56))
    return root


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, edge_onnx, qcases):
    out = tmp_path_factory.mktemp("int8") / "m_int8.onnx"
    report = quantize(edge_onnx, qcases, out, options=QuantizeOptions(samples=6, budget=0.0), log=lambda s: None)
    return out, report


def test_sampler_is_stratified_seeded_and_patch_sized(edge_onnx, qcases):
    card = load_artifact(edge_onnx).card.replace(patch_size=(32, 32, 32))  # smaller than the cases
    cases = sorted(p for p in qcases.iterdir())
    plans = plan_patches(cases, card, 9, seed=0)
    assert plans == plan_patches(cases, card, 9, seed=0) and plans != plan_patches(cases, card, 9, seed=1)
    assert {p.stratum for p in plans} == {"tumour", "healthy", "border"}
    batches = list(PatchReader(plans, card))
    assert len(batches) == 9
    assert all(b["image"].shape == (1, 5, *card.patch_size) and b["image"].dtype == np.float32 for b in batches)


@pytest.fixture(scope="module")
def int8_all(tmp_path_factory, edge_onnx, qcases):
    out = tmp_path_factory.mktemp("int8all") / "m_int8_all.onnx"
    quantize(edge_onnx, qcases, out, options=QuantizeOptions(samples=4, budget=1.0), log=lambda s: None)
    return out


def test_int8_graph_is_symmetric_and_quantizes_conv_only(int8_all):
    path = int8_all
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: zero point must be int8 0"
        if node.op_type == "DequantizeLinear":  # feeds Conv, or a skip Concat whose output feeds Convs
            assert {c.op_type for c in consumers.get(node.output[0], [])} <= {"Conv", "Concat"}, node.name
    quantized_convs = {c.name for n in qdq if n.op_type == "DequantizeLinear"
                       for c in consumers.get(n.output[0], [])}
    assert not any(n.op_type == "ConvTranspose" and n.name in quantized_convs for n in model.graph.node)


def test_budget_zero_restores_layers_and_records_them(int8_model):
    path, report = int8_model
    assert report.kept_float, "with budget 0 the tiny random model needs float layers back"
    assert report.change.worst_loss == 0.0 or len(report.kept_float) == len(report.iterations) - 1
    assert [it["kept_float"] for it in report.iterations][:2] == [[], report.kept_float[:1]]
    card = load_artifact(path).card
    q = card.provenance["quantization"]
    assert card.precision == "int8" and q["kept_float"] == report.kept_float
    assert q["calibration"]["samples"] == 6 and q["calibration"]["method"] == "minmax"
    assert set(q["calibration"]["cases"]).isdisjoint(q["eval_cases"])
    assert set(q["dice_vs_fp32"]) == {"WT", "TC", "ET"}
    float_convs = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"}
    assert set(report.kept_float) <= float_convs


def test_fp16_keeps_instance_norm_fp32_and_matches_fp32(tmp_path, edge_onnx, qcases, case_dir):
    out = tmp_path / "m_fp16.onnx"
    report = quantize(edge_onnx, qcases, out, options=QuantizeOptions(precision="fp16"), log=lambda s: None)
    model = onnx.load(str(out))
    norms = set(instance_norm_nodes(model))
    assert norms
    inits = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        weights = [inits[i] for i in node.input if i in inits]
        if node.name in norms:
            assert onnx.TensorProto.FLOAT16 not in weights, node.name
        elif node.op_type in ("Conv", "ConvTranspose"):
            assert weights and all(w == onnx.TensorProto.FLOAT16 for w in weights), node.name
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    card = load_artifact(out).card
    assert card.precision == "fp16" and card.tolerances.max_prob_diff == pytest.approx(0.25)
    assert min(report.change.vs_fp32.values()) >= card.tolerances.min_region_dice
    # probabilities on ORT CPU within the documented FP16 tolerance of the FP32 model
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    case = load_case(case_dir, card.modalities)
    probs = []
    for path in (edge_onnx, out):
        with Segmenter.open(path, options=SegmenterOptions(probabilities=True)) as seg:
            probs.append(seg.predict(case).probabilities)
    assert float(np.abs(probs[0] - probs[1]).max()) <= card.tolerances.max_prob_diff


def test_quantized_model_predicts_and_runs_parity(int8_model, edge_checkpoint, case_dir, tmp_path):
    path, _ = int8_model
    runner = CliRunner()
    pred = runner.invoke(app, ["predict", str(case_dir), "--model", str(path), "--out", str(tmp_path), "--json"])
    assert pred.exit_code == 0, pred.output
    par = runner.invoke(app, ["parity", str(path), str(case_dir), "--reference", str(edge_checkpoint), "--json"])
    assert par.exit_code in (0, 1), par.output  # judged by the INT8 card's own tolerance
    assert '"max_abs"' in par.stdout


def test_quantize_cli_rejects_bad_options(edge_onnx, qcases, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["quantize", str(edge_onnx), "--calibration", str(qcases), "--out",
                              str(tmp_path / "x.onnx"), "--precision", "int4"])
    assert bad.exit_code == 2 and "int4" in bad.stderr
    bad = runner.invoke(app, ["quantize", str(edge_onnx), "--calibration", str(qcases), "--out",
                              str(tmp_path / "x.onnx"), "--method", "magic"])
    assert bad.exit_code == 2 and "magic" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()
