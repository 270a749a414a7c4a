"""TensorRT path, tested as far as a CPU allows: profiles, precision rules, cache keys, sidecars,
FP16 layer pinning (on a stand-in network), and clean BackendUnavailable errors without TensorRT."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.export.tensorrt import (Device, Profile, _pin_instance_norm_fp32, build_precision, cache_key,
                                      make_profile, plan_is_current, read_sidecar, sidecar, write_plan)
from seg_edge.model.networks import card_for

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
    assert _pin_instance_norm_fp32(trt, network, norm_nodes) == 5
    pinned = {layer.name for layer in layers if layer.precision == "FP32"}
    assert pinned == {n for n in names if ".norm" in n or n == "native_in"}
    assert all(layer.out_types == {0: "FP32"} for layer in layers if layer.name in pinned)


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
