"""``seg-edge export-triton``: the model repository's layout, and config.pbtxt parsed with Triton's own
model_config.proto (tritonclient) for the onnxruntime, tensorrt_plan and openvino backends.

Only the onnxruntime layout is served here (through PyTriton, test_triton_session.py); the TensorRT and
OpenVINO variants are written to Triton's documented fields and checked by parsing, not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.runtime.sessions.plans import Device, make_profile, sidecar, write_plan

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] is not installed (pip install -e '.[triton]')")
text_format = pytest.importorskip("google.protobuf.text_format")
runner = CliRunner()


def export(*args) -> object:
    return runner.invoke(app, ["export-triton", *map(str, args)])


def parse(folder: Path):
    """config.pbtxt as Triton reads it: unknown fields or bad values raise ParseError."""
    return text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())


@pytest.fixture(scope="module")
def plan(tmp_path_factory, edge_onnx) -> Path:
    """A stand-in TensorRT plan (bytes no TensorRT loads) with the sidecar build-engine writes: batch 1..2, window
    fixed at the card's patch."""
    card = load_artifact(edge_onnx).card
    out = tmp_path_factory.mktemp("plan") / "edge.plan"
    meta = sidecar(card, "10.3.0", Device("NVIDIA L4", "8.9"), "fp16", make_profile(card, batch=2), 1.0, "0" * 64)
    write_plan(b"not a real plan", meta, out)
    return out


def test_onnxruntime_repository(edge_onnx, tmp_path):
    result = export(edge_onnx, "--repo", tmp_path, "--max-batch", 8, "--instances", 2, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    folder = tmp_path / info["model"]
    assert sorted(info["files"]) == sorted([f"{folder.name}/1/model.onnx", f"{folder.name}/config.pbtxt",
                                            f"{folder.name}/seg-edge-card.json"])
    assert (folder / "1" / "model.onnx").read_bytes() == edge_onnx.read_bytes()
    card = load_artifact(edge_onnx).card
    assert json.loads((folder / "seg-edge-card.json").read_text())["name"] == card.name
    config = parse(folder)
    assert config.name == folder.name and config.backend == "onnxruntime" and config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == \
        [(card.input_name, pb.TYPE_FP32, [card.in_channels, -1, -1, -1])]  # the graph's spatial sizes are symbolic
    assert [(t.name, list(t.dims)) for t in config.output] == [(card.output_name, [card.out_channels, -1, -1, -1])]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb.ModelInstanceGroup.KIND_GPU)]
    [accel] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP32"
    assert config.default_model_filename == "model.onnx"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seg-edge-")]


def test_tensorrt_plan_repository(plan, tmp_path):
    result = export(plan, "--repo", tmp_path, "--backend", "tensorrt_plan", "--max-batch", 2, "--name", "edge_trt")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "edge_trt"
    assert (folder / "1" / "model.plan").read_bytes() == b"not a real plan"
    config = parse(folder)
    card = load_artifact(plan).card
    assert config.platform == "tensorrt_plan" and not config.backend and config.max_batch_size == 2
    assert list(config.input[0].dims) == [card.in_channels, *card.patch_size]  # the profile's fixed window
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert config.default_model_filename == "model.plan"


def test_openvino_repository(edge_onnx, tmp_path):
    result = export(edge_onnx, "--repo", tmp_path, "--backend", "openvino", "--max-batch", 0)
    assert result.exit_code == 0, result.output
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    config = parse(folder)
    card = load_artifact(edge_onnx).card
    assert config.backend == "openvino" and config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, card.in_channels, -1, -1, -1]  # no batching: the batch axis is listed
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]
    assert config.default_model_filename == "model.onnx"


@pytest.mark.parametrize("args,message", [
    (["--backend", "tensorrt_plan"], "needs a TensorRT plan"),
    (["--backend", "openvino", "--device", "gpu"], "runs on the CPU"),
    (["--name", "a/b"], "--name 'a/b'"),
    (["--instances", "0"], "--instances"),
    (["--max-batch", "-1"], "--max-batch"),
    (["--backend", "triton"], "--backend"),
])
def test_bad_options_are_one_line_errors(edge_onnx, tmp_path, args, message):
    result = export(edge_onnx, "--repo", tmp_path / "repo", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_plan_batch_beyond_its_profile_and_existing_folder(plan, edge_onnx, tmp_path):
    result = export(plan, "--repo", tmp_path, "--backend", "tensorrt_plan", "--max-batch", 4)
    assert result.exit_code == 2 and "allows batches up to 2" in result.stderr
    assert export(edge_onnx, "--repo", tmp_path, "--name", "m").exit_code == 0
    again = export(edge_onnx, "--repo", tmp_path, "--name", "m", "--max-batch", 2)
    assert again.exit_code == 2 and "exists (use --overwrite" in again.stderr
    assert parse(tmp_path / "m").max_batch_size == 4  # untouched
    assert export(edge_onnx, "--repo", tmp_path, "--name", "m", "--max-batch", 2, "--overwrite").exit_code == 0
    assert parse(tmp_path / "m").max_batch_size == 2
