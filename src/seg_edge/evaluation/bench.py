"""Latency benchmarks: the network alone (per window) and the whole pipeline on a case.

Only ratios measured side by side in one run hold on a shared machine, so several
model/backend pairs are measured in one call and compared against the first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.artifact import load_artifact
from seg_edge.card import ModelCard
from seg_edge.errors import InputError
from seg_edge.runtime.jobs import Job
from seg_edge.runtime.runner import OutputPolicy, run_cases
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.runtime.sessions.base import open_session
from seg_edge.runtime.sessions.plans import network_window


@dataclass
class NetworkResult:
    model: str
    backend: str
    shape: tuple[int, ...]
    latencies_s: list[float]
    gflop: float | None

    def stats(self) -> dict[str, float | None]:
        lat = np.asarray(self.latencies_s)
        n, voxels = self.shape[0], int(np.prod(self.shape[2:]))
        out: dict[str, float | None] = {
               "mean_s": float(lat.mean()), "p50_s": float(np.percentile(lat, 50)),
               "p90_s": float(np.percentile(lat, 90)), "p99_s": float(np.percentile(lat, 99)),
               "min_s": float(lat.min()), "max_s": float(lat.max()),
               "windows_per_s": n / float(lat.mean()), "mvoxel_per_s": n * voxels / float(lat.mean()) / 1e6}
        out["gflop_per_s"] = self.gflop / float(lat.mean()) if self.gflop else None
        return out


@dataclass
class PipelineResult:
    model: str
    backend: str
    case: str
    stages_s: dict[str, float]
    cold_start_s: float | None = None
    peak_rss_mb: float | None = None
    runs: list[dict[str, float]] = field(default_factory=list)


def graph_gflop(model: Path, shape: tuple[int, ...]) -> float | None:
    """Conv + ConvTranspose GFLOP (2 per MAC) of one call at ``shape``; None without ``onnx``."""
    try:
        import onnx
    except ImportError:
        return None
    m = onnx.load(str(model))
    del m.graph.value_info[:]
    for dim, value in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.ClearField("dim_param")
        dim.dim_value = value
    # data propagation follows Reshape(x, Shape(y)): GroupNorm exports (MONAI SegResNet) need it
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    for node in m.graph.node:  # Q/DQ models: a Conv's weight is the output of a DequantizeLinear
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    flops = 0
    for node in m.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.input[1] not in weights:
            continue
        w = weights[node.input[1]]
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            if not out or 0 in out:
                return None
            flops += 2 * out[0] * w[0] * int(np.prod(out[2:])) * w[1] * int(np.prod(w[2:]))
        else:
            inp = shapes.get(node.input[0])
            if not inp or 0 in inp:
                return None
            flops += 2 * inp[0] * w[0] * int(np.prod(inp[2:])) * w[1] * int(np.prod(w[2:]))
    return flops / 1e9


def default_shape(card: ModelCard, batch: int = 1) -> tuple[int, ...]:
    """One network call as the runtime makes it: ``batch`` × channels × the window (2D: the slice size)."""
    return (batch, card.in_channels, *network_window(card))


def bench_network(model: Path, backend: str, shape: tuple[int, ...] | None = None, warmup: int = 2,
                  iters: int = 10, threads: int | None = None, hint: str | None = None) -> NetworkResult:
    """Time ``iters`` calls of the session on a seeded input of ``shape`` (default: ``default_shape(card)``)."""
    if iters < 1 or warmup < 0:
        raise InputError(f"--iters {iters}, --warmup {warmup} (expected iters >= 1 and warmup >= 0)")
    artifact = load_artifact(model)
    card = artifact.card
    shape = tuple(shape or default_shape(card))
    dims = card.inputs.spatial_dims
    if len(shape) != 2 + dims or shape[1] != card.in_channels:
        layout = "X,Y,Z" if dims == 3 else "H,W"
        raise InputError(f"shape {shape} (expected N,{card.in_channels},{layout} for {model}, a {dims}D model)")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with open_session(artifact, backend, threads=threads, precision_hint=hint) as session:
        label = session.name
        for _ in range(warmup):
            session.run(x)
        latencies = []
        for _ in range(iters):
            t0 = time.perf_counter()
            session.run(x)
            latencies.append(time.perf_counter() - t0)
    gflop = graph_gflop(model, shape) if artifact.kind == "onnx" else None
    return NetworkResult(str(model), label, shape, latencies, gflop)


def cold_start(model: Path, backend: str, case: Path, threads: int | None,
               hint: str | None = None) -> tuple[float, float]:
    """Wall time of a fresh ``seg-edge predict`` process (start → label map written) and its peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "seg_edge", "predict", str(case), "--model", str(model),
               "--backend", backend, "--out", tmp, "--json"] + (["--threads", str(threads)] if threads else [])
        cmd += ["--precision-hint", hint] if hint else []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            message = proc.stderr.read().decode().strip() if proc.stderr else ""
            raise InputError(f"{case}: cold-start predict failed: {message}")
    return elapsed, usage.ru_maxrss / 1024.0


def bench_pipeline(model: Path, backend: str, case: Path, runs: int = 3, threads: int | None = None,
                   with_cold_start: bool = True, hint: str | None = None) -> PipelineResult:
    """Median stage times over ``runs`` in-process predictions of ``case`` (model loaded once)."""
    if runs < 1:
        raise InputError(f"--runs {runs} (expected at least 1)")
    all_runs = []
    with Segmenter.open(model, backend, threads, SegmenterOptions(), hint) as seg, \
            tempfile.TemporaryDirectory() as tmp:
        label = seg.session.name
        for i in range(runs):
            job = Job(case.name, case, Path(tmp) / f"run{i}.nii.gz")
            [result] = run_cases([job], seg, OutputPolicy(overwrite=True))
            if result.error is not None:
                raise result.error
            all_runs.append(result.timings)
    stages = {k: float(np.median([r[k] for r in all_runs])) for k in all_runs[0]}
    pipeline = PipelineResult(str(model), label, case.name, stages, runs=all_runs)
    if with_cold_start:
        pipeline.cold_start_s, pipeline.peak_rss_mb = cold_start(model, backend, case, threads, hint)
    return pipeline
