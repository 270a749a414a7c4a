"""Issue 15's figures, on synthetic cases: a folder through the local engine and through Ray with 1 and 2
actors (cases per minute, with and without the fixed cost of starting Ray and loading the model on each
actor), and the round trip of one window through a Triton server on loopback (PyTriton binding ONNX
Runtime, tools/pytriton_server.py) against the same window on an ONNX Runtime session in this process.

    python benchmarks/scale.py --n 8 --shape 128,128,96 --json docs/scale.json

Every figure carries the 1-minute load average read before it: on a shared machine they are lower
bounds of what an idle one does. Needs the 'ray' and 'triton' extras and make install-pytriton.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.sessions import open_session  # noqa: E402
from seg_edge.synth import write_case  # noqa: E402

DEFAULT_MODEL = ROOT / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"
ENGINES = {  # name → extra predict arguments
    "local, 2 threads": ["--threads", "2"],
    "ray, 1 actor × 2 CPUs": ["--engine", "ray", "--actors", "1", "--actor-cpus", "2"],
    "ray, 2 actors × 1 CPU": ["--engine", "ray", "--actors", "2", "--actor-cpus", "1"],
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_cases(root: Path, n: int, shape: tuple[int, int, int]) -> Path:
    for i in range(n):
        write_case(root, 3100, i, shape)
    return root


def predict(cases: Path, out: Path, model: Path, extra: list[str], prefix=(), env=None) -> tuple[float, list[dict]]:
    cmd = [*prefix, sys.executable, "-m", "seg_edge", "predict", str(cases), "--out", str(out), "--model", str(model),
           "--json", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
    return wall, json.loads(done.stdout)["cases"]


def engine_row(name: str, extra: list[str], cases: Path, out: Path, model: Path, prefix=(), env=None) -> dict:
    """One engine: a full run, then a re-run where every case is skipped (the fixed cost: start-up, models)."""
    before = load()
    wall, rows = predict(cases, out, model, extra, prefix, env)
    fixed, _ = predict(cases, out, model, extra, prefix, env)
    n = sum(r["status"] == "done" for r in rows)
    stages = {k: round(statistics.mean(r["timings_s"][k] for r in rows), 3)
              for k in ("load", "preprocess", "inference", "postprocess", "write")}
    return {"engine": name, "cases": n, "wall_s": round(wall, 2), "fixed_s": round(fixed, 2),
            "cases_per_min": round(60 * n / wall, 2),
            "cases_per_min_after_start": round(60 * n / (wall - fixed), 2) if wall > fixed else None,
            "stages_per_case_s": stages, "load_1min_before": before, "load_1min_after": load()}


@contextlib.contextmanager
def two_nodes(work: Path):
    """A Ray head and a second node (1 CPU each) in a network namespace of their own (only loopback; needs
    root), with a token of their own; yields (address, command prefix into the namespace, environment)."""
    netns, temp = f"seg-edge-bench-{os.getpid()}", Path(tempfile.mkdtemp(prefix="sgb", dir="/tmp"))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    inside = ["ip", "netns", "exec", netns]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    procs = []
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        port = free_port()
        for name, args in (("head", ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir",
                                     str(temp)]), ("worker", ["--address", f"127.0.0.1:{port}"])):
            log = work / f"ray-{name}.log"
            with open(log, "wb") as fh:
                procs.append(subprocess.Popen([*inside, str(Path(sys.executable).parent / "ray"), "start", *args,
                                               "--num-cpus", "1", "--disable-usage-stats", "--block"], stdout=fh,
                                              stderr=subprocess.STDOUT, start_new_session=True,
                                              env={**os.environ, **env}))
            while "Ray runtime started" not in log.read_text(errors="replace"):
                if procs[-1].poll() is not None:
                    raise SystemExit(f"ray start failed: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", inside, env
    finally:
        for proc in reversed(procs):
            stop_server(proc)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: Path, model: Path, threads: int, work: Path) -> tuple[subprocess.Popen, str]:
    port, log = free_port(), work / "pytriton.log"
    cmd = [str(python), str(ROOT / "tools" / "pytriton_server.py"), str(model), "--name", "bench",
           "--grpc-port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
           "--max-batch", "4", "--threads", str(threads), "--workspace", str(work / f"ws-{port}"), "--shared-memory"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "READY" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"PyTriton did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return proc, f"127.0.0.1:{port}/bench"


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the leader (it stops its children), SIGKILL to whatever is left of its group after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def window_overhead(model: Path, python: Path, threads: int, repeats: int, batch: int, work: Path) -> dict:
    """Median seconds per call of the same window batch: Triton (server ORT, ``threads``), with and without
    system shared memory, vs ORT in this process."""
    import numpy as np

    artifact = load_artifact(model)
    shape = (batch, artifact.card.in_channels, *artifact.card.patch_size)
    window = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    proc, url = start_server(python, model, threads, work)
    try:
        before = load()
        times = {"triton": [], "triton shm": [], "onnxruntime": []}
        with open_session(artifact, "triton", url=url) as remote, \
                open_session(artifact, "triton", url=url + "?shm=system") as shared, \
                open_session(artifact, "onnxruntime", threads=threads) as local:
            sessions = {"triton": remote, "triton shm": shared, "onnxruntime": local}
            for session in sessions.values():  # warm-up: first calls allocate
                session.run(window)
            for _ in range(repeats):  # alternated, so load changes hit all three
                for name, session in sessions.items():
                    t0 = time.perf_counter()
                    session.run(window)
                    times[name].append(time.perf_counter() - t0)
    finally:
        stop_server(proc)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"window": list(shape), "repeats": repeats, "threads": threads,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "overhead_s_per_window": round((med["triton"] - med["onnxruntime"]) / batch, 4),
            "overhead_s_per_window_shm": round((med["triton shm"] - med["onnxruntime"]) / batch, 4),
            "payload_mb_per_window": round((artifact.card.in_channels + artifact.card.out_channels)
                                           * int(np.prod(shape[2:])) * 4 / 2**20, 1),
            "load_1min_before": before, "load_1min_after": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=8, help="synthetic cases")
    parser.add_argument("--shape", default="128,128,96")
    parser.add_argument("--repeats", type=int, default=15, help="window calls per side")
    parser.add_argument("--pytriton", type=Path, default=ROOT / ".venv-pytriton" / "bin" / "python")
    parser.add_argument("--parts", default="engines,cluster,triton", help="any of engines, cluster (root: a "
                        "network namespace), triton")
    parser.add_argument("--json", type=Path, default=None, help="results; parts not run keep their old entries")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    shape = tuple(int(v) for v in args.shape.split(","))
    result = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    result.update({"machine": dataclasses.asdict(this_machine(("onnxruntime",))), "model": str(args.model),
                   "data": "synthetic (seg-edge synth, seed 3100)"})
    with tempfile.TemporaryDirectory(prefix="seg-edge-scale-") as tmp:
        work = Path(tmp)
        if parts & {"engines", "cluster"}:
            cases = make_cases(work / "cases", args.n, shape)
            result["case_shape"], result["cases"] = list(shape), args.n
        if "engines" in parts:
            result["engines"] = [_show(engine_row(name, extra, cases, work / f"out{i}", args.model))
                                 for i, (name, extra) in enumerate(ENGINES.items())]
        if "cluster" in parts:
            with two_nodes(work) as (address, inside, env):
                extra = ["--engine", "ray", "--address", address, "--actors", "2", "--actor-cpus", "1"]
                result["cluster"] = [_show(engine_row("ray cluster, 2 nodes × 1 CPU, 2 actors", extra, cases,
                                                      work / "out-cluster", args.model, inside, env))]
        if "triton" in parts:
            result["triton"] = [_show(window_overhead(args.model, args.pytriton, 2, args.repeats, batch, work))
                                for batch in (1, 4)]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


def _show(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
