"""In a runtime-only install, a command that needs an extra says which, and how to install it: one line,
exit 3, never "internal error ... this is a bug" (exit 70)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import runtime_env
from seg_edge.card import CARD_KEY
from seg_edge.errors import EXTRAS, MissingExtra
from seg_edge.onnxproto import read_onnx_metadata
from test_help import command_paths

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "seg_edge" / "assets"
MODEL, CHECKPOINT = ASSETS / "seg-edge-edge.onnx", ASSETS / "seg-edge-edge.pt"
EXAMPLE = ROOT / "examples" / "SynBraTS_3007_000"


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> Path:
    """A venv with the core dependencies only (tests/cli/runtime_env.py); built once, in about a second."""
    start = time.perf_counter()
    python = runtime_env.build(tmp_path_factory.mktemp("runtime-venv") / "venv")
    print(f"runtime-only venv built in {time.perf_counter() - start:.2f} s")
    return python


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Files that get each command past its own checks, up to the optional package it needs."""
    d = tmp_path_factory.mktemp("extras-inputs")
    (d / "card.json").write_text(read_onnx_metadata(MODEL)[CARD_KEY])
    (d / "net.py").write_text("def net():\n    return None\n")
    (d / "nnunet").mkdir()
    (d / "cal").mkdir()
    for name in ("case_a", "case_b"):  # quantize holds one case out of calibration for its evaluation
        (d / "cal" / name).symlink_to(EXAMPLE)
    return {"card": d / "card.json", "net": d / "net.py", "nnunet": d / "nnunet", "cal": d / "cal",
            "bundle": _bundle_files(d / "bundle"), "out": d}


def _bundle_files(bundle: Path) -> Path:
    """A MONAI bundle's files as the test fixture writes them (the configs only: import monai-bundle checks
    them before it imports MONAI); the weights file is never read without MONAI."""
    spec = importlib.util.spec_from_file_location("monai_bundle_fixture",
                                                  ROOT / "tools" / "fixtures" / "monai_bundle_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fixture  # its dataclasses look their module up
    spec.loader.exec_module(fixture)
    recipe = fixture.RECIPES["tiny"]
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps(fixture.metadata(recipe, "1.4.0", "2.5.0")))
    (bundle / "configs" / "inference.json").write_text(json.dumps(fixture.inference_config(recipe)))
    shutil.copyfile(CHECKPOINT, bundle / "models" / "model.pt")
    return bundle


def needs_extra(i: dict[str, Path]) -> list[tuple[tuple[str, ...], list[str], str | None]]:
    """(command, argv, the extra it must name) for each command, or command option, that needs an extra. None:
    TensorRT, which no extra installs (JetPack, or NVIDIA's index) — still exit 3 in one line."""
    o = i["out"]
    return [
        (("export",), ["export", str(CHECKPOINT), "--out", str(o / "e.onnx")], "export"),
        (("import", "nvidia"), ["import", "nvidia", str(CHECKPOINT), "--out", str(o / "n.onnx")], "export"),
        (("import", "torch"), ["import", "torch", "--network", f"{i['net']}:net", "--weights", str(CHECKPOINT),
                               "--card", str(i["card"]), "--out", str(o / "t.onnx")], "export"),
        (("import", "onnx"), ["import", "onnx", str(MODEL), "--card", str(i["card"]), "--out", str(o / "i.onnx")],
         "export"),
        (("import", "monai-bundle"), ["import", "monai-bundle", str(i["bundle"]), "--out", str(o / "mb.onnx")],
         "export"),
        (("import", "nnunet"), ["import", "nnunet", str(i["nnunet"]), "--out", str(o / "nn.onnx")], "nnunet"),
        (("quantize",), ["quantize", str(MODEL), "--calibration", str(i["cal"]), "--out", str(o / "q.onnx")],
         "export"),
        (("lint",), ["lint", str(MODEL), "--target", "tensorrt"], "export"),
        (("parity",), ["parity", str(MODEL), str(EXAMPLE)], "export"),
        (("parity",), ["parity", str(MODEL), str(EXAMPLE), "--report", str(o / "p.html")], "preview"),
        (("train",), ["train", str(EXAMPLE.parent), "--out", str(o / "run")], "export"),
        (("synth",), ["synth", "--out", str(o / "s"), "--n", "1", "--anatomy", "mni152"], "synth"),
        (("serve",), ["serve", "--data", str(o / "serve")], "serve"),
        # listen needs the dicom extra and the preprocess one; in a runtime-only install the first is named
        (("listen",), ["listen", "--data", str(o / "listen"), "--send-to", "PACS@127.0.0.1:4242"], "dicom"),
        (("evaluate",), ["evaluate", str(EXAMPLE.parent), str(EXAMPLE.parent), "--report", str(o / "r.html")],
         "preview"),
        (("evaluate",), ["evaluate", str(EXAMPLE.parent), str(EXAMPLE.parent), "--challenge", "brats2023"],
         "brats2023"),
        (("tune",), ["tune", str(MODEL), "--cases", str(EXAMPLE.parent), "--plot", str(o / "f.png")], "docs"),
        (("predict",), ["predict", str(EXAMPLE), "--out", str(o / "pv"), "--preview"], "preview"),
        (("predict",), ["predict", str(EXAMPLE), "--out", str(o / "po"), "--backend", "openvino"], "openvino"),
        (("predict",), ["predict", str(EXAMPLE.parent), "--out", str(o / "pr"), "--engine", "ray"], "ray"),
        (("predict",), ["predict", str(EXAMPLE), "--out", str(o / "rw"), "--raw"], "preprocess"),
        (("predict",), ["predict", str(EXAMPLE), "--out", str(o / "pt"), "--backend", "triton", "--url",
                        "127.0.0.1:9"], "triton"),
        (("build-engine",), ["build-engine", str(MODEL), "--out", str(o / "m.plan")], None),
    ]


