"""``seg-edge import nnunet`` on a model trained by nnU-Net itself (tools/fixtures/nnunet_fixture.py:
synthetic Dataset137-style data, nnU-Net's planner and trainer, two folds), proven against
nnU-Net's own ``nnUNetPredictor``; and one refusal per plans option seg-edge cannot reproduce."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 (extra 'nnunet') is not installed")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.fixtures.nnunet_fixture import build_nnunet_fixture  # noqa: E402

from seg_edge.synth import write_case  # noqa: E402

CACHE = ROOT / ".cache" / "fixtures" / "nnunet-tiny"


def run_ok(args: list, code: int | None = 0):
    """``seg-edge ARGS`` through the Typer app; with ``code``, the exit code must be it."""
    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert code is None or result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def model_folder() -> Path:
    return build_nnunet_fixture(CACHE, "tiny")


@pytest.fixture(scope="module")
def cases(model_folder, tmp_path_factory) -> list[Path]:
    """Three held-out synthetic cases on the fixture's grid (seeds never trained on)."""
    root = tmp_path_factory.mktemp("nn_cases")
    return [write_case(root, 992, i, (64, 64, 48)) for i in range(3)]


@pytest.fixture(scope="module")
def imported(model_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("nn_import") / "nn.onnx"
    result = run_ok(["import", "nnunet", str(model_folder), "--out", str(out), "--json"])
    return out, json.loads(result.stdout)


def test_card_says_what_the_plans_say(imported, model_folder):
    _, report = imported
    card = report["card"]
    plans = json.loads((model_folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert [c["name"] for c in card["inputs"]["channels"]] == ["t1", "t1ce", "t2", "flair"]
    assert {c["normalization"] for c in card["inputs"]["channels"]} == {"zscore_mask"}
    assert card["inputs"]["axes"] == [2, 1, 0] and card["inputs"]["spacing"] == [1.0, 1.0, 1.0]
    assert card["inference"]["patch_size"] == plans["patch_size"]
    assert card["inference"]["ensemble"] == 2 and card["provenance"]["folds"] == [0, 1]
    assert (card["inference"]["steps"], card["inference"]["blend"]) == ("nnunet", "nnunet_gaussian")
    assert card["inference"]["tta_axes"] == [0, 1, 2] and not card["inference"]["et_rule"]["enabled"]
    assert card["outputs"]["rule"] == "sequential"
    assert card["outputs"]["order"] == [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]
    assert card["outputs"]["source_labels"] == {"1": "ED", "2": "NCR", "3": "ET"}
    assert report["max_abs_logit_error"] < 1e-3


@pytest.mark.parametrize("tta", ["--no-tta", "--tta"])
def test_parity_with_nnunets_own_predictor(imported, model_folder, cases, tta):
    model, _ = imported
    picked = cases if tta == "--no-tta" else cases[:1]  # mirroring runs 8 passes: one case in CI
    result = run_ok(["parity", str(model), *map(str, picked), "--reference", f"nnunet:{model_folder}", tta,
                     "--threads", "2", "--json"])
    report = json.loads(result.stdout)
    assert report["passed"], report
    for r in report["results"]:
        # nnU-Net's float16 sums can put a voxel exactly on a threshold (p = 0.5): such ties are reported
        # apart and agree in the judged Dice; every other voxel must be decided the same way
        assert r["label_agreement"] >= 0.999 and r["reference_ties"] <= r["labels_changed"]
        assert min(r["dice_outside_ties"].values()) >= 0.999
        assert r["reference_seconds"] > 0


def test_parity_refuses_a_source_that_is_not_the_import(imported, model_folder, tmp_path, cases):
    model, _ = imported
    copy = tmp_path / "other"
    shutil.copytree(model_folder, copy)
    plans = json.loads((copy / "plans.json").read_text())
    plans["dataset_name"] = "changed"
    (copy / "plans.json").write_text(json.dumps(plans))
    result = run_ok(["parity", str(model), str(cases[0]), "--reference", f"nnunet:{copy}"], code=None)
    assert result.exit_code != 0 and "sha256 differs" in result.output


def _edited(model_folder: Path, tmp_path: Path, edit) -> Path:
    """A copy of the model folder (fold 0 only) with ``edit(dataset_json, plans)`` applied."""
    folder = tmp_path / model_folder.name
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").symlink_to(model_folder / "fold_0" / "checkpoint_final.pth")
    dataset = json.loads((model_folder / "dataset.json").read_text())
    plans = json.loads((model_folder / "plans.json").read_text())
    edit(dataset, plans)
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def _cfg(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]


REFUSALS = {
    "ct-normalization": (lambda d, p: _cfg(p).__setitem__("normalization_schemes", ["CTNormalization"] * 4),
                         "normalization CTNormalization is not supported"),
    "cascade": (lambda d, p: _cfg(p).__setitem__("previous_stage", "3d_lowres"),
                "configuration 3d_fullres is a cascade stage"),
    "2d-patch": (lambda d, p: _cfg(p).__setitem__("patch_size", [48, 40]), "configuration 3d_fullres is 2D"),
    "reader": (lambda d, p: p.__setitem__("image_reader_writer", "Tiff3DIO"),
               "image_reader_writer Tiff3DIO is not supported"),
    "channel-name": (lambda d, p: d["channel_names"].__setitem__("3", "DWI"), "channel 'DWI' is not a BraTS modality"),
    "labels-unknown": (lambda d, p: d["labels"].pop("tumor core") and d["labels"].__setitem__("core", [2, 3]),
                       "pass --labels"),
    "label-manager": (lambda d, p: p.__setitem__("label_manager", "MyLabelManager"),
                      "label_manager MyLabelManager is not supported"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_unsupported_plans_options_are_refused_by_name(model_folder, tmp_path, name):
    edit, message = REFUSALS[name]
    folder = _edited(model_folder, tmp_path, edit)
    out = tmp_path / "x.onnx"
    result = run_ok(["import", "nnunet", str(folder), "--out", str(out)], code=None)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output
    assert not out.exists()


def test_missing_fold_and_bad_options_are_one_line(model_folder, tmp_path):
    out = tmp_path / "x.onnx"
    for args, message in ((["--folds", "0,7"], "fold_7/checkpoint_final.pth: not found"),
                          (["--folds", "zero"], "--folds 'zero'"),
                          (["--labels", "1=ED,2=XX"], "--labels '1=ED,2=XX'"),
                          (["--channels", "t1,t1ce"], "--channels names 2 channels"),
                          (["--configuration", "3d_lowres"], "configurations")):
        result = run_ok(["import", "nnunet", str(model_folder), "--out", str(out), *args], code=None)
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, \
            (args, result.output)
        assert not out.exists()
