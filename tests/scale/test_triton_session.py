"""``--backend triton``: windows served by a real Triton server on loopback — NVIDIA's PyTriton (its wheel
ships tritonserver) binding an ONNX Runtime session (tools/pytriton_server.py, in .venv-pytriton: make
install-pytriton) — give the labels ``--backend onnxruntime`` gives; bad URLs and models are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scale_helpers import free_port, labels, seg_edge, start_group, stop_group

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (pip install -e '.[triton]')")

ROOT = Path(__file__).resolve().parents[2]
SERVER_PY = Path(os.environ.get("SEG_EDGE_PYTRITON_PYTHON", ROOT / ".venv-pytriton" / "bin" / "python"))
NAME = "edge_tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory, edge_onnx):
    """The tiny model behind PyTriton's Triton server (gRPC on a free loopback port, max batch 2)."""
    if not SERVER_PY.is_file() or subprocess.run([str(SERVER_PY), "-c", "import pytriton"],
                                                 capture_output=True).returncode != 0:
        pytest.skip(f"no PyTriton at {SERVER_PY} (make install-pytriton, or set SEG_EDGE_PYTRITON_PYTHON)")
    work = tmp_path_factory.mktemp("pytriton")
    port = free_port()
    log = work / "server.log"
    proc = start_group([str(SERVER_PY), str(ROOT / "tools" / "pytriton_server.py"), str(edge_onnx), "--name", NAME,
                        "--grpc-port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                        "--max-batch", "2", "--threads", "1", "--workspace", str(work / "ws"), "--shared-memory"], log)
    try:
        deadline = time.monotonic() + 180
        while "READY" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the PyTriton server did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_session_matches_onnxruntime_and_splits_large_batches(server, edge_onnx):
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.sessions import open_session

    artifact = load_artifact(edge_onnx)
    window = np.random.default_rng(0).standard_normal((5, artifact.card.in_channels, 32, 32, 32)).astype(np.float32)
    with open_session(artifact, "triton", url=f"{server}/{NAME}") as remote, \
            open_session(artifact, "onnxruntime", threads=1) as local:
        assert remote.max_batch == 2 and remote.name == "triton"
        got, want = remote.run(window), local.run(window)  # 5 windows: requests of 2, 2 and 1
        one = remote.run(window[:1])
    assert got.shape == want.shape == (5, artifact.card.out_channels, 32, 32, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one, want[:1], rtol=0, atol=1e-5)


def test_shared_memory_gives_the_same_logits_and_cleans_up(server, edge_onnx):
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.sessions import open_session

    artifact = load_artifact(edge_onnx)
    rng = np.random.default_rng(1)
    small, large = (rng.standard_normal((n, artifact.card.in_channels, 32, 32, s)).astype(np.float32)
                    for n, s in ((1, 32), (3, 48)))
    shm_files = lambda: {p.name for p in Path("/dev/shm").glob("seg-edge-*")}  # noqa: E731
    with open_session(artifact, "triton", url=f"{server}/{NAME}?shm=system") as shared, \
            open_session(artifact, "onnxruntime", threads=1) as local:
        a, b = shared.run(small), shared.run(large)  # the second batch is larger: the regions grow
        assert len(shm_files()) == 2
        np.testing.assert_allclose(a, local.run(small), rtol=0, atol=1e-5)
        np.testing.assert_allclose(b, local.run(large), rtol=0, atol=1e-5)
    assert not shm_files()  # unregistered and removed on close


def test_predict_with_triton_gives_the_onnxruntime_labels(server, edge_onnx, case_dir, tmp_path):
    common = ["predict", case_dir, "--model", edge_onnx, "--json", "--batch-size", 3]
    direct = seg_edge(*common, "--out", tmp_path / "ort", "--backend", "onnxruntime", "--threads", 1)
    remote = seg_edge(*common, "--out", tmp_path / "triton", "--backend", "triton", "--url", f"{server}/{NAME}")
    assert direct.returncode == 0, direct.stderr
    assert remote.returncode == 0, remote.stderr
    a, b = (labels(tmp_path / d / f"{case_dir.name}.nii.gz") for d in ("ort", "triton"))
    assert a.any() and np.array_equal(a, b)
    report = json.loads(remote.stdout)
    assert report["model"]["backend"] == "triton"
    assert report["volumes_ml"] == json.loads(direct.stdout)["volumes_ml"]


def test_bad_url_and_model_are_one_line_errors(server, edge_onnx, case_dir, tmp_path):
    host = server.rsplit(":", 1)[0]
    for args, message in (
        (["--url", f"{host}:{free_port()}"], "no Triton server answers there"),
        (["--url", f"{server}/no_such_model"], "no ready model 'no_such_model'"),  # PyTriton hides its index
        (["--url", server], "no ready model"),  # the card's name is not served here
        (["--url", "localhost"], "expected HOST:PORT[/MODEL]"),
        (["--url", "http://localhost:8000"], "the HTTP endpoint is not used"),
        (["--url", f"{server}/{NAME}?shm=cuda"], "unknown option 'shm=cuda'"),
        (["--url", f"{server}/{NAME}", "--threads", "2"], "the triton server sets its own"),
    ):
        out = tmp_path / "out"
        result = seg_edge("predict", case_dir, "--out", out, "--model", edge_onnx, "--backend", "triton", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--backend", "triton"], "--backend triton needs --url HOST:PORT"),
    (["--url", "localhost:8001"], "--url localhost:8001 applies to --backend triton"),
])
def test_url_and_backend_go_together(edge_onnx, case_dir, tmp_path, args, message):
    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    result = CliRunner().invoke(app, ["predict", str(case_dir), "--out", str(tmp_path / "o"), "--model", str(edge_onnx),
                                      *args])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_missing_tritonclient_names_the_extra(edge_onnx, case_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    result = CliRunner().invoke(app, ["predict", str(case_dir), "--out", str(tmp_path / "o"), "--model", str(edge_onnx),
                                      "--backend", "triton", "--url", "localhost:8001"])
    assert result.exit_code == 3 and "pip install 'seg-edge[triton]'" in result.stderr, result.output
