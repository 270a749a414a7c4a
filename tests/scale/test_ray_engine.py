"""``seg-edge predict FOLDER --engine ray``: the local engine's outputs, failures and resumption, on a local
Ray instance and on a two-node cluster started on loopback; bad Ray options refused in one line."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scale_helpers import free_port, make_batch, same_outputs, seg_edge, start_group, stop_group

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

GOOD = ["case0", "case1", "case2", "case3"]
# Ray >= 2.5x clusters take a token: the same one on every node and in the driver (this cluster's own)
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
RAY = [str(Path(sys.executable).parent / "ray")]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, cases_dir) -> Path:
    return make_batch(tmp_path_factory.mktemp("raybatch"), cases_dir)


@pytest.fixture(scope="module")
def local_engine(tmp_path_factory, batch, edge_onnx) -> Path:
    """The batch through the local engine (one thread, as each actor below runs)."""
    out = tmp_path_factory.mktemp("local")
    result = seg_edge("predict", batch, "--out", out, "--model", edge_onnx, "--threads", 1)
    assert result.returncode == 1, result.stderr  # the corrupt case
    return out


def _check_run(result, out: Path, local: Path) -> dict:
    assert result.returncode == 1, result.stderr  # one case failed, the others ran
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    status = {c["case_id"]: c["status"] for c in report["cases"]}
    assert status == {**{c: "done" for c in GOOD}, "case9_corrupt": "failed"}
    failed = next(c for c in report["cases"] if c["status"] == "failed")
    assert "t1ce" in failed["error"] and "\n" not in failed["error"]
    assert report["summary"] == {"done": 4, "skipped": 0, "failed": 1}
    done = next(c for c in report["cases"] if c["case_id"] == "case0")
    assert done["model"]["backend"] == "onnxruntime" and set(done["volumes_ml"]) >= {"WT", "TC", "ET"}
    same_outputs(out, local, GOOD)
    for name in GOOD:
        assert json.loads((out / f"{name}.json").read_text())["volumes_ml"] == \
            json.loads((local / f"{name}.json").read_text())["volumes_ml"]
    assert not (out / "case9_corrupt.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".seg-edge-")]  # no temporary files left
    return report


def _check_rerun(result) -> None:
    assert result.returncode == 1, result.stderr  # the corrupt case is tried again and fails again
    report = json.loads(result.stdout)
    assert {c["case_id"]: c["status"] for c in report["cases"]} == {**{c: "skipped" for c in GOOD},
                                                                    "case9_corrupt": "failed"}


def test_local_ray_instance_with_two_actors(batch, local_engine, edge_onnx, tmp_path):
    out = tmp_path / "ray"
    args = ["predict", batch, "--out", out, "--model", edge_onnx, "--engine", "ray", "--actors", 2, "--json"]
    first = seg_edge(*args)
    _check_run(first, out, local_engine)
    assert "starting a local Ray instance on this machine" in first.stderr
    assert "2 actor(s) on 1 node(s)" in first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = seg_edge(*args)
    _check_rerun(again)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten
    table = seg_edge(*args[:-1], "--overwrite")  # the summary table, as the local engine prints it
    assert table.returncode == 1 and "batch summary" in table.stdout and "4 done, 0 skipped, 1 failed" in table.stdout


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node, one CPU each, on loopback in a network namespace of their own (only ``lo``
    there, so Ray's nodes take 127.0.0.1 as their address); their process groups and the namespace are
    removed afterwards. Yields (address, the command prefix that runs a process in the namespace)."""
    netns = f"seg-edge-ray-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True) if shutil.which("ip") else None
    if made is None or made.returncode != 0:
        pytest.skip(f"a network namespace keeps the two-node cluster on loopback; cannot make one here "
                    f"({made.stderr.strip() if made else 'no ip command'})")
    inside = ["ip", "netns", "exec", netns]
    procs = []
    temp = Path(tempfile.mkdtemp(prefix="sgr", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        port = free_port()
        address = f"127.0.0.1:{port}"
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        for name, args in (("head", ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir",
                                     str(temp)]), ("worker", ["--address", address])):
            procs.append(start_group([*inside, *RAY, "start", *args, *common], temp / f"{name}.log", AUTH))
            _wait_for_start(procs[-1], temp / f"{name}.log")
        yield address, inside
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_start(proc, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"ray start exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"ray start did not start in {timeout} s: {log.read_text()[-2000:]}")


def test_two_node_cluster_on_loopback(two_nodes, batch, local_engine, edge_onnx, tmp_path):
    address, inside = two_nodes
    out = tmp_path / "cluster"
    args = ["predict", batch, "--out", out, "--model", edge_onnx, "--engine", "ray", "--address", address,
            "--actors", 2, "--json"]
    first = seg_edge(*args, prefix=inside, env=AUTH)
    _check_run(first, out, local_engine)
    assert f"joined the Ray cluster at {address}" in first.stderr
    assert "2 actor(s) on 2 node(s)" in first.stderr  # one CPU per node: an actor on each
    _check_rerun(seg_edge(*args, prefix=inside, env=AUTH))
    too_many = seg_edge(*args[:-3], "--actors", 3, "--out", tmp_path / "none", prefix=inside, env=AUTH)
    assert too_many.returncode == 2 and "needs 3 CPUs; the Ray cluster has 2" in too_many.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("extra,message", [
    (["--engine", "ray", "--address", "127.0.0.1:{closed}"], "no Ray cluster answers there"),
    (["--engine", "ray", "--address", "nohost"], "expected HOST:PORT of a Ray head node"),
    (["--engine", "ray", "--actors", "0"], "--actors"),
    (["--engine", "ray", "--actor-cpus", "0"], "--actor-cpus 0.0 (expected more than 0)"),
    (["--actors", "2"], "--actors apply to --engine ray"),
    (["--address", "127.0.0.1:6379"], "--address apply to --engine ray"),
    (["--engine", "spark"], "--engine"),
])
def test_bad_ray_options_are_one_line_errors(batch, edge_onnx, tmp_path, extra, message):
    out = tmp_path / "out"
    extra = [e.format(closed=free_port()) for e in extra]
    result = seg_edge("predict", batch, "--out", out, "--model", edge_onnx, *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_ray_engine_needs_a_folder_of_cases(case_dir, edge_onnx, tmp_path):
    result = seg_edge("predict", case_dir, "--out", tmp_path / "o", "--model", edge_onnx, "--engine", "ray")
    assert result.returncode == 2 and "--engine ray runs a folder of case folders" in result.stderr


def test_missing_ray_names_the_extra(batch, edge_onnx, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    result = CliRunner().invoke(app, ["predict", str(batch), "--out", str(tmp_path / "o"), "--model", str(edge_onnx),
                                      "--engine", "ray"])
    assert result.exit_code == 3, result.output
    assert "pip install 'seg-edge[ray]'" in result.stderr and not (tmp_path / "o").exists()
