"""Benchmark plumbing: FLOP counting, statistics and the CLI (timings themselves are not asserted)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.evaluation.bench import NetworkResult, bench_network, bench_pipeline, graph_gflop


def test_graph_gflop_counts_conv_and_conv_transpose(tmp_path):
    w1 = numpy_helper.from_array(np.zeros((3, 2, 3, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((3, 2, 2, 2, 2), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 6),
             helper.make_node("ConvTranspose", ["h", "w2"], ["y"], strides=[2, 2, 2])]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, "a", "b", "c"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    conv = 2 * 3 * 8 ** 3 * 2 * 27            # out channels × out voxels × in channels × kernel
    convt = 2 * 3 * 8 ** 3 * 2 * 8            # in channels × in voxels × out channels × kernel
    assert graph_gflop(path, (1, 2, 8, 8, 8)) == pytest.approx((conv + convt) / 1e9)
    assert graph_gflop(path, (2, 2, 8, 8, 8)) == pytest.approx(2 * (conv + convt) / 1e9)


def test_network_stats():
    r = NetworkResult("m", "b", (2, 5, 10, 10, 10), [1.0, 2.0, 3.0], gflop=6.0)
    s = r.stats()
    assert s["mean_s"] == 2.0 and s["p50_s"] == 2.0 and s["min_s"] == 1.0 and s["max_s"] == 3.0
    assert s["windows_per_s"] == 1.0 and s["mvoxel_per_s"] == pytest.approx(2 * 1000 / 2.0 / 1e6)
    assert s["gflop_per_s"] == 3.0


def test_bench_cli_network_and_pipeline(edge_onnx, case_dir):
    result = CliRunner().invoke(app, ["bench", str(edge_onnx), "--case", str(case_dir), "--shape", "5,32,32,32",
                                      "--iters", "2", "--warmup", "1", "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    net = data["network"][0]
    assert net["shape"] == [1, 5, 32, 32, 32] and len(net["latencies_s"]) == 2 and net["gflop"] > 0
    pipe = data["pipeline"][0]
    assert set(pipe["stages_s"]) >= {"load", "preprocess", "inference", "postprocess", "write", "total"}
    assert pipe["cold_start_s"] > 0 and pipe["peak_rss_mb"] > 50


def test_bench_rejects_bad_shape(edge_onnx):
    result = CliRunner().invoke(app, ["bench", str(edge_onnx), "--shape", "4,32,32"])
    assert result.exit_code == 2 and "--shape" in result.stderr


def test_library_rejects_counts_that_measure_nothing(edge_onnx, case_dir):
    with pytest.raises(InputError, match="--iters 0"):
        bench_network(edge_onnx, "onnxruntime", iters=0)
    with pytest.raises(InputError, match="--warmup -1"):
        bench_network(edge_onnx, "onnxruntime", warmup=-1)
    with pytest.raises(InputError, match="--runs 0"):
        bench_pipeline(edge_onnx, "onnxruntime", case_dir, runs=0)
