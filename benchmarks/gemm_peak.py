"""The machine's measured FP32 GEMM peak next to the network's FP32 throughput on each CPU backend.

GEMM peak: the best of numpy's sgemm (its BLAS) and OpenVINO's MatMul on square float32 matrices at
the given threads, largest sustained GFLOP/s over several sizes. Network: Conv + ConvTranspose
GFLOP of one call (2 per multiply-add, counted from the graph) divided by the call's median time,
for each window shape and batch asked, on every FP32 backend that loads.

    python benchmarks/gemm_peak.py --threads 2 --windows 96x96x96,160x192x160 --json docs/gemm_peak.json

A backend written ``openvino:avx2`` is measured in a child process started with
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN reads it once, when OpenVINO's CPU plugin loads); the GEMM peak is
always measured uncapped, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.evaluation.bench import graph_gflop  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.sessions.base import open_session  # noqa: E402

DEFAULT_MODEL = ROOT / "src/seg_edge/assets/seg-edge-edge.onnx"


def numpy_gemm(n: int, repeats: int) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def openvino_gemm(n: int, repeats: int, threads: int) -> float | None:
    try:
        import openvino as ov
        import openvino.runtime.opset13 as ops
    except ImportError:
        try:
            import openvino as ov
            from openvino import opset13 as ops
        except ImportError:
            return None
    a = ops.parameter([n, n], np.float32)
    b = ops.constant(np.random.default_rng(1).standard_normal((n, n)).astype(np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    request.infer({0: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def gemm_peak(threads: int, sizes=(1024, 2048, 3072), repeats: int = 5) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    out = {}
    for n in sizes:
        if threadpool_limits:
            with threadpool_limits(threads):
                out[f"numpy {n}"] = numpy_gemm(n, repeats)
        else:
            out[f"numpy {n}"] = numpy_gemm(n, repeats)
        ov = openvino_gemm(n, repeats, threads)
        if ov is not None:
            out[f"openvino {n}"] = ov
    return {"gflops": {k: round(v, 1) for k, v in out.items()}, "peak_gflops": round(max(out.values()), 1),
            "peak_by": max(out, key=out.get)}


def network(model: Path, backend: str, window: tuple[int, ...], batch: int, threads: int, iters: int,
            streams: int = 1) -> dict:
    artifact = load_artifact(model)
    card = artifact.card
    shape = (batch, card.in_channels, *window)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with open_session(artifact, backend, threads, streams=streams) as session:
        session.run(x)
        session.run(x)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - t0)
    gflop = graph_gflop(model, shape)
    median = statistics.median(times)
    return {"backend": backend, "window": list(window), "batch": batch, "streams": streams,
            "gflop_per_call": round(gflop, 2),
            "median_s": round(median, 4), "min_s": round(min(times), 4), "gflops": round(gflop / median, 1),
            "gflops_best": round(gflop / min(times), 1)}


def capped_rows(args, backend: str) -> list[dict]:
    """``openvino:ISA``'s rows, measured by this script in a child process with the cap set."""
    name, isa = backend.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--model", str(args.model), "--threads", str(args.threads), "--windows",
               args.windows, "--batches", args.batches, "--streams", args.streams, "--backends", name,
               "--iters", str(args.iters), "--no-peak", "--json", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, ONEDNN_MAX_CPU_ISA=isa.upper()))
        rows = json.loads(out.read_text())["network"]
    for row in rows:
        row["backend"] = f"{name} (ONEDNN_MAX_CPU_ISA={isa.upper()})"
    return rows


def _report(row: dict, peak: dict) -> dict:
    row["percent_of_peak"] = round(100 * row["gflops"] / peak["peak_gflops"], 1)
    print(f"{row['backend']:12s} window {'x'.join(map(str, row['window']))} batch {row['batch']} streams "
          f"{row['streams']}: {row['gflops']:.1f} GFLOP/s (median {row['median_s']:.3f} s per call) = "
          f"{row['percent_of_peak']:.1f} % of the {peak['peak_gflops']} GFLOP/s GEMM peak", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--windows", default="96x96x96")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--streams", default="1", help="parallel window streams to try (batches below are skipped)")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-peak", action="store_true", help=argparse.SUPPRESS)  # capped_rows' child
    args = parser.parse_args()
    windows = [tuple(int(v) for v in w.split("x")) for w in args.windows.split(",")]
    if os.environ.get("ONEDNN_MAX_CPU_ISA") and not args.no_peak:
        raise SystemExit("run uncapped (the GEMM peak is the machine's); ask for capped arms as openvino:avx2")
    peak = {"peak_gflops": float("nan")} if args.no_peak else gemm_peak(args.threads)
    if not args.no_peak:
        print(f"FP32 GEMM peak: {peak['peak_gflops']} GFLOP/s ({peak['peak_by']}, {args.threads} threads)",
              flush=True)
    rows = []
    for backend in args.backends.split(","):
        if ":" in backend:
            rows += [_report(row, peak) for row in capped_rows(args, backend)]
            continue
        for window in windows:
            for batch, streams in ((int(b), int(s)) for b in args.batches.split(",") for s in args.streams.split(",")):
                if streams > batch:
                    continue
                rows.append(_report(network(args.model, backend, window, batch, args.threads, args.iters, streams),
                                    peak))
    m = this_machine(tuple(b.split(":")[0] for b in args.backends.split(",")))
    result = {"machine": {"cpu": m.cpu, "flags": list(m.flags), "cores": m.cores, "versions": m.versions},
              "threads": args.threads, "gemm": peak, "network": rows, "load_avg": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
