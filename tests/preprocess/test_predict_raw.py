"""``seg-edge predict STUDY --raw``: raw series in, labels on the reference series' own grid out, with the
atlas-grid labels, the brain mask, the transforms (ITK .tfm) and the report beside them; two runs give the
same bytes; options that do not go with --raw are one-line errors. Small synthetic studies (conftest)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg_edge.runtime.regions import dice

MODALITIES = ("flair", "t1", "t1ce", "t2")


def seg_edge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seg_edge", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def first_run(raw_studies, tmp_path_factory):
    study = raw_studies[0]
    out = tmp_path_factory.mktemp("raw_out") / "a"
    result = seg_edge("predict", study, "--raw", "--out", out, "--json", "--preview", "--probabilities",
                      "--labels-on-every-series", "--threads", 1)
    assert result.returncode == 0, result.stderr
    return study, out, json.loads(result.stdout)


def test_labels_come_back_on_the_reference_grid_with_everything_beside_them(first_run):
    study, out, report = first_run
    case = study.name
    reference = nib.load(study / f"{case}_t1ce.nii.gz")
    labels = nib.load(out / f"{case}.nii.gz")
    assert labels.shape == reference.shape and np.allclose(labels.affine, reference.affine)
    atlas = nib.load(out / f"{case}_atlas.nii.gz")
    assert atlas.shape == (240, 240, 155)
    for m in MODALITIES:
        on_m = nib.load(out / f"{case}_labels_on_{m}.nii.gz")
        assert on_m.shape == nib.load(study / f"{case}_{m}.nii.gz").shape
        assert (out / f"{case}_{m}_from_atlas.tfm").read_text().startswith("#Insight Transform File")
    probs = nib.load(out / f"{case}_probabilities.nii.gz")
    assert probs.shape == (*reference.shape, 3)
    truth = np.asarray(nib.load(study / "truth" / "native_seg.nii.gz").dataobj)
    got = np.asarray(labels.dataobj)
    # a coarse half-scale study (8-10 mm slices): the model given it perfectly preprocessed scores WT 0.62 (seed
    # 2207, measured); well off the tumour it would score near 0
    assert dice(got > 0, truth > 0) > 0.5
    brain = np.asarray(nib.load(out / f"{case}_brain.nii.gz").dataobj)
    assert dice(brain > 0, np.asarray(nib.load(study / "truth" / "native_brain.nii.gz").dataobj) > 0) > 0.9
    assert report["output"] == str(out / f"{case}.nii.gz")
    assert set(report["preprocessing"]["series"]) == {"flair", "t1", "t2"}
    assert report["preprocessing"]["reference"] == "t1ce" and "MNI152" in report["preprocessing"]["atlas"]["name"]
    for stage in ("skull_strip", "coregister", "atlas", "resample", "back_to_scanner", "total"):
        assert stage in report["timings_s"], report["timings_s"]
    assert any("skull-stripped" in w for w in report["warnings"])
    volumes = report["volumes_ml"]
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000
    assert volumes["WT"] == pytest.approx(np.count_nonzero(got) * voxel_ml, abs=1e-3)
    assert (out / f"{case}_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # ~60 s; the pipeline's own two-run test (test_raw_pipeline) stays in make test
def test_two_runs_write_the_same_bytes(first_run, tmp_path):
    study, out, _ = first_run
    again = tmp_path / "b"
    result = seg_edge("predict", study, "--raw", "--out", again, "--threads", 1)
    assert result.returncode == 0, result.stderr

    def digest(path: Path) -> str:
        return hashlib.sha256(np.asarray(nib.load(path).dataobj).tobytes()).hexdigest()
    for name in (f"{study.name}.nii.gz", f"{study.name}_atlas.nii.gz", f"{study.name}_brain.nii.gz"):
        assert digest(out / name) == digest(again / name), name
    assert (out / f"{study.name}_flair_from_atlas.tfm").read_text() == \
        (again / f"{study.name}_flair_from_atlas.tfm").read_text()


@pytest.mark.parametrize("args, message", [
    (["--engine", "ray"], "--raw runs in this process"),
    (["--resample"], "--resample does not apply"),
    (["--atlas", "a.nii.gz"], "--atlas and --atlas-brain go together"),
    (["--coregister-to", "dwi"], "--coregister-to dwi (expected one of flair, t1, t1ce, t2)"),
])
def test_options_that_do_not_go_with_raw_are_one_line_errors(raw_studies, tmp_path, args, message):
    result = seg_edge("predict", raw_studies[0], "--raw", "--out", tmp_path / "o", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_raw_only_options_without_raw_and_raw_series_without_it(raw_studies, tmp_path):
    result = seg_edge("predict", raw_studies[0], "--out", tmp_path / "o", "--labels-on-every-series")
    assert result.returncode == 2 and "--labels-on-every-series apply to --raw" in result.stderr, result.stderr
    plain = seg_edge("predict", raw_studies[0], "--out", tmp_path / "o")
    assert plain.returncode == 2 and "raw scanner series: predict --raw" in plain.stderr, plain.stderr
    assert not (tmp_path / "o").exists()


def test_a_model_that_takes_native_inputs_refuses_raw(raw_studies, tmp_path):
    import dataclasses

    import onnx
    from onnx import helper

    from seg_edge.artifact import load_artifact
    from seg_edge.card import CARD_KEY

    shipped = Path(__file__).resolve().parents[2] / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"
    card = load_artifact(shipped).card
    native = card.replace(inputs=dataclasses.replace(card.inputs, space="native"))
    model = onnx.load(str(shipped))
    helper.set_model_props(model, {CARD_KEY: native.to_json()})
    path = tmp_path / "native.onnx"
    onnx.save(model, str(path))
    result = seg_edge("predict", raw_studies[0], "--raw", "--model", path, "--out", tmp_path / "o")
    assert result.returncode == 2 and "takes inputs in native space" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
