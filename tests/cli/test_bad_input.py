"""Bad input to ``seg-edge predict``: one line on stderr naming the culprit, exit 2 (3), nothing written."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from badfiles import (MODALITIES, Spec, check_bad_input, console_script, copy_case, identity_onnx, load,
                      registry, replace, runner, save, snapshot, stack4d)
from seg_edge.cli.app import app
from seg_edge.errors import InputError

CASES: list = []
case = registry(CASES)


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
    return Spec([str(folder)], [str(files["flair"]), "corrupt"])


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


@case("onnx-without-card")
def _(tmp, src, model):
    path = identity_onnx(tmp / "plain.onnx")
    return Spec([str(src)], [str(path), "no seg-edge card"], label="model error", model=path)


@case("onnx-card-not-json")
def _(tmp, src, model):
    path = identity_onnx(tmp / "badcard.onnx", {"seg_edge.card": "{not json"})
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
    return Spec([str(src), "--overlap", "1.5"], ["--overlap", "1.5"])


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

@pytest.mark.parametrize("build", CASES)
def test_bad_input_is_one_line_and_writes_nothing(build, tmp_path, case_dir, edge_onnx):
    check_bad_input(build, tmp_path, case_dir, edge_onnx)


def test_enough_bad_input_cases():
    from test_bad_input_corpus import CORPUS

    ids = [p.id for p in CASES + CORPUS]
    assert len(ids) == len(set(ids)), "a case name is used twice"
    assert len(ids) >= 60


def test_snapshot_sees_folders_and_hidden_files(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "out").mkdir()
    assert set(snapshot(tmp_path)) - set(before) == {"out"}
    (tmp_path / "out" / ".x.nii.gz.tmp").write_bytes(b"")
    assert "out/.x.nii.gz.tmp" in snapshot(tmp_path)


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


def test_real_process_prints_one_line_and_no_traceback(tmp_path, case_dir, edge_onnx):
    folder, files = copy_case(tmp_path, case_dir)
    replace(files, "flair", lambda d, a: (np.full(d.shape, np.nan, np.float32), a))
    proc = subprocess.run([str(console_script()), "predict", str(folder), "--model", str(edge_onnx),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(files["flair"]) in lines[0] and "expected finite" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists(), "the output folder was created for a bad input"


def test_real_process_debug_prints_traceback(tmp_path, edge_onnx):
    missing = tmp_path / "nowhere"
    proc = subprocess.run([str(console_script()), "--debug", "predict", str(missing), "--model", str(edge_onnx)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr and str(missing) in proc.stderr
