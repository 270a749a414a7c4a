"""Label sets (issue 25, item 3): the card records its model's set, ``predict`` writes it, ``--label-scheme``
converts only where nothing is lost, the volumes name each label of the set, and ``evaluate --challenge gli``
reads a post-treatment prediction's RC."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from seg_edge.card import CARD_KEY, LABEL_SCHEMES, Channel, Inference, Inputs, ModelCard, Outputs
from seg_edge.cli.app import app
from seg_edge.cli.options import LabelScheme
from seg_edge.errors import ArtifactError, InputError
from seg_edge.runtime.labelfiles import itksnap_labels, slicer_color_table
from seg_edge.runtime.postprocess import to_labels
from seg_edge.runtime.regions import label_map, region_counts
from seg_edge.runtime.segmenter import region_volumes

POST = "brats2024-gli-post"
POST_CLASSES = ("background", "NETC", "SNFH", "ET", "RC")
MODALITIES = ("flair", "t1", "t1ce", "t2")


def post_card(**changes) -> ModelCard:
    """A softmax card of the post-treatment set: five classes from the four modalities and NVIDIA's mask,
    none normalised, so that a tiny Identity graph's arg-max is set by the input values."""
    channels = tuple(Channel(m, "none") for m in MODALITIES) + (Channel("mask", "none", "nvidia_mask"),)
    card = ModelCard(name="tiny-post", preset="edge", inputs=Inputs(channels),
                     outputs=Outputs(kind="softmax", channels=POST_CLASSES, thresholds=(), order=()),
                     inference=Inference(patch_size=(32, 32, 32)), label_scheme=POST)
    return card.replace(**changes)


# ----------------------------------------------------------------------------- the card

def test_a_post_treatment_card_round_trips_at_the_same_schema():
    card = post_card()
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert (again.label_scheme, again.schema, again.schema_minor) == (POST, 2, 2)
    assert again.outputs.channels == POST_CLASSES


def test_an_old_card_reads_the_same():
    old = ModelCard(name="old", preset="edge")  # brats2021, sigmoid WT/TC/ET: every card written so far
    again = ModelCard.from_json(old.to_json())
    assert again == old and again.label_scheme == "brats2021"
    assert label_map("brats2021", "brats2021") == {"background": 0, "NCR": 1, "ED": 2, "ET": 4}
    assert label_map("brats2023", "brats2023") == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}


@pytest.mark.parametrize("scheme,classes,bad", [
    (POST, ("background", "NCR", "ED", "ET", "RC"), "'NCR'"),      # a post-treatment card names its own set
    ("brats2021", ("background", "NCR", "ED", "ET", "RC"), "'RC'"),  # RC has no value in brats2021
])
def test_a_class_outside_the_cards_set_is_refused(scheme, classes, bad):
    card = post_card(label_scheme=scheme, outputs=Outputs(kind="softmax", channels=classes, thresholds=(), order=()))
    with pytest.raises(ArtifactError, match="outputs.channels") as info:
        ModelCard.from_json(card.to_json(), "m.onnx")
    assert str(info.value).startswith("m.onnx: ") and bad in str(info.value) and "\n" not in str(info.value)


def test_the_cli_offers_exactly_the_cards_label_sets():
    assert tuple(s.value for s in LabelScheme) == LABEL_SCHEMES


# ----------------------------------------------------------------------------- relabelling

@pytest.mark.parametrize("model,scheme,expected", [
    ("brats2021", "brats2023", {"background": 0, "NCR": 1, "ED": 2, "ET": 3}),
    ("brats2023", "brats2021", {"background": 0, "NCR": 1, "ED": 2, "ET": 4}),
    ("brats2021", POST, {"background": 0, "NCR": 1, "ED": 2, "ET": 3}),  # NCR is NETC, ED is SNFH
    (POST, POST, {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}),
])
def test_relabelling_that_loses_nothing_is_allowed(model, scheme, expected):
    assert label_map(model, scheme) == expected


