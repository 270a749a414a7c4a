"""Bad input to ``seg-edge predict``: one line on stderr naming the culprit, exit 2 (3), nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.errors import InputError

MODALITIES = ("flair", "t1", "t1ce", "t2")

runner = CliRunner()


@dataclass
class Spec:
    """One bad invocation: its arguments and what the single error line must contain."""

    args: list[str]
    expect: list[str]  # substrings of the error line: the culprit and what was expected
    label: str = "input error"  # the line's prefix
    code: int = 2
    model: Path | None = None  # default: the fixture model


# ----------------------------------------------------------------------------- builders

def copy_case(tmp: Path, case: Path, name: str = "case") -> tuple[Path, dict[str, Path]]:
    """The fixture case's four modalities (no seg) copied into ``tmp/name`` under a new id."""
    folder = tmp / name
    folder.mkdir()
    files = {}
    for m in MODALITIES:
        files[m] = folder / f"{name}_{m}.nii.gz"
        shutil.copyfile(case / f"{case.name}_{m}.nii.gz", files[m])
    return folder, files


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def stack4d(files: dict[str, Path], order, path: Path) -> Path:
    vols = [load(files[m])[0] for m in order]
    return save(np.stack(vols, axis=-1), load(files[order[0]])[1], path)


def replace(files: dict[str, Path], modality: str, fn: Callable[[np.ndarray, np.ndarray], tuple]) -> Path:
    """Rewrite one modality file with ``fn(data, affine) -> (data, affine)``."""
    data, affine = fn(*load(files[modality]))
    return save(data, affine, files[modality])


CASES: list = []


def case(name: str, *marks):
    def register(fn):
        CASES.append(pytest.param(fn, id=name, marks=marks))
        return fn
    return register


@case("missing-input")
def _(tmp, src, model):
    path = tmp / "no_such_case"
    return Spec([str(path)], [str(path), "not found", "expected a case folder"])


@case("text-file-named-nii-gz")
def _(tmp, src, model):
    path = tmp / "x.nii.gz"
    path.write_text("this is not a NIfTI image\n")
    return Spec([str(path)], [str(path), "NIfTI"])


