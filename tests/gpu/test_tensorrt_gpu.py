"""Real TensorRT builds and parity against ONNX Runtime CPU. Skipped without TensorRT and a GPU.

Run on a machine with both: `make bench-gpu` or `pytest -m "gpu or tensorrt" tests/gpu`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        from seg_edge.runtime.sessions.plans import gpu_device

        gpu_device()
    except Exception as exc:  # no cuda-python, no driver, no device
        return f"no usable CUDA GPU: {exc}"
    return None


REASON = _gpu_reason()
skip = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@skip
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime_cpu(tmp_path, edge_onnx, case_dir, precision):
    from seg_edge.artifact import load_artifact
    from seg_edge.export.tensorrt import BuildOptions, build_engine
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    plan = tmp_path / f"m_{precision}.plan"
    meta = build_engine(edge_onnx, plan, BuildOptions(precision=precision), log=lambda s: None)
    assert meta["tensorrt"]["precision"] == precision and plan.stat().st_size > 0
    card = load_artifact(edge_onnx).card
    case = load_case(case_dir, card.modalities)
    outs = {}
    for model, backend in ((edge_onnx, "onnxruntime"), (plan, "tensorrt")):
        with Segmenter.open(model, backend, options=SegmenterOptions(probabilities=True)) as seg:
            outs[backend] = seg.predict(case)
    diff = float(np.abs(outs["tensorrt"].probabilities - outs["onnxruntime"].probabilities).max())
    tolerance = card.tolerances.max_prob_diff if precision == "fp32" else 1e-2
    assert diff <= tolerance, f"{precision}: max probability difference {diff:.2e}"


@skip
def test_engine_cache_builds_once(tmp_path, monkeypatch, edge_onnx):
    from seg_edge.runtime.sessions.plans import cached_plan

    monkeypatch.setenv("SEG_EDGE_CACHE", str(tmp_path))
    messages = []
    first = cached_plan(edge_onnx, log=messages.append)
    second = cached_plan(edge_onnx, log=messages.append)
    assert first == second and len(messages) == 1
    assert first.parent == tmp_path / "engines" and (tmp_path / "engines" / "timing.cache").is_file()


@skip
def test_predict_json_stays_clean_while_an_engine_builds(tmp_path, edge_onnx, case_dir):
    """The engine-build notice goes to stderr (logging), never into --json's stdout."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SEG_EDGE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "seg_edge", "predict", str(case_dir), "--model", str(edge_onnx),
           "--backend", "tensorrt", "--out", str(tmp_path / "out"), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    assert "building TensorRT engine" in result.stderr