@pytest.mark.parametrize("scheme", ["brats2021", "brats2023"])
def test_rc_is_never_merged_into_an_older_set(scheme):
    with pytest.raises(InputError) as info:
        label_map(POST, scheme)
    message = str(info.value)
    assert f"label scheme {scheme}" in message and "RC has no value" in message and POST in message
    assert "\n" not in message


def test_softmax_classes_of_the_post_treatment_set_become_their_values(rng):
    logits = rng.normal(size=(5, 6, 5, 4)).astype(np.float32)
    out = post_card().outputs
    labels = to_labels(logits, out, 3, values=label_map(POST, POST))
    np.testing.assert_array_equal(labels, np.array([0, 1, 2, 3, 4], np.uint8)[logits.argmax(0)])


# ----------------------------------------------------------------------------- volumes

def test_post_treatment_volumes_by_hand():
    labels = np.zeros((4, 4, 4), np.uint8)
    flat = labels.reshape(-1)
    flat[:2], flat[2:5], flat[5:9], flat[9:14] = 1, 2, 3, 4  # NETC 2, SNFH 3, ET 4, RC 5 voxels
    assert region_counts(labels, 3, scheme=POST) == {"WT": 9, "TC": 6, "ET": 4, "NETC": 2, "SNFH": 3, "RC": 5}
    vol = region_volumes(labels, 3, (1.0, 1.0, 2.0), scheme=POST)  # 2 µL voxels
    assert vol == pytest.approx({"WT": 0.018, "TC": 0.012, "ET": 0.008, "NETC": 0.004, "SNFH": 0.006, "RC": 0.010})


@pytest.mark.parametrize("scheme,et", [("brats2021", 4), ("brats2023", 3)])
def test_the_older_sets_volumes_are_unchanged(rng, scheme, et):
    labels = rng.choice(np.array([0, 1, 2, et], np.uint8), size=(9, 8, 7))
    assert region_counts(labels, et, scheme=scheme) == region_counts(labels, et)
    assert list(region_counts(labels, et, scheme=scheme)) == ["WT", "TC", "ET", "NCR", "ED"]


def test_viewer_files_name_the_post_treatment_labels():
    text = itksnap_labels(POST)
    for value, name in ((1, "(NETC)"), (2, "(SNFH)"), (3, "(ET)"), (4, "Resection cavity (RC)")):
        assert any(line.split()[0] == str(value) and name in line for line in text.splitlines()), (value, text)
    assert "4 Resection_cavity_(RC) 0 0 255 255" in slicer_color_table(POST)


# ----------------------------------------------------------------------------- predict and evaluate

def write_post_model(path) -> None:
    """An Identity graph 5 → 5 channels carrying ``post_card``: the class is the largest input channel."""
    shape = ["batch", 5, "x", "y", "z"]
    node = helper.make_node("Identity", ["image"], ["logits"], name="identity")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {CARD_KEY: post_card().to_json()})
    onnx.save(model, str(path))


def post_truth() -> np.ndarray:
    """A post-treatment label map: a cavity beside a tumour (SNFH around NETC and ET), on a 24×24×16 grid."""
    labels = np.zeros((24, 24, 16), np.uint8)
    labels[3:13, 3:13, 3:13] = 2
    labels[5:11, 5:11, 5:11] = 1
    labels[7:9, 7:9, 7:9] = 3
    labels[15:21, 14:20, 4:10] = 4
    return labels


def write_post_case(folder, labels: np.ndarray) -> None:
    """Modalities whose largest value (the mask is 1 inside the brain) gives ``labels`` through the Identity
    model: class k ≥ 1 but RC puts 10 in modality k; background brain and RC keep 0.1 (RC: the mask wins)."""
    folder.mkdir(parents=True)
    brain = np.zeros(labels.shape, bool)
    brain[1:23, 1:23, 1:15] = True
    for k, m in enumerate(MODALITIES):
        data = np.where(brain, 0.1, 0.0).astype(np.float32)
        data[brain & (labels == (k if k else 255))] = 10.0
        if k == 0:
            data[brain & (labels == 0)] = 10.0  # flair is the background class
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / f"{folder.name}_{m}.nii.gz"))


