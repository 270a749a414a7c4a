"""INT8 on this CPU: which Q/DQ forms ONNX Runtime turns into integer kernels, and what each form of the
model costs per window on ONNX Runtime and OpenVINO next to FP32 (one run, interleaved repeats).

1. An isolated 3D convolution (32→32 channels, 48³) as float Conv and as DQ → Conv → Q (per-tensor or
   per-channel weights, u8 or s8 activations): the nodes ORT's optimizer leaves, and the time.
2. The model: FP32, INT8 with Q/DQ on Conv inputs only (`seg-edge quantize`), and INT8 with Q/DQ on
   Conv outputs too (`seg-edge quantize --conv-outputs`): seconds per 96³ window, QLinearConv count.

    python benchmarks/int8_forms.py --int8 src/seg_edge/assets/seg-edge-edge-int8.onnx \\
        --int8-conv-outputs model-int8-qconv.onnx --threads 2 --json docs/int8_forms.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.sessions.base import open_session  # noqa: E402

DEFAULT_MODEL = ROOT / "src/seg_edge/assets/seg-edge-edge.onnx"


def _conv_model(qdq: bool, per_channel: bool, act: str, channels: int = 32, size: int = 48):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((channels, channels, 3, 3, 3)).astype(np.float32) * 0.05
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size, size])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if not qdq:
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)], "f", [x_info],
                                  [y_info], [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scale = np.abs(w).reshape(channels, -1).max(1) / 127 if per_channel else np.array(np.abs(w).max() / 127)
    scale = scale.astype(np.float32)
    wq = np.clip(np.round(w / scale.reshape((-1, 1, 1, 1, 1) if per_channel else ())), -127, 127).astype(np.int8)
    zp = np.array(128, np.uint8) if act == "u8" else np.array(0, np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["yc"], pads=[1] * 6),
             helper.make_node("QuantizeLinear", ["yc", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(zp, "xz"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.1, np.float32), "ys"), numpy_helper.from_array(zp, "yz")]
    graph = helper.make_graph(nodes, "q", [x_info], [y_info], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_optimized(path: Path, threads: int, tmp: Path):
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def isolated_conv(threads: int, repeats: int) -> list[dict]:
    import onnx

    rows = []
    x = np.random.default_rng(1).standard_normal((1, 32, 48, 48, 48)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        forms = [("float Conv", False, False, "u8")] + [
            (f"DQ→Conv→Q, {'per-channel' if pc else 'per-tensor'} weights, {act} activations", True, pc, act)
            for pc in (False, True) for act in ("u8", "s8")]
        for label, qdq, pc, act in forms:
            onnx.save(_conv_model(qdq, pc, act), str(tmp / "m.onnx"))
            session, ops = _ort_optimized(tmp / "m.onnx", threads, tmp)
            session.run(None, {"x": x})
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - t0)
            rows.append({"form": label, "ort_nodes": ops, "median_ms": round(1000 * statistics.median(times), 1)})
    return rows


def model_forms(models: dict[str, Path], threads: int, repeats: int) -> list[dict]:
    """Seconds per 96³ window, every (form, backend, streams) in one interleaved loop."""
    runs = {}
    x = None
    for label, path in models.items():
        artifact = load_artifact(path)
        x = np.random.default_rng(0).standard_normal((2, artifact.card.in_channels, 96, 96, 96)).astype(np.float32)
        for backend in ("onnxruntime", "openvino"):
            for streams in (1, 2):
                session = open_session(artifact, backend, threads, streams=streams)
                session.run(x)
                runs[(label, backend, streams)] = (session, [])
    for _ in range(repeats):
        for session, times in runs.values():
            t0 = time.perf_counter()
            session.run(x)
            times.append((time.perf_counter() - t0) / x.shape[0])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fused = {label: _ort_optimized(path, threads, Path(folder))[1].count("QLinearConv")
                 for label, path in models.items()}
    for (label, backend, streams), (session, times) in runs.items():
        session.close()
        rows.append({"model": label, "backend": backend, "streams": streams,
                     "seconds_per_window": round(statistics.median(times), 3),
                     "ort_qlinearconv_nodes": fused[label] if backend == "onnxruntime" else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--int8", type=Path, required=True, help="Q/DQ on Conv inputs (seg-edge quantize)")
    parser.add_argument("--int8-conv-outputs", type=Path, default=None, help="seg-edge quantize --conv-outputs")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    models = {"FP32": args.fp32, "INT8, Q/DQ on Conv inputs": args.int8}
    if args.int8_conv_outputs:
        models["INT8, Q/DQ on Conv inputs and outputs"] = args.int8_conv_outputs
    load = os.getloadavg()
    conv = isolated_conv(args.threads, args.repeats + 2)
    print(json.dumps(conv, indent=1), flush=True)
    forms = model_forms(models, args.threads, args.repeats)
    print(json.dumps(forms, indent=1), flush=True)
    m = this_machine(("onnxruntime", "openvino"))
    result = {"machine": {"cpu": m.cpu, "flags": list(m.flags), "cores": m.cores, "versions": m.versions},
              "threads": args.threads, "repeats": args.repeats, "isolated_conv": conv, "model_forms": forms,
              "load_avg_before": load, "load_avg_after": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
