"""TensorRT path, tested as far as a CPU allows: profiles, precision rules, cache keys, sidecars,
FP16 layer pinning (on a stand-in network), and clean BackendUnavailable errors without TensorRT."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import onnx
import pytest
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import ArtifactError, InputError
from seg_edge.export.graph import CLASSES, instance_norm_patterns
from seg_edge.export.tensorrt import BuildOptions, _fp16_flag_with_norms_fp32, _pin_instance_norm_fp32, build_precision
from seg_edge.model.networks import card_for
from seg_edge.runtime.sessions.plans import (Device, EnginePrecision, Profile, cache_key, make_profile,
                                             plan_is_current, read_sidecar, sidecar, write_plan)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
EDGE = card_for("edge")
DEV = Device("NVIDIA Jetson AGX Orin", "8.7")


def test_default_profile_is_the_runtime_window():
    p = make_profile(EDGE)
    assert p == Profile((1, 5, 96, 96, 96), (1, 5, 96, 96, 96), (1, 5, 96, 96, 96))
    p = make_profile(EDGE, batch=4, min_xyz=(64, 64, 64), max_xyz=(128, 128, 96))
    assert p.min == (1, 5, 64, 64, 64) and p.opt == (1, 5, 96, 96, 96) and p.max == (4, 5, 128, 128, 96)


@pytest.mark.parametrize("kwargs,words", [
    ({"min_xyz": (60, 64, 64)}, "multiple of 16"),
    ({"min_xyz": (128, 128, 128), "max_xyz": (128, 128, 128), "opt_xyz": (128, 128, 128)}, "excludes"),
    ({"opt_xyz": (112, 96, 96), "max_xyz": (96, 96, 96)}, "does not hold"),
])
def test_bad_profiles_are_input_errors(kwargs, words):
    with pytest.raises(InputError, match=words):
        make_profile(EDGE, **kwargs)


@pytest.mark.parametrize("card_precision,requested,major,expected", [
    ("fp32", "fp32", 10, ("fp32", False)),
    ("fp32", "fp32", 11, ("fp32", True)),
    ("fp32", "fp16", 10, ("fp16", False)),      # builder flag + InstanceNorm pinned FP32
    ("fp16", "fp16", 11, ("fp16", True)),       # TensorRT 11: the FP16 ONNX, strongly typed
    ("int8", "int8", 10, ("int8", True)),       # Q/DQ, strongly typed
    ("int8", "int8", 11, ("int8", True)),
])
def test_build_precision_rules(card_precision, requested, major, expected):
    assert build_precision(EDGE.replace(precision=card_precision), requested, major) == expected


@pytest.mark.parametrize("card_precision,requested,major,words", [
    ("fp32", "int8", 10, "Q/DQ"),
    ("fp32", "fp16", 11, "TensorRT 11"),
    ("int8", "fp16", 10, "only as --precision int8"),
    ("fp32", "bf16", 10, "expected one of"),
])
def test_impossible_precisions_say_why(card_precision, requested, major, words):
    with pytest.raises(InputError, match=words):
        build_precision(EDGE.replace(precision=card_precision), requested, major)


def test_cache_key_depends_on_every_part():
    p = make_profile(EDGE)
    base = cache_key("a" * 64, "fp16", p, DEV, "10.3.0")
    assert base == cache_key("a" * 64, "fp16", p, DEV, "10.3.0")
    variants = [cache_key("b" * 64, "fp16", p, DEV, "10.3.0"), cache_key("a" * 64, "fp32", p, DEV, "10.3.0"),
                cache_key("a" * 64, "fp16", make_profile(EDGE, batch=2), DEV, "10.3.0"),
                cache_key("a" * 64, "fp16", p, Device("NVIDIA H100", "9.0"), "10.3.0"),
                cache_key("a" * 64, "fp16", p, DEV, "10.7.0")]
    assert len({base, *variants}) == 6


def test_plan_and_sidecar_round_trip(tmp_path):
    plan = tmp_path / "m.plan"
    meta = sidecar(EDGE, "10.3.0", DEV, "fp16", make_profile(EDGE), 12.5, "c" * 64)
    write_plan(b"\x00engine-bytes", meta, plan)
    assert plan.read_bytes() == b"\x00engine-bytes", "the plan must stay loadable by plain TensorRT"
    assert read_sidecar(plan)["tensorrt"]["precision"] == "fp16"
    artifact = load_artifact(plan)
    assert artifact.kind == "tensorrt" and artifact.card == EDGE
    assert plan_is_current(plan, "10.3.0", DEV) is None
    assert "TensorRT 10.3.0, this is 10.7.0" in plan_is_current(plan, "10.7.0", DEV)
    assert "built for NVIDIA Jetson" in plan_is_current(plan, "10.3.0", Device("NVIDIA H100", "9.0"))
    assert plan_is_current(tmp_path / "none.plan", "10.3.0", DEV) == "no cached plan"


def test_fp16_pins_every_instance_norm_layer():
    class Layer(SimpleNamespace):
        def set_output_type(self, k, dtype):
            self.out_types[k] = dtype

    names = ["enc.conv1.conv/Conv_0", "enc.norm1/ReduceMean_0", "enc.norm1/ReduceMean_0_axes_constant",
             "enc.norm1/Div_0", "enc.lrelu/LeakyRelu_0", "native_in", "dec.norm2/Sqrt_0"]
    layers = [Layer(name=n, precision=None, num_outputs=1, out_types={}) for n in names]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    trt = SimpleNamespace(float32="FP32")
    norm_nodes = {"enc.norm1/ReduceMean_0", "enc.norm1/Div_0", "dec.norm2/Sqrt_0", "native_in"}
    expected = {n for n in names if ".norm" in n or n == "native_in"}
    assert _pin_instance_norm_fp32(trt, network, norm_nodes) == expected
    assert {layer.name for layer in layers if layer.precision == "FP32"} == expected
    assert all(layer.out_types == {0: "FP32"} for layer in layers if layer.name in expected)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; this checks the message without it")
def test_without_tensorrt_build_and_backend_exit_3(edge_onnx, case_dir, tmp_path):
    runner = CliRunner()
    built = runner.invoke(app, ["build-engine", str(edge_onnx), "--out", str(tmp_path / "m.plan")])
    assert built.exit_code == 3 and "TensorRT is not installed" in built.stderr
    assert not (tmp_path / "m.plan").exists()
    pred = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--backend", "tensorrt",
                               "--out", str(tmp_path / "o")])
    assert pred.exit_code == 3 and "TensorRT is not installed" in pred.stderr
    assert len([line for line in pred.stderr.splitlines() if line.strip()]) == 1


class _Layer(SimpleNamespace):
    def set_output_type(self, k, dtype):
        self.out_types[k] = dtype


def _stand_in_build(names):
    """A TensorRT network whose layers are named after ``names``, a config that records flags, a trt module."""
    layers = [_Layer(name=n, precision=None, num_outputs=1, out_types={}) for n in names]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    config = SimpleNamespace(flags=[], set_flag=lambda flag: config.flags.append(flag))
    trt = SimpleNamespace(float32="FP32", BuilderFlag=SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY"))
    return trt, network, config, layers


def test_fp16_flag_build_pins_every_norm_of_the_exported_model(edge_onnx):
    model = onnx.load(str(edge_onnx))
    core = {n.name for nodes in instance_norm_patterns(model) for n in nodes}
    assert len(instance_norm_patterns(model)) == 18 and core
    messages = []
    configure = _fp16_flag_with_norms_fp32(edge_onnx, messages.append)
    trt, network, config, layers = _stand_in_build([n.name for n in model.graph.node])
    configure(trt, network, config)
    assert config.flags == ["FP16", "OBEY"]
    assert core <= {layer.name for layer in layers if layer.precision == "FP32"}
    assert not any(layer.precision for layer in layers if layer.name.split("/")[1].startswith(("Conv", "Leaky")))
    assert len(messages) == 1 and "pinned to FP32" in messages[0]


def test_fp16_flag_build_fails_when_a_norm_layer_cannot_be_pinned(edge_onnx):
    model = onnx.load(str(edge_onnx))
    div = next(n.name for n in instance_norm_patterns(model)[0] if n.op_type == "Div")
    configure = _fp16_flag_with_norms_fp32(edge_onnx, lambda s: None)
    # TensorRT named the layer otherwise (e.g. a parser that drops the node name): nothing to pin by name
    trt, network, config, _ = _stand_in_build([n.name if n.name != div else "(Unnamed Layer* 7)"
                                               for n in model.graph.node])
    with pytest.raises(ArtifactError, match="would run in FP16"):
        configure(trt, network, config)


def test_fp16_flag_build_refuses_norms_the_metadata_does_not_mark(edge_onnx, tmp_path):
    model = onnx.load(str(edge_onnx))
    for node in model.graph.node:  # an exporter that records module classes under another key
        for prop in node.metadata_props:
            if prop.key == CLASSES:
                prop.key = "pkg.torch.onnx.renamed"
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    with pytest.raises(ArtifactError, match="not recognised as InstanceNorm"):
        _fp16_flag_with_norms_fp32(stripped, lambda s: None)


@pytest.mark.parametrize("value", ["bf16", "FP16", "", None])
def test_engine_precision_is_a_closed_choice(value):
    with pytest.raises(InputError, match="expected one of fp32, fp16, int8"):
        BuildOptions(precision=value)
    assert BuildOptions(precision="int8").precision is EnginePrecision.int8


def test_build_engine_cli_rejects_unknown_precision(edge_onnx, tmp_path):
    result = CliRunner().invoke(app, ["build-engine", str(edge_onnx), "--out", str(tmp_path / "m.plan"),
                                      "--precision", "bf16"])
    assert result.exit_code == 2 and "bf16" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_write_plan_leaves_no_temporaries_and_keeps_umask_mode(tmp_path):
    from seg_edge.runtime.atomic import default_file_mode

    plan = tmp_path / "sub" / "m.plan"
    write_plan(b"plan", sidecar(EDGE, "10.3.0", DEV, "fp32", make_profile(EDGE), 1.0, "c" * 64), plan)
    assert sorted(p.name for p in plan.parent.iterdir()) == ["m.plan", "m.plan.json"]
    assert all(p.stat().st_mode & 0o777 == default_file_mode() for p in plan.parent.iterdir())


def test_ort_trt_caches_under_the_runtime_cache_root(tmp_path, monkeypatch):
    from seg_edge.runtime.sessions.onnxruntime import OrtTensorrtSession

    monkeypatch.setenv("SEG_EDGE_CACHE", str(tmp_path / "cache"))
    options = OrtTensorrtSession.provider_options(object.__new__(OrtTensorrtSession), None)
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-trt")
    assert (tmp_path / "cache" / "ort-trt").is_dir()
