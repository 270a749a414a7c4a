"""OpenVINO backend, --precision-hint and --backend auto."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.errors import BackendUnavailable
from seg_edge.runtime.io import load_case
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

ov = pytest.importorskip("openvino")

BLOCK = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {blocked!r}:\n"
    "            raise ImportError('blocked for this test: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from seg_edge.cli.app import main\n"
    "sys.argv = ['seg-edge'] + {argv!r}\n"
    "main()\n"
)


def _run_blocked(blocked, argv):
    code = BLOCK.format(blocked=set(blocked), argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_openvino_segments_like_onnxruntime(edge_onnx, case_dir):
    card_modalities = ("flair", "t1", "t1ce", "t2")
    case = load_case(case_dir, card_modalities)
    out = {}
    for backend in ("onnxruntime", "openvino"):
        with Segmenter.open(edge_onnx, backend, options=SegmenterOptions(probabilities=True)) as seg:
            out[backend] = seg.predict(case)
            assert seg.session.name == backend
    agreement = float((out["openvino"].labels == out["onnxruntime"].labels).mean())
    assert agreement > 0.99
    assert float(np.abs(out["openvino"].probabilities - out["onnxruntime"].probabilities).max()) < 0.1


def test_bf16_needs_cpu_support(monkeypatch, edge_onnx):
    import seg_edge.runtime.sessions.openvino as ovs
    from seg_edge.artifact import load_artifact

    real = ov.Core

    class NoBF16Core:
        def __init__(self):
            self._core = real()

        def get_property(self, device, name):
            return ["FP32", "INT8"] if name == "OPTIMIZATION_CAPABILITIES" else self._core.get_property(device, name)

        def __getattr__(self, item):
            return getattr(self._core, item)

    monkeypatch.setattr(ov, "Core", NoBF16Core)
    with pytest.raises(BackendUnavailable, match="no BF16"):
        ovs.OpenVINOSession(load_artifact(edge_onnx), precision_hint="bf16")
    ovs.OpenVINOSession(load_artifact(edge_onnx), precision_hint="f32").close()


def test_without_the_extra_the_message_names_it(edge_onnx, case_dir, tmp_path):
    result = _run_blocked({"openvino"}, ["predict", case_dir, "--model", edge_onnx, "--backend", "openvino",
                                         "--out", tmp_path])
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "seg-edge[openvino]" in lines[0]


def test_auto_says_what_it_chose_and_why(edge_onnx, case_dir, tmp_path):
    result = CliRunner().invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--backend", "auto",
                                      "--out", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    assert "backend auto → openvino" in result.stderr and "skipped tensorrt" in result.stderr
    assert json.loads(result.stdout)["model"]["backend"] == "openvino"
    blocked = _run_blocked({"openvino"}, ["predict", case_dir, "--model", edge_onnx, "--backend", "auto",
                                          "--out", tmp_path / "b", "--json"])
    assert blocked.returncode == 0, blocked.stderr
    assert "backend auto → onnxruntime" in blocked.stderr and "skipped openvino" in blocked.stderr


def test_precision_hint_is_openvino_only(edge_onnx, case_dir, tmp_path):
    result = CliRunner().invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--precision-hint",
                                      "bf16", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "applies to openvino" in result.stderr


def test_instance_norms_run_as_fused_mvn(edge_onnx, case_dir):
    """Every exported InstanceNorm subgraph becomes OpenVINO's MVN, and the logits stay those of the
    graph as written (and of ONNX Runtime)."""
    from seg_edge.artifact import load_artifact
    onnx = pytest.importorskip("onnx")
    from seg_edge.runtime.sessions.base import open_session
    from seg_edge.runtime.sessions.openvino import OpenVINOSession

    artifact = load_artifact(edge_onnx)
    norms = sum(node.op_type == "Sqrt" for node in onnx.load(str(edge_onnx)).graph.node)
    assert norms > 0
    fused = OpenVINOSession(artifact, threads=1)
    plain = OpenVINOSession(artifact, threads=1, fuse_norms=False)
    assert (fused.fused_norms, plain.fused_norms) == (norms, 0)
    case = load_case(case_dir, ("flair", "t1", "t1ce", "t2"))
    segmenter = Segmenter(artifact, fused)
    window = np.ascontiguousarray(segmenter.preprocess(case.images).tensor[None, :, :32, :32, :32])
    ort = open_session(artifact, "onnxruntime", threads=1)
    a, b, c = fused.run(window), plain.run(window), ort.run(window)
    assert np.abs(a - b).max() < 1e-3  # the rewrite itself changes (almost) nothing
    assert np.abs(a - c).max() <= 2 * np.abs(b - c).max() + 1e-4  # and is no further from ONNX Runtime
    for session in (fused, plain, ort):
        session.close()


CAPPED = (
    "import json, numpy as np\n"
    "from seg_edge.artifact import load_artifact\n"
    "from seg_edge.runtime.sessions.openvino import OpenVINOSession\n"
    "s = OpenVINOSession(load_artifact({model!r}), threads=1)\n"
    "x = np.random.default_rng(0).standard_normal((1, 5, 32, 32, 32)).astype(np.float32)\n"
    "np.save({out!r}, s.run(x))\n"
    "print(json.dumps({{'cap': s.isa_cap, 'kernels': s.kernels}}))\n"
)


def test_onednn_isa_cap_runs_avx2_kernels_with_the_same_numbers(edge_onnx, tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2, set before the process starts: AVX2 convolution kernels, logits as native."""
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.machine import backend_version, mismatch, this_machine
    from seg_edge.runtime.sessions.openvino import OpenVINOSession

    code = CAPPED.format(model=str(edge_onnx), out=str(tmp_path / "capped.npy"))
    env = dict(__import__("os").environ, ONEDNN_MAX_CPU_ISA="avx2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["cap"] == "AVX2" and info["kernels"] and all("avx512" not in k for k in info["kernels"]), info
    native = OpenVINOSession(load_artifact(edge_onnx), threads=1)
    x = np.random.default_rng(0).standard_normal((1, 5, 32, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "capped.npy"), native.run(x), atol=1e-4)
    here = this_machine(("openvino",))  # a profile tuned natively does not apply under the cap, nor the reverse
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert backend_version("openvino").endswith("(ONEDNN_MAX_CPU_ISA=AVX2)")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in mismatch(here, "openvino")


def test_onednn_isa_cap_is_never_silently_ignored(edge_onnx, monkeypatch):
    """A cap set after the CPU plugin loaded natively is refused at the first compile; bf16 under an
    AVX2 cap is refused at once (OpenVINO would fail to build its kernels)."""
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.machine import this_machine
    from seg_edge.runtime.sessions.openvino import OpenVINOSession

    artifact = load_artifact(edge_onnx)
    x = np.zeros((1, 5, 32, 32, 32), dtype=np.float32)
    OpenVINOSession(artifact, threads=1).run(x)  # the plugin is loaded in this process, uncapped
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendUnavailable, match="no BF16 kernels"):
            OpenVINOSession(artifact, threads=1, precision_hint="bf16")
    late = OpenVINOSession(artifact, threads=1)
    if "avx512f" not in this_machine().flags:
        pytest.skip("this CPU has no AVX-512: its kernels are AVX2 with or without the cap")
    with pytest.raises(BackendUnavailable, match="set after OpenVINO's CPU plugin loaded"):
        late.run(x)
