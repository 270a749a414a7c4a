"""Where the network's FP32 time goes on OpenVINO, by convolution width: why it stays below the GEMM peak.

OpenVINO's per-node counters (``PERF_COUNT``) on one window, the model as seg-edge runs it (InstanceNorm
fused to MVN). Convolutions are grouped by their output channels: each group's share of the FLOPs, its
time and its GFLOP/s next to the machine's FP32 GEMM peak (``docs/gemm_peak.json``). A convolution
with fewer output channels than the CPU's vector holds float32 lanes (16 with AVX-512, 8 with AVX2)
leaves part of every fused multiply-add unused.

    python benchmarks/conv_layers.py --window 128 --threads 2 --json docs/conv_layers.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.sessions.openvino_graph import fuse_instance_norms  # noqa: E402

DEFAULT_MODEL = ROOT / "src/seg_edge/assets/seg-edge-edge.onnx"
CONV_TYPES = ("Convolution", "ConvolutionBackpropData")


def conv_flops(op) -> tuple[int, float]:
    """(output channels, FLOPs: 2 per multiply-add) of an OpenVINO Convolution or ConvolutionBackpropData."""
    out = list(op.get_output_partial_shape(0).to_shape())
    w = list(op.input_value(1).get_partial_shape().to_shape())
    if op.get_type_name() == "Convolution":  # weights [Cout, Cin, k...]
        return out[1], 2.0 * np.prod(out) * np.prod(w[1:])
    # transposed: weights [Cin, Cout, k...]; every input voxel meets every weight once
    inputs = np.prod(out[2:]) / np.prod(w[2:])
    return out[1], 2.0 * inputs * w[0] * w[1] * np.prod(w[2:])


def profile(model: Path, window: int, threads: int, iters: int) -> dict:
    import openvino as ov

    core = ov.Core()
    net = core.read_model(str(model))
    fused = fuse_instance_norms(net)
    net.reshape({net.inputs[0].get_any_name(): [1, 5, window, window, window]})
    convs = {op.get_friendly_name(): conv_flops(op) for op in net.get_ordered_ops() if op.get_type_name() in CONV_TYPES}
    compiled = core.compile_model(net, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                               "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 5, window, window, window)).astype(np.float32)
    request.infer({0: x})
    per_node: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for _ in range(iters):
        request.infer({0: x})
        for p in request.profiling_info:
            per_node[p.node_name].append(p.real_time.total_seconds())
            kinds[p.node_name] = p.node_type
    seconds = {name: statistics.median(v) for name, v in per_node.items()}
    return {"fused_norms": fused, "convs": convs, "seconds": seconds, "kinds": kinds}


def group(prof: dict) -> tuple[list[dict], dict]:
    """Per output-channel width: FLOP share, seconds, GFLOP/s; and the totals by node type."""
    by_width: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, (cout, flop) in prof["convs"].items():
        by_width[cout][0] += flop
        by_width[cout][1] += prof["seconds"].get(name, 0.0)
    total_flop = sum(f for f, _ in by_width.values())
    rows = [{"out_channels": c, "flop_share": round(f / total_flop, 3), "seconds": round(s, 4),
             "gflops": round(f / s / 1e9, 1) if s else None} for c, (f, s) in sorted(by_width.items())]
    by_type: dict[str, float] = defaultdict(float)
    for name, s in prof["seconds"].items():
        by_type[prof["kinds"][name]] += s
    return rows, {"total_gflop": round(total_flop / 1e9, 2), "by_node_type_s": dict(sorted(
        ((k, round(v, 4)) for k, v in by_type.items() if v > 0), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--gemm", type=Path, default=ROOT / "docs/gemm_peak.json", help="for the peak")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    prof = profile(args.model, args.window, args.threads, args.iters)
    rows, totals = group(prof)
    peak = json.loads(args.gemm.read_text())["gemm"]["peak_gflops"] if args.gemm.exists() else None
    machine = this_machine(("openvino",))
    lanes = 16 if "avx512f" in machine.flags else 8
    wall = sum(prof["seconds"].values())
    conv_s = sum(r["seconds"] for r in rows)
    result = {"machine": {"cpu": machine.cpu, "flags": list(machine.flags), "cores": machine.cores,
                          "versions": machine.versions},
              "model": str(args.model), "window": args.window, "threads": args.threads, "iters": args.iters,
              "fused_norms": prof["fused_norms"], "float32_lanes": lanes, "gemm_peak_gflops": peak,
              "sum_of_nodes_s": round(wall, 4), "conv_s": round(conv_s, 4), **totals, "by_width": rows,
              "network_gflops": round(totals["total_gflop"] / wall, 1),
              "conv_gflops": round(totals["total_gflop"] / conv_s, 1), "load_avg": os.getloadavg()}
    for r in rows:
        pct = f" = {100 * r['gflops'] / peak:.0f} % of the {peak} GFLOP/s peak" if peak and r["gflops"] else ""
        print(f"{r['out_channels']:4d} output channels: {100 * r['flop_share']:5.1f} % of the FLOPs, "
              f"{r['seconds'] * 1e3:7.1f} ms, {r['gflops']} GFLOP/s{pct}")
    print(f"convolutions {result['conv_gflops']} GFLOP/s, whole window {result['network_gflops']} GFLOP/s "
          f"({100 * conv_s / wall:.0f} % of the time in convolutions); {lanes} float32 lanes per vector")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
