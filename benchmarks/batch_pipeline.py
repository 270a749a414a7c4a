"""A batch of cases through `seg-edge predict FOLDER`: end-to-end time per case against network time
per case, and the process's peak RSS; then, in one process, the pipelined batch against one case
after another on the same loaded model (the effect of the pipeline alone).

    python benchmarks/batch_pipeline.py --cases data/batch10 --model model.tuned.onnx --threads 2 \\
        --json docs/batch_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.runtime.jobs import Job  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.runner import OutputPolicy, run_cases  # noqa: E402
from seg_edge.runtime.segmenter import Segmenter  # noqa: E402


def run_batch(seg, jobs, policy):
    """One case after another: ``run_cases`` of one job never pipelines."""
    return [next(run_cases([job], seg, policy)) for job in jobs]


def run_pipelined(seg, jobs, policy):
    return list(run_cases(jobs, seg, policy))


def process_run(args, out: Path) -> dict:
    """One `seg-edge predict FOLDER` process: wall, peak RSS (wait4), per-case stage timings."""
    cmd = [sys.executable, "-m", "seg_edge", "predict", str(args.cases), "--model", str(args.model), "--out",
           str(out), "--overwrite", "--json"] + (["--threads", str(args.threads)] if args.threads else [])
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}\n{stderr.decode()}")
    cases = json.loads(stdout)["cases"]
    n = len(cases)
    network = sum(c["timings_s"]["inference"] for c in cases)
    stages = {k: round(sum(c["timings_s"][k] for c in cases) / n, 3)
              for k in ("load", "preprocess", "inference", "postprocess", "write")}
    return {"cases": n, "process_wall_s": round(wall, 2), "wall_per_case_s": round(wall / n, 3),
            "network_per_case_s": round(network / n, 3), "ratio_wall_to_network": round(wall / network, 3),
            "stages_per_case_s": stages, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "load_avg_1min_before": round(load, 2), "profile_note": stderr.decode().strip().splitlines()[:1]}


def in_process(args, tmp: Path) -> dict:
    """The pipelined batch and one case after another on one loaded model, alternately."""
    jobs = lambda out: [Job(p.name, p, out / f"{p.name}.nii.gz")  # noqa: E731
                        for p in sorted(args.cases.iterdir()) if p.is_dir()]
    rows = {"sequential": [], "pipelined": []}
    with Segmenter.open_profiled(args.model, threads=args.threads) as seg:
        for _ in range(args.repeats):
            for name, run in (("sequential", run_batch), ("pipelined", run_pipelined)):
                t0 = time.perf_counter()
                results = run(seg, jobs(tmp / name), OutputPolicy(overwrite=True))
                wall = time.perf_counter() - t0
                network = sum(r.timings["inference"] for r in results)
                rows[name].append({"wall_s": round(wall, 2), "network_s": round(network, 2),
                                   "ratio": round(wall / network, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = process_run(args, Path(tmp) / "process")
        print(json.dumps(proc), flush=True)
        inproc = in_process(args, Path(tmp))
        print(json.dumps(inproc), flush=True)
    m = this_machine(("onnxruntime", "openvino"))
    result = {"machine": {"cpu": m.cpu, "flags": list(m.flags), "cores": m.cores, "versions": m.versions},
              "model": str(args.model), "cases_dir": str(args.cases), "process": proc, "in_process": inproc}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
