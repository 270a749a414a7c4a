"""Where ONNX Runtime CPU spends a window's time, by op type (ORT's own profiler).

    python benchmarks/ort_profile.py MODEL.onnx [MODEL2.onnx ...] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seg_edge.artifact import load_artifact


def profile(model: Path, runs: int, threads: int) -> dict[str, float]:
    card = load_artifact(model).card
    x = np.random.default_rng(0).standard_normal((1, card.in_channels, *card.patch_size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "p")
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        session.run(None, {card.input_name: x})  # warm-up, excluded below
        for _ in range(runs):
            session.run(None, {card.input_name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e6 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    for model in args.models:
        per_op = profile(model, args.runs, args.threads)
        total = sum(per_op.values())
        print(f"{model.name}: {total:.3f} s per window in kernels")
        for op, seconds in list(per_op.items())[:8]:
            print(f"  {op:24s} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")


if __name__ == "__main__":
    main()
