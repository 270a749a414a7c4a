"""``seg-edge evaluate --challenge``: the official CSV columns, per-lesion JSON, the challenges' file naming,
missing cases, the report, and refusals."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app

AFFINE = np.eye(4)
# brats-evaluation 0.0.10 metrics_parser.parse_seg_results, per region, in this order
SEG_NAMES = ("all_instance_tp", "all_instance_fp", "all_instance_fn", "all_instance_prec", "all_instance_rec",
             "all_instance_f1", "global_dsc", "global_nsd", "global_hd95", "lesionwise_dsc_mean", "lesionwise_dsc_std",
             "lesionwise_nsd_mean", "lesionwise_nsd_std", "lesionwise_hd95_mean", "lesionwise_hd95_std")
GLI_REGIONS = ("snfh", "et", "netc", "rc", "tc", "wt")  # config_gli.yaml's group order


def save(labels: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), AFFINE), str(path))


def tumour() -> np.ndarray:
    """Two lesions: SNFH around NETC and ET at one place, a lone ET block at another."""
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[4:16, 4:16, 4:16] = 2
    labels[7:13, 7:13, 7:13] = 1
    labels[9:11, 9:11, 9:11] = 3
    labels[28:33, 28:33, 28:33] = 3
    return labels


@pytest.fixture()
def challenge_files(tmp_path):
    """Challenge naming: truths BraTS-GLI-…-seg.nii.gz (3, one without prediction), predictions BraTS-GLI-….nii.gz:
    one exact, one missing the lone ET block and with a false-positive speck."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for n in (1, 2, 3):
        save(tumour(), truth / f"BraTS-GLI-0000{n}-000-seg.nii.gz")
    save(tumour(), pred / "BraTS-GLI-00001-000.nii.gz")
    worse = tumour()
    worse[28:33, 28:33, 28:33] = 0
    worse[35:37, 2:4, 2:4] = 3
    save(worse, pred / "BraTS-GLI-00002-000.nii.gz")
    return pred, truth


def run(*args):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_csv_has_the_official_columns_and_rows(challenge_files, tmp_path):
    pred, truth = challenge_files
    out = tmp_path / "scores.csv"
    result = run(pred, truth, "--challenge", "gli", "--csv", out)
    assert result.exit_code == 0, result.output
    assert "1 ground truths without a prediction" in result.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["subject_id"] + [f"{n}_{r}" for r in GLI_REGIONS for n in SEG_NAMES]
    assert [r["subject_id"] for r in rows] == ["BraTS-GLI-00001-000-seg.nii.gz", "BraTS-GLI-00002-000-seg.nii.gz",
                                               "BraTS-GLI-00003-000-seg.nii.gz", "mean", "std", "median"]
    exact, worse, missing = rows[:3]
    assert exact["lesionwise_dsc_mean_wt"] == "1.0" and exact["all_instance_tp_et"] == "2"
    # ET: one of two lesions matched exactly, the lone block missed, the speck a false positive
    assert (worse["all_instance_tp_et"], worse["all_instance_fp_et"], worse["all_instance_fn_et"]) == ("1", "1", "1")
    assert float(worse["all_instance_f1_et"]) == pytest.approx(0.5)
    assert worse["all_instance_prec_rc"] == "" and worse["global_dsc_rc"] == ""  # no RC anywhere: NaN
    # the missing case: 373 in HD95 columns that are not a std, 0 elsewhere
    assert missing["global_hd95_wt"] == "373.0" and missing["lesionwise_hd95_std_wt"] == "0"
    assert missing["global_dsc_wt"] == "0"
    mean = rows[3]
    assert float(mean["global_hd95_wt"]) == pytest.approx((0 + float(worse["global_hd95_wt"]) + 373) / 3)


