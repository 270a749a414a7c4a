"""INT8 Q/DQ (symmetric, Conv only), the accuracy budget loop, and FP16 with FP32 InstanceNorm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.calibration.quantize import (FP16_TOLERANCES, Method, Precision, QuantizeOptions, _ort_scratch, quantize,
                                          to_fp16)
from seg_edge.calibration.sampler import PatchReader, plan_patches
from seg_edge.cli.app import app
from seg_edge.errors import ArtifactError, InputError
from seg_edge.export.graph import CLASSES, instance_norm_nodes, instance_norm_patterns, norm_edges_through_casts
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
    """Every Conv quantized (budget 1.0), run with relative paths from an empty working directory in
    which ONNX Runtime's tools drop a relative temporary, as its symbolic shape inference does."""
    import onnxruntime.quantization as ortq

    out = tmp_path_factory.mktemp("int8all") / "m_int8_all.onnx"
    cwd = tmp_path_factory.mktemp("cwd")
    real = ortq.quantize_static

    def dropping_a_temporary(*args, **kwargs):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"a partial model")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ortq, "quantize_static", dropping_a_temporary)
        patch.chdir(cwd)
        quantize(Path(os.path.relpath(edge_onnx, cwd)), Path(os.path.relpath(qcases, cwd)),
                 Path(os.path.relpath(out, cwd)), options=QuantizeOptions(samples=4, budget=1.0))
        assert Path.cwd() == cwd
    return out, sorted(p.name for p in cwd.iterdir())


def test_quantize_leaves_nothing_in_the_working_directory(int8_all):
    _, left_in_cwd = int8_all
    assert left_in_cwd == []


def test_ort_scratch_keeps_relative_writes_in_its_folder_and_restores_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch").mkdir()
    with pytest.raises(RuntimeError), _ort_scratch(tmp_path / "scratch"):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"x")
        raise RuntimeError("ORT failed")
    assert Path.cwd() == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]
    assert (tmp_path / "scratch" / "sym_shape_infer_temp.onnx").is_file()


def test_int8_graph_is_symmetric_and_quantizes_conv_only(int8_all):
    path, _ = int8_all
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
    report = quantize(edge_onnx, qcases, out, options=QuantizeOptions(precision="fp16"))
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
    assert card.precision == "fp16" and card.tolerances == FP16_TOLERANCES
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
    # Budget 0 on this tiny random model sends every Conv back to float (19 of 19), so the "INT8"
    # file computes in FP32 and matches torch to ~1e-5: the card's INT8 tolerance (region Dice >=
    # 1 - budget = 1.0) is met exactly and parity passes (exit 0).
    assert par.exit_code == 0, par.output
    result = json.loads(par.stdout)["results"][0]
    assert result["passed"] and result["labels_changed"] == 0 and result["max_abs"] < 1e-4


def test_quantize_cli_rejects_bad_options(edge_onnx, qcases, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["quantize", str(edge_onnx), "--calibration", str(qcases), "--out",
                              str(tmp_path / "x.onnx"), "--precision", "int4"])
    assert bad.exit_code == 2 and "int4" in bad.stderr
    bad = runner.invoke(app, ["quantize", str(edge_onnx), "--calibration", str(qcases), "--out",
                              str(tmp_path / "x.onnx"), "--method", "magic"])
    assert bad.exit_code == 2 and "magic" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("field,value,words", [("precision", "int4", "expected one of int8, fp16"),
                                               ("precision", "fp32", "expected one of int8, fp16"),
                                               ("method", "magic", "expected one of minmax"),
                                               ("samples", 0, "at least 1"), ("budget", -0.1, ">= 0")])
def test_quantize_options_reject_unknown_values(field, value, words):
    with pytest.raises(InputError, match=words):
        QuantizeOptions(**{field: value})
    options = QuantizeOptions(precision="fp16", method="entropy")
    assert options.precision is Precision.fp16 and options.method is Method.entropy


def _without_module_classes(model):
    """As if the exporter recorded module classes under another key: the name-based finder sees none."""
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == CLASSES:
                prop.key = "pkg.torch.onnx.renamed"
    return model


def _unnamed(model):
    for node in model.graph.node:
        node.name = ""
    return model


@pytest.mark.parametrize("damage", [_without_module_classes, _unnamed])
def test_fp16_refuses_norms_it_cannot_keep_fp32(tmp_path, edge_onnx, qcases, damage):
    damaged = tmp_path / "damaged.onnx"
    onnx.save(damage(onnx.load(str(edge_onnx))), str(damaged))
    assert len(instance_norm_patterns(onnx.load(str(damaged)))) == 18  # found by structure all the same
    with pytest.raises(ArtifactError, match="18 InstanceNorms are not recognised"):
        to_fp16(damaged, tmp_path / "fp16.onnx")
    with pytest.raises(ArtifactError, match="would run in FP16"):
        quantize(damaged, qcases, tmp_path / "out.onnx", options=QuantizeOptions(precision="fp16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.onnx"]


def test_fp16_follows_renamed_nodes(tmp_path, edge_onnx):
    model = onnx.load(str(edge_onnx))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"  # another naming scheme; the exporter's metadata is intact
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    assert to_fp16(renamed, tmp_path / "fp16.onnx") == len(instance_norm_nodes(model)) == 18 * 13
    converted = onnx.load(str(tmp_path / "fp16.onnx"))
    inits = {t.name: t.data_type for t in converted.graph.initializer}
    core = {n.name for nodes in instance_norm_patterns(model) for n in nodes}
    for node in converted.graph.node:
        if node.name in core:
            assert onnx.TensorProto.FLOAT16 not in [inits[i] for i in node.input if i in inits], node.name


def test_fp16_norm_nodes_pass_values_to_each_other_in_fp32(tmp_path, edge_onnx):
    to_fp16(edge_onnx, tmp_path / "fp16.onnx")
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    through_casts = norm_edges_through_casts(model)
    assert through_casts == [], through_casts[:3]
    assert len(instance_norm_patterns(model)) == 18


def test_conv_outputs_puts_q_dq_after_each_conv_and_ort_fuses_qlinearconv(tmp_path, edge_onnx, qcases):
    """--conv-outputs: DQ → Conv → Q, the form ONNX Runtime's CPU provider can rewrite to QLinearConv (on this
    U-Net it does so for few Convs: docs/BENCHMARKS.md, INT8)."""
    out = tmp_path / "qconv.onnx"
    quantize(edge_onnx, qcases, out, options=QuantizeOptions(samples=4, budget=1.0, conv_outputs=True,
                                                             eval_backend="onnxruntime"))
    model = onnx.load(str(out))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized_out = [n for n in convs if consumers.get(n.output[0]) == ["QuantizeLinear"]]
    assert len(quantized_out) >= len(convs) - 1  # the output head may stay float
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearConv" in fused  # ORT's integer kernel takes over where its selector accepts the group
    assert load_artifact(out).card.provenance["quantization"]["conv_outputs"] is True
