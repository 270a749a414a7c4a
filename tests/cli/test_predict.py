"""``seg-edge predict`` through the Typer app: inputs, outputs, reports, batches and options."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app

MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS23_TAGS = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}

runner = CliRunner()


# ----------------------------------------------------------------------------- helpers

def predict(*args, model: Path) -> object:
    """Invoke ``seg-edge predict ARGS --model MODEL``; exceptions stay inside the Result."""
    return runner.invoke(app, ["predict", *map(str, args), "--model", str(model)])


def ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}" \
                                  f"\nexception: {result.exception!r}"


def modality_files(case: Path) -> dict[str, Path]:
    return {m: case / f"{case.name}_{m}.nii.gz" for m in MODALITIES}


def labels_of(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def save_like(data: np.ndarray, ref: nib.Nifti1Image, path: Path) -> Path:
    img = nib.Nifti1Image(data, ref.affine)
    img.set_qform(ref.affine, code=1)
    img.set_sform(ref.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def stack(case: Path, order: tuple[str, ...]) -> tuple[np.ndarray, nib.Nifti1Image]:
    files = modality_files(case)
    ref = nib.load(str(files["flair"]))
    vols = [np.asanyarray(nib.load(str(files[m])).dataobj) for m in order]
    return np.stack(vols), ref


# ----------------------------------------------------------------------------- baseline

@pytest.fixture(scope="module")
def baseline(tmp_path_factory, case_dir, edge_onnx) -> dict:
    """The case folder segmented once with the defaults (brats2021, ET rule on)."""
    out_dir = tmp_path_factory.mktemp("baseline")
    result = predict(case_dir, "--out", out_dir, model=edge_onnx)
    ok(result)
    out = out_dir / f"{case_dir.name}.nii.gz"
    report = json.loads((out_dir / f"{case_dir.name}.json").read_text())
    return {"result": result, "out": out, "labels": labels_of(out), "report": report, "dir": out_dir}


def test_case_folder_writes_label_map_report_and_table(baseline, case_dir):
    src = nib.load(str(modality_files(case_dir)["flair"]))
    out = baseline["out"]
    assert out.is_file()
    img = nib.load(str(out))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert int(img.header["qform_code"]) == int(src.header["qform_code"]) == 1
    assert int(img.header["sform_code"]) == int(src.header["sform_code"]) == 1
    assert img.get_data_dtype() == np.uint8
    labels = np.asanyarray(img.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    assert (labels > 0).any(), "the tiny model should predict some tumour on the phantom"

    report = baseline["report"]
    assert report["case_id"] == case_dir.name
    assert report["label_scheme"] == "brats2021"
    assert report["labels"] == {"NCR": 1, "ED": 2, "ET": 4}
    vols = report["volumes_ml"]
    assert {"WT", "TC", "ET"} <= set(vols)
    # 1 mm voxels: 1000 voxels per mL
    assert vols["WT"] == pytest.approx(np.count_nonzero(labels) / 1000, abs=1e-3)
    assert vols["TC"] == pytest.approx(np.count_nonzero(np.isin(labels, (1, 4))) / 1000, abs=1e-3)
    assert vols["ET"] == pytest.approx(np.count_nonzero(labels == 4) / 1000, abs=1e-3)
    timings = report["timings_s"]
    # the report is written before the label map, so it cannot hold the write/total times
    assert {"load", "preprocess", "inference", "postprocess"} <= set(timings)
    assert all(v >= 0 for v in timings.values())
    assert Path(report["output"]) == out

    stdout = baseline["result"].stdout
    for region in ("WT", "TC", "ET"):
        row = next((line for line in stdout.splitlines() if f" {region} " in line), None)
        assert row is not None, f"{region} missing from the table:\n{stdout}"
        assert f"{vols[region]:.2f}" in row
    # no leftovers beside the outputs
    assert sorted(p.name for p in baseline["dir"].iterdir()) == sorted([out.name, f"{case_dir.name}.json"])


def test_label_scheme_brats2023_maps_et_to_3(baseline, case_dir, edge_onnx, tmp_path):
    result = predict(case_dir, "--out", tmp_path, "--label-scheme", "brats2023", model=edge_onnx)
    ok(result)
    labels = labels_of(tmp_path / f"{case_dir.name}.nii.gz")
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
    report = json.loads((tmp_path / f"{case_dir.name}.json").read_text())
    assert report["label_scheme"] == "brats2023"
    assert report["labels"]["ET"] == 3
    base = baseline["labels"]
    assert (base == 4).any(), "baseline has no ET: the 4→3 mapping would not be exercised"
    np.testing.assert_array_equal(labels, np.where(base == 4, 3, base))
    assert report["volumes_ml"] == baseline["report"]["volumes_ml"]


def test_json_flag_prints_parseable_json(baseline, case_dir, edge_onnx, tmp_path):
    result = predict(case_dir, "--out", tmp_path, "--json", model=edge_onnx)
    ok(result)
    data = json.loads(result.stdout)
    assert data["case_id"] == case_dir.name
    assert data["status"] == "done"
    assert data["volumes_ml"] == baseline["report"]["volumes_ml"]
    assert {"WT", "TC", "ET"} <= set(data["volumes_ml"])


def test_explicit_modality_files_match_folder(baseline, case_dir, edge_onnx, tmp_path):
    files = modality_files(case_dir)
    result = predict("--flair", files["flair"], "--t1", files["t1"], "--t1ce", files["t1ce"], "--t2", files["t2"],
                     "--out", tmp_path, model=edge_onnx)
    ok(result)
    out = tmp_path / f"{case_dir.name}.nii.gz"
    np.testing.assert_array_equal(labels_of(out), baseline["labels"])


def test_brats2023_file_names_match_folder(baseline, case_dir, edge_onnx, tmp_path):
    cid = "BraTS-GLI-00001-000"
    folder = tmp_path / cid
    folder.mkdir()
    for m, path in modality_files(case_dir).items():
        shutil.copyfile(path, folder / f"{cid}-{BRATS23_TAGS[m]}.nii.gz")
    out_dir = tmp_path / "out"
    result = predict(folder, "--out", out_dir, model=edge_onnx)
    ok(result)
    np.testing.assert_array_equal(labels_of(out_dir / f"{cid}.nii.gz"), baseline["labels"])
    assert (out_dir / f"{cid}.json").is_file()


@pytest.mark.parametrize("order", ["t2,flair,t1,t1ce", "t1,t1ce,t2,flair", "flair,t1,t1ce,t2"])
def test_4d_nifti_matches_folder(baseline, case_dir, edge_onnx, tmp_path, order):
    """A stack in any stated order (the card's among them) gives the labels of the four separate files."""
    data, ref = stack(case_dir, tuple(order.split(",")))
    path = save_like(np.moveaxis(data, 0, -1), ref, tmp_path / "stack4d.nii.gz")
    result = predict(path, "--out", tmp_path / "out", "--modalities", order, model=edge_onnx)
    ok(result)
    out = tmp_path / "out" / "stack4d.nii.gz"
    np.testing.assert_array_equal(labels_of(out), baseline["labels"])
    np.testing.assert_allclose(nib.load(str(out)).affine, ref.affine, atol=1e-5)


@pytest.mark.parametrize("kind", ["nifti", "npy"])
def test_a_stack_without_its_order_is_refused(case_dir, edge_onnx, tmp_path, kind):
    """Issue 21: a t1,t1ce,t2,flair stack without --modalities was read in the card's order (WT 761 mL
    instead of ~36): now one line naming the file and --modalities, exit 2, nothing written."""
    data, ref = stack(case_dir, ("t1", "t1ce", "t2", "flair"))
    if kind == "npy":
        path = tmp_path / "stack.npy"
        np.save(path, data)
    else:
        path = save_like(np.moveaxis(data, 0, -1), ref, tmp_path / "stack4d.nii.gz")
    result = predict(path, "--out", tmp_path / "out", model=edge_onnx)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "--modalities" in lines[0] and "not stated" in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_4d_nifti_in_wrong_order_differs(baseline, case_dir, edge_onnx, tmp_path):
    """Guard for the test above: the volume order does matter to the model."""
    data, ref = stack(case_dir, ("t2", "flair", "t1", "t1ce"))
    path = save_like(np.moveaxis(data, 0, -1), ref, tmp_path / "stack4d.nii.gz")
    ok(predict(path, "--out", tmp_path / "out", "--modalities", ",".join(MODALITIES), model=edge_onnx))
    assert not np.array_equal(labels_of(tmp_path / "out" / "stack4d.nii.gz"), baseline["labels"])


def test_npy_stack_uses_identity_affine_and_warns(baseline, case_dir, edge_onnx, tmp_path):
    order = ("t1ce", "t2", "flair", "t1")
    data, _ = stack(case_dir, order)
    path = tmp_path / "stack.npy"
    np.save(path, data)
    result = predict(path, "--out", tmp_path / "out", "--modalities", ",".join(order), model=edge_onnx)
    ok(result)
    out = tmp_path / "out" / "stack.nii.gz"
    img = nib.load(str(out))
    np.testing.assert_array_equal(img.affine, np.eye(4))
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), baseline["labels"])
    assert "identity affine" in result.stderr
    assert "stack.npy" in result.stderr
    report = json.loads((tmp_path / "out" / "stack.json").read_text())
    assert any("identity affine" in w for w in report["warnings"])