@case("truncated-gz")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    raw = files["flair"].read_bytes()
    files["flair"].write_bytes(raw[: len(raw) // 2])
    return Spec([str(folder)], [str(files["flair"]), "NIfTI"])


@case("2d-image")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    replace(files, "flair", lambda d, a: (d[:, :, d.shape[2] // 2], a))
    return Spec([str(folder)], [str(files["flair"]), "2D", "expected 3D"])


@case("5d-image")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    vols = np.stack([load(files[m])[0] for m in MODALITIES], axis=-1)  # X, Y, Z, 4
    path = save(vols.reshape(vols.shape[:3] + (2, 2)), load(files["flair"])[1], tmp / "five.nii.gz")
    return Spec([str(path)], [str(path), "5D", "expected 4D"])


@case("nan-voxels")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)

    def nan(d, a):
        d = d.astype(np.float32)
        d[30, 30, 20] = np.nan
        return d, a

    replace(files, "t1ce", nan)
    return Spec([str(folder)], [str(files["t1ce"]), "NaN", "expected finite"])


@case("inf-voxels")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)

    def inf(d, a):
        d = d.astype(np.float32)
        d[0, 0, 0] = -np.inf
        return d, a

    replace(files, "t2", inf)
    return Spec([str(folder)], [str(files["t2"]), "Inf", "expected finite"])


@case("all-zero-volume")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    replace(files, "t1", lambda d, a: (np.zeros_like(d), a))
    return Spec([str(folder)], [str(files["t1"]), "all zero", "expected"])


@case("shape-mismatch")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    replace(files, "t2", lambda d, a: (d[:-2], a))
    return Spec([str(folder)], [str(files["t2"]), "shape", "expected co-registered"])


@case("affine-mismatch")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)

    def shift(d, a):
        a = a.copy()
        a[:3, 3] += 5.0
        return d, a

    replace(files, "t1", shift)
    return Spec([str(folder)], [str(files["t1"]), "affine", "expected co-registered"])


@case("4d-with-3-volumes")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    path = stack4d(files, ("flair", "t1", "t1ce"), tmp / "three.nii.gz")
    return Spec([str(path)], [str(path), "3 volumes", "expected 4"])


@case("case-folder-missing-modality")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    files["t1ce"].unlink()
    return Spec([str(folder)], [str(folder), "t1ce", "expected a NIfTI named"])


@case("output-exists")
def _(tmp, src, model):
    out = tmp / "out" / "result.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"previous result, must survive")
    return Spec([str(src), "--out", str(out)], [str(out), "exists", "--overwrite"])


@case("output-folder-read-only")
def _(tmp, src, model):
    folder = tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        folder.chmod(0o700)
        pytest.skip("running as root: chmod 0500 does not block writes (see output-under-a-file)")
    return Spec([str(src), "--out", str(folder)], [str(folder), "not writable"])


@case("output-under-a-file")
def _(tmp, src, model):
    blocker = tmp / "a_file"
    blocker.write_text("a regular file, so nothing can be created below it\n")
    out = blocker / "sub" / "x.nii.gz"
    return Spec([str(src), "--out", str(out)], [str(blocker / "sub"), "cannot create output folder"])


@case("model-random-bytes")
def _(tmp, src, model):
    path = tmp / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return Spec([str(src)], [str(path), "ONNX"], label="model error", model=path)


@case("model-text-file")
def _(tmp, src, model):
    path = tmp / "model.onnx"
    path.write_text("not a model at all\n")
    return Spec([str(src)], [str(path), "ONNX"], label="model error", model=path)


@case("model-missing")
def _(tmp, src, model):
    path = tmp / "absent.onnx"
    return Spec([str(src)], [str(path), "not found"], label="model error", model=path)


def _identity_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 5, None, None, None]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if metadata:
        helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return path


@case("onnx-without-card")
def _(tmp, src, model):
    path = _identity_onnx(tmp / "plain.onnx")
    return Spec([str(src)], [str(path), "no seg-edge card"], label="model error", model=path)


@case("onnx-card-not-json")
def _(tmp, src, model):
    path = _identity_onnx(tmp / "badcard.onnx", {"seg_edge.card": "{not json"})
    return Spec([str(src)], [str(path), "not valid JSON"], label="model error", model=path)


@case("tensorrt-plan-on-onnxruntime")
def _(tmp, src, model):
    from seg_edge.artifact import load_artifact

    plan = tmp / "engine.plan"
    plan.write_bytes(b"\0" * 64)
    card = load_artifact(model).card.to_json()
    (tmp / "engine.plan.json").write_text('{"card": ' + card + ', "tensorrt": {"version": "10.3.0"}}')
    return Spec([str(src)], [str(plan), "onnxruntime", "ONNX"], label="backend unavailable", code=3, model=plan)


@case("npy-wrong-shape")
def _(tmp, src, model):
    path = tmp / "stack.npy"
    np.save(path, np.ones((3, 8, 8, 8), dtype=np.float32))
    return Spec([str(path)], [str(path), "(3, 8, 8, 8)", "expected numeric (4, X, Y, Z)"])


@case("npy-of-strings")
def _(tmp, src, model):
    path = tmp / "words.npy"
    np.save(path, np.full((4, 2, 2, 2), "a"))
    return Spec([str(path)], [str(path), "dtype", "expected numeric"])


@case("modalities-wrong-set")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    path = stack4d(files, MODALITIES, tmp / "four.nii.gz")
    return Spec([str(path), "--modalities", "flair,t1,t1,t2"], ["--modalities", "flair,t1,t1,t2", "expected"])


@case("overlap-1.5")
def _(tmp, src, model):
    return Spec([str(src), "--overlap", "1.5"], ["overlap 1.5", "expected 0 <= overlap < 1"])


@case("explicit-file-missing")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    files["t2"].unlink()
    args = [a for m in MODALITIES for a in (f"--{m}", str(files[m]))]
    return Spec(args, [str(files["t2"]), "not found"])


@case("explicit-files-incomplete")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    args = [a for m in ("flair", "t1", "t1ce") for a in (f"--{m}", str(files[m]))]
    return Spec(args, ["--t2", "missing", "needed"])


@case("bracketed-name")
def _(tmp, src, model):
    path = tmp / "scan[flair]"
    return Spec([str(path)], [str(path), "not found"])


@case("bracketed-modalities-value")
def _(tmp, src, model):
    return Spec([str(src), "--modalities", "[/flair],t1,t1ce,t2"], ["[/flair],t1,t1ce,t2", "expected"])


# ----------------------------------------------------------------------------- checks

def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(spec: Spec, tmp: Path, model: Path, *pre: str):
    args = list(pre) + ["predict", *spec.args, "--model", str(spec.model or model)]
    if "--out" not in spec.args:
        args += ["--out", str(tmp / "out")]
    return runner.invoke(app, args)


def assert_one_line_error(result, spec: Spec) -> str:
    assert result.exit_code == spec.code, (f"exit {result.exit_code} (expected {spec.code})\n{result.output}"
                                           f"\nexception: {result.exception!r}")
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"exception escaped the CLI: {result.exception!r}"
    assert "Traceback" not in result.output
    assert result.stdout.strip() == "", f"stdout should be empty:\n{result.stdout}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith(f"{spec.label}: "), line
    for text in spec.expect:
        assert text in line, f"{text!r} not in the error line:\n{line}"
    return line


@pytest.mark.parametrize("build", CASES)
def test_bad_input_is_one_line_and_writes_nothing(build, tmp_path, case_dir, edge_onnx):
    spec = build(tmp_path, case_dir, edge_onnx)
    before = snapshot(tmp_path)
    try:
        result = invoke(spec, tmp_path, edge_onnx)
    finally:
        for p in tmp_path.rglob("*"):  # let pytest clean up read-only folders
            if p.is_dir():
                p.chmod(0o700)
    assert_one_line_error(result, spec)
    after = snapshot(tmp_path)
    assert sorted(after) == sorted(before), f"files appeared or vanished: {set(after) ^ set(before)}"
    changed = [name for name in before if after[name] != before[name]]
    assert changed == [], f"files changed: {changed}"


def test_enough_bad_input_cases():
    assert len(CASES) >= 17


def test_debug_shows_the_exception(tmp_path, case_dir, edge_onnx):
    folder, files = copy_case(tmp_path, case_dir)
    files["t1"].unlink()
    result = runner.invoke(app, ["--debug", "predict", str(folder), "--model", str(edge_onnx),
                                 "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, InputError), repr(result.exception)
    assert str(folder) in str(result.exception)
    assert result.exc_info is not None and result.exc_info[2] is not None  # a traceback to show
    assert result.exit_code != 0
    # and without --debug the same input is one line again (the flag does not stick)
    again = runner.invoke(app, ["predict", str(folder), "--model", str(edge_onnx), "--out", str(tmp_path / "out")])
    assert again.exit_code == 2
    assert again.exception is None or isinstance(again.exception, SystemExit)
    assert len([line for line in again.stderr.splitlines() if line.strip()]) == 1


def _console_script() -> Path:
    exe = Path(sys.executable).parent / "seg-edge"
    if not exe.is_file():
        pytest.skip("the seg-edge console script is not installed beside this interpreter")
    return exe


def test_real_process_prints_one_line_and_no_traceback(tmp_path, case_dir, edge_onnx):
    folder, files = copy_case(tmp_path, case_dir)
    replace(files, "flair", lambda d, a: (np.full(d.shape, np.nan, np.float32), a))
    proc = subprocess.run([str(_console_script()), "predict", str(folder), "--model", str(edge_onnx),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(files["flair"]) in lines[0] and "expected finite" in lines[0], proc.stderr
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_real_process_debug_prints_traceback(tmp_path, edge_onnx):
    missing = tmp_path / "nowhere"
    proc = subprocess.run([str(_console_script()), "--debug", "predict", str(missing), "--model", str(edge_onnx)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr and str(missing) in proc.stderr