# Commands that run on the core dependencies alone (each has a test of its own elsewhere). A new command must
# be put here or in needs_extra().
CORE_ONLY = {("predict",), ("info",), ("bench",), ("export-triton",), ("evaluate",), ("synth",), ("tune",),
             ("import",)}


def test_every_command_is_classified(inputs):
    covered = {path for path, _, _ in needs_extra(inputs)} | CORE_ONLY
    missing = [" ".join(p) for p in command_paths() if p and p not in covered]
    assert not missing, f"say whether these need an extra (tests/cli/test_extras.py): {missing}"


def test_the_venv_is_runtime_only(runtime_python):
    code = ("import importlib.util as u, seg_edge.cli.app; "
            f"print(sorted(m for m in {sorted(EXTRAS)!r} if u.find_spec(m)))")
    result = subprocess.run([str(runtime_python), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_each_command_names_its_extra(runtime_python, inputs):
    cases = needs_extra(inputs)
    env = {**os.environ, "COLUMNS": "400"}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(runtime_python), "-m", "seg_edge", *argv], capture_output=True, text=True,
                              timeout=300, env=env, cwd=inputs["out"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, [argv for _, argv, _ in cases]))
    failures = []
    for (_, argv, extra), result in zip(cases, results):
        lines = result.stderr.strip().splitlines()
        ok = result.returncode == 3 and len(lines) == 1 and "Traceback" not in result.stderr
        if extra is not None:
            ok = ok and lines[0].startswith("missing extra:") and f"'{extra}' extra" in lines[0] \
                and f"pip install -e '.[{extra}]'" in lines[0] and f"pip install 'seg-edge[{extra}]'" in lines[0]
        if not ok:
            failures.append(f"seg-edge {' '.join(argv)}: exit {result.returncode}\n{result.stderr[-600:]}")
    assert not failures, "\n".join(failures)


def _pyproject_extras() -> dict[str, set[str]]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {extra: {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in reqs}
            for extra, reqs in extras.items() if extra != "dev"}


def test_the_table_agrees_with_pyproject():
    extras = _pyproject_extras()
    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in extras.get(extra, set()), (module, distribution, extra)
    listed = {distribution for distribution, _ in EXTRAS.values()}
    unlisted = {d for reqs in extras.values() for d in reqs} - listed
    assert not unlisted, f"optional packages missing from seg_edge.errors.EXTRAS: {unlisted}"


def test_only_an_absent_optional_package_is_a_missing_extra(monkeypatch):
    assert MissingExtra.from_import(ModuleNotFoundError("No module named 'onnx'", name="onnx")).extra == "export"
    monkeypatch.setitem(sys.modules, "PIL", None)  # PIL cannot be imported: PIL.Image is missing with it
    assert MissingExtra.from_import(ModuleNotFoundError("x", name="PIL.Image")).distribution == "pillow"
    monkeypatch.undo()
    # not optional: a bug
    assert MissingExtra.from_import(ModuleNotFoundError("x", name="seg_edge.nothing")) is None
    assert MissingExtra.from_import(ModuleNotFoundError("x", name="yaml")) is None
    # an installed optional package missing one of its own modules is broken, not absent
    assert MissingExtra.from_import(ModuleNotFoundError("x", name="onnx.no_such_module")) is None
    assert MissingExtra.from_import(ImportError("cannot import name 'x' from 'onnx'", name="onnx")) is None