def test_probabilities_written_and_consistent(baseline, case_dir, edge_onnx, tmp_path):
    result = predict(case_dir, "--out", tmp_path, "--probabilities", model=edge_onnx)
    ok(result)
    prob_path = tmp_path / f"{case_dir.name}_probabilities.nii.gz"
    assert prob_path.is_file()
    img = nib.load(str(prob_path))
    assert img.shape == baseline["labels"].shape + (3,)
    assert img.get_data_dtype() == np.float32
    probs = np.asanyarray(img.dataobj)
    assert probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    labels = labels_of(tmp_path / f"{case_dir.name}.nii.gz")
    np.testing.assert_array_equal(labels, baseline["labels"])
    np.testing.assert_array_equal(probs[..., 0] > 0.5, labels > 0)
    np.testing.assert_allclose(img.affine, nib.load(str(baseline["out"])).affine, atol=1e-5)


def test_batch_failures_skip_and_overwrite(baseline, cases_dir, case_dir, edge_onnx, tmp_path):
    batch = tmp_path / "batch"
    good = sorted(p.name for p in cases_dir.iterdir() if p.is_dir())
    for name in good:
        shutil.copytree(cases_dir / name, batch / name)
    bad = batch / "broken_case"
    bad.mkdir()
    for m in ("t1", "t1ce", "t2"):  # no flair
        shutil.copyfile(modality_files(case_dir)[m], bad / f"broken_case_{m}.nii.gz")
    out_dir = tmp_path / "out"

    first = predict(batch, "--out", out_dir, model=edge_onnx)
    assert first.exit_code == 1, first.output
    assert "3 done, 0 skipped, 1 failed" in first.stdout
    outputs = [out_dir / f"{name}.nii.gz" for name in good]
    for path in outputs:
        assert path.is_file() and path.with_name(path.name[:-7] + ".json").is_file()
    assert not (out_dir / "broken_case.nii.gz").exists()
    assert not (out_dir / "broken_case.json").exists()
    np.testing.assert_array_equal(labels_of(out_dir / f"{case_dir.name}.nii.gz"), baseline["labels"])

    old = 1_000_000_000
    for path in outputs:
        os.utime(path, ns=(old * 10**9, old * 10**9))

    again = predict(batch, "--out", out_dir, "--json", model=edge_onnx)
    assert again.exit_code == 1, again.output
    data = json.loads(again.stdout)
    assert data["summary"] == {"done": 0, "skipped": 3, "failed": 1}
    status = {c["case_id"]: c["status"] for c in data["cases"]}
    assert status == {**{name: "skipped" for name in good}, "broken_case": "failed"}
    failed = next(c for c in data["cases"] if c["case_id"] == "broken_case")
    assert "flair" in failed["error"]
    for path in outputs:
        assert path.stat().st_mtime_ns == old * 10**9, f"{path.name} was rewritten without --overwrite"

    third = predict(batch, "--out", out_dir, "--overwrite", model=edge_onnx)
    assert third.exit_code == 1, third.output
    assert "3 done, 0 skipped, 1 failed" in third.stdout
    for path in outputs:
        assert path.stat().st_mtime_ns != old * 10**9, f"{path.name} was not rewritten with --overwrite"
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_output_permissions_follow_umask(case_dir, edge_onnx, tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        result = predict(case_dir, "--out", tmp_path, "--probabilities", model=edge_onnx)
    finally:
        os.umask(previous)
    ok(result)
    for name in (f"{case_dir.name}.nii.gz", f"{case_dir.name}.json", f"{case_dir.name}_probabilities.nii.gz"):
        got = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert got != 0o600
        assert got == mode, f"{name}: mode {oct(got)} (expected {oct(mode)} under umask {oct(mask)})"


def test_no_et_rule(baseline, case_dir, edge_onnx, tmp_path):
    result = predict(case_dir, "--out", tmp_path, "--no-et-rule", model=edge_onnx)
    ok(result)
    labels = labels_of(tmp_path / f"{case_dir.name}.nii.gz")
    report = json.loads((tmp_path / f"{case_dir.name}.json").read_text())
    assert report["et_relabelled_voxels"] == 0
    base = baseline["labels"]
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    # the rule only turns ET into NCR
    changed = labels != base
    assert np.all(labels[changed] == 4) and np.all(base[changed] == 1)
    assert report["volumes_ml"]["WT"] == baseline["report"]["volumes_ml"]["WT"]
    assert report["volumes_ml"]["ET"] >= baseline["report"]["volumes_ml"]["ET"]


def test_et_rule_report_counts_voxels_of_the_output(baseline, case_dir, edge_onnx, tmp_path):
    ok(predict(case_dir, "--out", tmp_path, "--no-et-rule", model=edge_onnx))
    changed = labels_of(tmp_path / f"{case_dir.name}.nii.gz") != baseline["labels"]
    assert baseline["report"]["et_relabelled_voxels"] == int(changed.sum())


def test_overlap_changes_the_windows_on_a_multi_window_case(case_dir, edge_onnx, tmp_path):
    """The fixture case fits in one 96³ window, where overlap cannot matter: tile it three times along
    y (64×216×48; the non-zero box spans ~190 voxels) so 0.25 gives 3 windows and 0.5 gives 4."""
    files = modality_files(case_dir)
    tiled = tmp_path / "tiled"
    tiled.mkdir()
    for m, path in files.items():
        img = nib.load(str(path))
        save_like(np.tile(np.asanyarray(img.dataobj), (1, 3, 1)), img, tiled / f"tiled_{m}.nii.gz")
    probs = {}
    for overlap in ("0.25", "0.5"):
        out = tmp_path / f"o{overlap}"
        ok(predict(tiled, "--out", out, "--overlap", overlap, "--probabilities", model=edge_onnx))
        probs[overlap] = np.asanyarray(nib.load(str(out / "tiled_probabilities.nii.gz")).dataobj)
    diff = np.abs(probs["0.25"] - probs["0.5"])
    assert diff.max() > 1e-4, "overlap 0.25 and 0.5 gave identical probabilities: the option did not reach the window"
    wt = [p[..., 0] > 0.5 for p in probs.values()]
    dice = 2 * np.count_nonzero(wt[0] & wt[1]) / max(np.count_nonzero(wt[0]) + np.count_nonzero(wt[1]), 1)
    assert dice > 0.9


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_probabilities_name_their_channels(case_dir, edge_onnx, tmp_path, kind):
    """Issue 21: --probabilities was documented as WT/TC/ET, but a softmax card writes its classes and
    neither the file nor the report said which. Both name the channels now, in the file's order."""
    import dataclasses

    from seg_edge.artifact import load_artifact
    from seg_edge.card import CARD_KEY
    from seg_edge.onnxproto import with_metadata

    model = edge_onnx
    channels = ["WT", "TC", "ET"]
    if kind == "softmax":  # the same 3-channel graph, read as classes
        card = load_artifact(edge_onnx).card
        channels = ["background", "ED", "ET"]
        card = card.replace(outputs=dataclasses.replace(card.outputs, kind="softmax", channels=tuple(channels)))
        model = tmp_path / "softmax.onnx"
        model.write_bytes(with_metadata(edge_onnx, CARD_KEY, card.to_json()))
    ok(predict(case_dir, "--out", tmp_path / "out", "--probabilities", model=model))
    report = json.loads((tmp_path / "out" / f"{case_dir.name}.json").read_text())
    prob_path = tmp_path / "out" / f"{case_dir.name}_probabilities.nii.gz"
    assert report["probabilities"] == {"file": str(prob_path), "kind": kind, "channels": channels}
    img = nib.load(str(prob_path))
    assert img.shape[-1] == len(channels)
    assert img.header["descrip"].item().decode() == f"seg-edge {kind} probabilities: {','.join(channels)}"


def test_the_console_names_the_files_written(case_dir, cases_dir, edge_onnx, tmp_path, monkeypatch):
    """Issue 21: the console did not say where a run wrote; the default folder is predictions/."""
    monkeypatch.chdir(tmp_path)
    result = predict(case_dir, "--probabilities", model=edge_onnx)
    ok(result)
    written = [line.removeprefix("wrote ") for line in result.stdout.splitlines() if line.startswith("wrote ")]
    name = case_dir.name
    assert written == [f"predictions/{name}_probabilities.nii.gz", f"predictions/{name}.json",
                       f"predictions/{name}.nii.gz"]
    assert all((tmp_path / p).is_file() for p in written)
    batch = predict(cases_dir, "--out", "preds", model=edge_onnx)
    n = len([p for p in cases_dir.iterdir() if p.is_dir()])
    ok(batch)
    assert f"{n} done, 0 skipped, 0 failed; outputs in preds/" in batch.stdout
    data = json.loads(predict(case_dir, "--out", "again", "--json", model=edge_onnx).stdout)
    assert data["files"] == [f"again/{name}.json", f"again/{name}.nii.gz"]