def test_json_has_the_per_lesion_detail(challenge_files):
    pred, truth = challenge_files
    result = run(pred, truth, "--challenge", "gli", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["challenge"] == "gli" and doc["labels"] == {"1": "NETC", "2": "SNFH", "3": "ET", "4": "RC"}
    assert doc["missing"] == ["BraTS-GLI-00003-000"]
    et = doc["cases"][1]["regions"]["et"]
    assert len(et["pairs"]) == 1 and et["pairs"][0]["dice"] == 1.0
    assert et["pairs"][0]["reference"]["voxels"] == 8 and et["pairs"][0]["hd95"] == 0.0
    assert [m["voxels"] for m in et["missed"]] == [125]
    assert [f["voxels"] for f in et["false_positives"]] == [8]
    assert et["precision"] == 0.5 and doc["cases"][1]["regions"]["rc"]["precision"] is None
    assert len(doc["rows"]) == 3 and [s["subject_id"] for s in doc["summary"]] == ["mean", "std", "median"]


def test_table_and_seg_edge_naming(tmp_path):
    # seg-edge's own naming: predictions <id>.nii.gz against case folders <id>/<id>_seg.nii.gz
    save(tumour(), tmp_path / "truth" / "SynBraTS_1" / "SynBraTS_1_seg.nii.gz")
    save(tumour(), tmp_path / "pred" / "SynBraTS_1.nii.gz")
    result = run(tmp_path / "pred", tmp_path / "truth", "--challenge", "mets")
    assert result.exit_code == 0, result.output
    assert "--challenge mets: 1 cases" in result.stdout
    assert re.search(r"lesionwise_dsc_mean\s*│\s*1\.0000 ± 0\.0000", result.stdout)
    assert "small_instance_tp" in result.stdout


def test_brats2023_rows(challenge_files, tmp_path):
    pytest.importorskip("surface_distance", reason="the brats2023 extra (surface-distance) is not installed")
    pred, truth = challenge_files
    out = tmp_path / "b.csv"
    result = run(pred, truth, "--challenge", "brats2023", "--csv", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["Case_Name", "Labels", "Num_TP", "Num_FP", "Num_FN", "Sensitivity", "Specificity",
                             "Legacy_Dice", "Legacy_HD95", "GT_Complete_Volume", "Lesion_Wise_Score_Dice",
                             "Lesion_Wise_Score_HD95"]
    assert [r["Labels"] for r in rows] == ["WT", "TC", "ET"] * 2
    et = rows[5]
    # ET: the 125-voxel lone block missed (Dice 0, 374), the 8-voxel ET at the core left out (≤ 50 mm³) but the
    # speck is far from both: a false positive
    assert (et["Num_TP"], et["Num_FP"], et["Num_FN"]) == ("0", "1", "1")
    assert float(et["Lesion_Wise_Score_HD95"]) == pytest.approx(374.0)


def test_report_shows_the_challenge_figures(challenge_files, tmp_path):
    pytest.importorskip("PIL.Image", reason="Pillow (the preview extra) is not installed")
    pred, truth = challenge_files
    report = tmp_path / "r.html"
    result = run(pred, truth, "--challenge", "gli", "--report", report)
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "<script" not in text and "--challenge gli" in text
    assert "lesionwise_dsc_mean" in text and "BraTS-GLI-00002-000-seg.nii.gz" in text and "<svg" in text


def test_legacy_is_the_default_and_unchanged(challenge_files):
    pred, truth = challenge_files
    plain = run(pred, truth, "--label-scheme", "brats2023", "--json")
    legacy = run(pred, truth, "--challenge", "legacy", "--label-scheme", "brats2023", "--json")
    assert plain.exit_code == legacy.exit_code == 0, plain.output
    assert json.loads(plain.stdout) == json.loads(legacy.stdout)
    assert set(json.loads(plain.stdout)["summary"]) == {"WT", "TC", "ET"}


def test_label_scheme_with_a_challenge_is_refused(challenge_files):
    pred, truth = challenge_files
    result = run(pred, truth, "--challenge", "gli", "--label-scheme", "brats2023")
    assert result.exit_code == 2 and "--label-scheme with --challenge legacy only" in result.stderr
    assert "Traceback" not in result.output


def test_a_label_outside_the_challenge_set_is_refused(challenge_files, tmp_path):
    pred, truth = challenge_files
    bad = tumour()
    bad[0, 0, 0] = 4  # RC: fine for gli, outside men's set
    save(bad, pred / "BraTS-GLI-00001-000.nii.gz")
    out = tmp_path / "men.csv"
    result = run(pred, truth, "--challenge", "men", "--csv", out)
    assert result.exit_code == 2
    assert "BraTS-GLI-00001-000.nii.gz: labels [4] found" in result.stderr and "men label set" in result.stderr
    assert not out.exists()
    assert run(pred, truth, "--challenge", "gli").exit_code == 0


def test_pairs_by_subject_number_as_the_official_package(tmp_path):
    # the package pairs a ground truth with the prediction whose name ends in its subject number
    save(tumour(), tmp_path / "truth" / "BraTS-MET-00012-000-seg.nii.gz")
    save(tumour(), tmp_path / "pred" / "team_x_00012-000.nii.gz")
    save(tumour(), tmp_path / "pred" / "unrelated.nii.gz")
    result = run(tmp_path / "pred", tmp_path / "truth", "--challenge", "mets", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [c["prediction"].rsplit("/", 1)[-1] for c in doc["cases"]] == ["team_x_00012-000.nii.gz"]
    assert doc["unmatched"] == ["unrelated"] and doc["missing"] == []
    assert "1 predictions without ground truth: unrelated" in result.stderr