def test_predict_writes_rc_and_evaluate_gli_reads_it(tmp_path):
    case_id = "BraTS-GLI-00001-000"
    truth = post_truth()
    model = tmp_path / "post.onnx"
    write_post_model(model)
    write_post_case(tmp_path / "cases" / case_id, truth)
    runner = CliRunner()
    # --json: the case table of cli/predict.py names the 2021 labels (to be changed there: see the report)
    result = runner.invoke(app, ["predict", str(tmp_path / "cases" / case_id), "--out", str(tmp_path / "pred"),
                                 "--model", str(model), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    written = np.asanyarray(nib.load(str(tmp_path / "pred" / f"{case_id}.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, truth)
    report = json.loads((tmp_path / "pred" / f"{case_id}.json").read_text())
    assert report["label_scheme"] == POST
    assert report["labels"] == {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}
    voxels = {k: round(v * 1000) for k, v in report["volumes_ml"].items()}  # 1 mm³ voxels
    # by hand: SNFH box 10³, NETC 6³ less ET 2³, RC 6³ on its own (in neither TC nor WT)
    assert voxels == {"WT": 1000, "TC": 216, "ET": 8, "NETC": 208, "SNFH": 784, "RC": 216}

    save_truth = tmp_path / "truth" / f"{case_id}-seg.nii.gz"
    save_truth.parent.mkdir()
    nib.save(nib.Nifti1Image(truth, np.eye(4)), str(save_truth))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--challenge", "gli",
                                 "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    regions = json.loads(result.stdout)["cases"][0]["regions"]
    volumes = {key: [p["reference"]["voxels"] for p in r["pairs"]] for key, r in regions.items()}
    assert volumes == {"snfh": [784], "et": [8], "netc": [208], "rc": [216], "tc": [216], "wt": [1000]}
    assert all(r["global_dice"] == 1.0 and (r["fp"], r["fn"]) == (0, 0) for r in regions.values())


def test_the_case_table_names_the_post_treatment_labels(tmp_path):
    """Without --json predict prints a volume table; it listed NCR and ED by name (KeyError, exit 70)."""
    model = tmp_path / "post.onnx"
    write_post_model(model)
    write_post_case(tmp_path / "cases" / "c1", post_truth())
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "cases" / "c1"), "--out", str(tmp_path / "pred"),
                                      "--model", str(model)])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines()
            if line.count("│") == 3}
    assert {k: rows[k] for k in ("NETC", "SNFH", "ET", "RC", "WT", "TC")} == {
        "NETC": "0.21", "SNFH": "0.78", "ET": "0.01", "RC": "0.22", "WT": "1.00", "TC": "0.22"}


def test_synth_refuses_the_post_treatment_set(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--n", "1", "--out", str(tmp_path / "o"), "--label-scheme", POST])
    assert result.exit_code == 2 and "no resection cavity is synthesised" in result.output
    assert not (tmp_path / "o").exists()


def test_rc_cannot_be_written_as_brats2021(tmp_path):
    model = tmp_path / "post.onnx"
    write_post_model(model)
    write_post_case(tmp_path / "cases" / "c1", post_truth())
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "cases" / "c1"), "--out", str(tmp_path / "pred"),
                                      "--model", str(model), "--label-scheme", "brats2021"])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "RC has no value in brats2021" in lines[0], result.stderr
    assert not (tmp_path / "pred").exists() or not list((tmp_path / "pred").iterdir())


def test_the_preview_legend_names_and_colours_the_post_treatment_labels():
    from seg_edge.runtime.pictures import _colours, legend, volume_lines

    rows = legend(3, {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4})
    assert [(r["value"], r["name"]) for r in rows] == [(1, "NETC"), (2, "SNFH"), (3, "ET"), (4, "RC")]
    assert set(_colours(3, {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4})) == {1, 2, 3, 4}
    lines = volume_lines({"NETC": 0.2, "SNFH": 0.7, "ET": 0.1, "RC": 0.25, "WT": 1.0}, 3,
                         {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4})
    assert (lines[4][1], lines[4][2]) == ("RC (4)", "0.25 mL")
    assert legend(4) == legend(4, {"NCR": 1, "ED": 2, "ET": 4})  # the 2021 legend, as before
