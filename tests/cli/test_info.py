"""``seg-edge info``: a schema-2 card in words a user can check against the source's documentation."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from seg_edge.artifact import sidecar_path
from seg_edge.card import CARD_KEY, Channel, ETRule, Inference, Inputs, ModelCard, Outputs, SliceSpec
from seg_edge.cli.app import app
from seg_edge.cli.info import describe_card
from seg_edge.model.networks import card_for

ORDER = (("WT", "ED"), ("TC", "NCR"), ("ET", "ET"))
WIDE = {"COLUMNS": "240"}  # rich folds table cells at the terminal width


def monai_card() -> ModelCard:
    return ModelCard(
        name="brats_mri_segmentation", preset="monai-bundle",
        inputs=Inputs(tuple(Channel(m) for m in ("t1ce", "t1", "t2", "flair")), crop="none"),
        outputs=Outputs(channels=("TC", "WT", "ET"), rule="sequential", order=ORDER),
        inference=Inference(patch_size=(240, 240, 160), size_divisor=8, et_rule=ETRule(enabled=False)),
        provenance={"source_framework": "monai_bundle", "source_file": "models/model.pt", "source_sha256": "ab" * 32,
                    "importer": "seg-edge 0.2.0", "bundle_version": "0.5.1"})


def nnunet_card() -> ModelCard:
    return ModelCard(
        name="nnunet-brats21", preset="nnunet",
        inputs=Inputs(tuple(Channel(m) for m in ("t1", "t1ce", "t2", "flair"))),
        outputs=Outputs(rule="sequential", order=ORDER, source_labels={"1": "ED", "2": "NCR", "3": "ET"}),
        inference=Inference(patch_size=(128, 128, 128), size_divisor=32, tta_axes=(0, 1, 2), ensemble=5,
                            et_rule=ETRule(enabled=False)),
        provenance={"source_framework": "nnunetv2"})


def softmax_2d_card() -> ModelCard:
    return ModelCard(
        name="unet2d", preset="custom",
        inputs=Inputs((Channel("flair", "zscore"), Channel("t1ce", "none")), axes=(2, 1, 0), spatial_dims=2,
                      slice=SliceSpec(axis=0, size=(160, 192), interpolation="nearest",
                                      back_interpolation="nearest")),
        outputs=Outputs(kind="softmax", channels=("background", "NCR", "ED", "ET"), thresholds=()),
        inference=Inference(patch_size=(160, 192), size_divisor=32, overlap=0.25, blend="constant"),
        label_scheme="brats2023", precision="fp16")


def words(card: ModelCard) -> dict[str, str]:
    return dict(describe_card(card))


def test_nvidia_card_in_words():
    rows = words(card_for("nvidia-brats21"))
    assert rows["input 'image'"].splitlines() == [
        "0: flair — z-score over its non-zero voxels (zeros stay 0)",
        "1: t1 — z-score over its non-zero voxels (zeros stay 0)",
        "2: t1ce — z-score over its non-zero voxels (zeros stay 0)",
        "3: t2 — z-score over its non-zero voxels (zeros stay 0)",
        "4: mask — derived: 1 where every normalised modality channel is > 0 (NVIDIA BraTS21 mask)"]
    assert rows["crop"] == "to the box where any modality is > 0 (pasted back after)"
    assert rows["axes"] == "network axes = array Z, Y, X"
    assert rows["2D slicing"] == "none (3D network)"
    assert rows["output 'logits'"] == "sigmoid regions: 0 WT (p > 0.5), 1 TC (p > 0.5), 2 ET (p > 0.5)"
    assert rows["labels"].startswith("ET inside WT → ET (4), else TC inside WT → NCR (1), else WT → ED (2), "
                                     "else background (0)")
    assert "TC, ET outside WT ignored" in rows["labels"]
    assert rows["window"] == "patch 128×128×128, size divisor 64, overlap 0.5, gaussian blend (σ = 0.125 × window)"
    assert (rows["TTA"], rows["ensemble"]) == ("off", "1 network")
    assert rows["ET rule"].startswith("on: ET components of 2..7 voxels with mean ET probability < 0.9 become NCR")
    assert rows["label scheme"] == "brats2021: NCR = 1, ED = 2, ET = 4"
    assert rows["source framework"] == "seg-edge" and rows["source sha256"] == "not stated"


def test_monai_bundle_card_in_words():
    rows = words(monai_card())
    assert [line.split(" — ")[0] for line in rows["input 'image'"].splitlines()] == ["0: t1ce", "1: t1", "2: t2",
                                                                                    "3: flair"]
    assert rows["crop"] == "none (the whole volume)" and rows["axes"] == "network axes = array X, Y, Z (as loaded)"
    assert rows["output 'logits'"] == "sigmoid regions: 0 TC (p > 0.5), 1 WT (p > 0.5), 2 ET (p > 0.5)"
    assert rows["labels"] == "ET → ET (4), else TC → NCR (1), else WT → ED (2), else background (0)"
    assert rows["ET rule"] == "off" and rows["source labels"] == "not stated"
    assert (rows["source framework"], rows["source file"], rows["source sha256"], rows["importer"]) == (
        "monai_bundle", "models/model.pt", "ab" * 32, "seg-edge 0.2.0")
    assert rows["provenance.bundle_version"] == "0.5.1" and "provenance.source_file" not in rows


def test_nnunet_card_in_words():
    rows = words(nnunet_card())
    assert rows["TTA"] == "mirroring along network axes 0, 1, 2 (array X, Y, Z): 8 passes averaged"
    assert rows["ensemble"] == "5 networks averaged in logit space"
    assert rows["source labels"] == "the model's label 1 = ED, 2 = NCR, 3 = ET"
    assert rows["labels"] == "ET → ET (4), else TC → NCR (1), else WT → ED (2), else background (0)"


def test_2d_softmax_card_in_words():
    rows = words(softmax_2d_card())
    assert rows["input 'image'"].splitlines() == ["0: flair — z-score over all voxels",
                                                  "1: t1ce — as loaded (not normalised)"]
    assert rows["axes"] == "network axes = array Z, Y, X"
    assert rows["2D slicing"] == ("2D network: slices along network axis 0 (array Z), all of them, each resized to "
                                  "160×192 (nearest); the logits resized back to the slice (nearest) and "
                                  "labelled there")
    assert rows["output 'logits'"] == "softmax over classes: 0 background, 1 NCR, 2 ED, 3 ET"
    assert rows["labels"] == "arg-max class: background → 0, NCR → 1, ED → 2, ET → 3"
    assert rows["label scheme"] == "brats2023: NCR = 1, ED = 2, ET = 3"
    assert rows["window"] == "patch 160×192, size divisor 32, overlap 0.25, constant blend"
    assert rows["precision"] == "fp16"


def write_model(path, card: ModelCard):
    """An Identity graph whose declared I/O fits ``card`` (only the declarations are read)."""
    spatial = ["x", "y", "z"][:card.inputs.spatial_dims]
    graph = helper.make_graph(
        [helper.make_node("Identity", [card.input_name], [card.output_name])], "g",
        [helper.make_tensor_value_info(card.input_name, TensorProto.FLOAT, ["batch", card.in_channels, *spatial])],
        [helper.make_tensor_value_info(card.output_name, TensorProto.FLOAT, ["batch", card.out_channels, *spatial])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {CARD_KEY: card.to_json()})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("make,phrases", [
    (monai_card, ["ET → ET (4), else TC → NCR (1), else WT → ED (2)", "3: flair", "none (the whole volume)",
                  "graph input", "image float32 [batch, 4, x, y, z]", "models/model.pt"]),
    (nnunet_card, ["8 passes averaged", "5 networks averaged in logit space", "1 = ED, 2 = NCR, 3 = ET"]),
    (softmax_2d_card, ["slices along network axis 0 (array Z)", "logits float32 [batch, 4, x, y]",
                       "brats2023: NCR = 1, ED = 2, ET = 3"]),
])
def test_info_cli_renders_the_card(tmp_path, make, phrases):
    card = make()
    path = write_model(tmp_path / "m.onnx", card)
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    for phrase in phrases + ["schema 2", f"{card.name} (preset {card.preset})"]:
        assert phrase in result.stdout, (phrase, result.stdout)
    assert "read as schema" not in result.stdout
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert data["card"] == json.loads(card.to_json()) and data["stored_schema"] == 2
    assert [t["name"] for t in data["graph"]["inputs"]] == [card.input_name]
    assert data["graph"]["outputs"][0]["dims"][1] == card.out_channels


def test_info_on_the_shipped_schema1_model():
    runner = CliRunner()
    result = runner.invoke(app, ["info"], env=WIDE)
    assert result.exit_code == 0, result.output
    for phrase in ("schema 1, read as schema 2", "network axes = array X, Y, Z (as loaded)", "patch 96×96×96",
                   "ET inside WT → ET (4)", "seg-edge-edge.pt", "provenance.intended_use"):
        assert phrase in result.stdout, (phrase, result.stdout)
    data = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    assert data["stored_schema"] == 1 and data["card"]["schema"] == 2
    assert [c["name"] for c in data["card"]["inputs"]["channels"]] == ["flair", "t1", "t1ce", "t2", "mask"]


def test_info_on_a_tensorrt_plan(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"opaque engine bytes")
    card = nnunet_card()
    sidecar_path(plan).write_text(json.dumps({"card": json.loads(card.to_json()), "tensorrt": {"version": "10.3"}}))
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(plan)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "tensorrt" in result.stdout and "a TensorRT plan" in result.stdout and "graph input" not in result.stdout
    data = json.loads(runner.invoke(app, ["info", str(plan), "--json"]).stdout)
    assert data["kind"] == "tensorrt" and "graph" not in data and data["card"]["inference"]["ensemble"] == 5


def test_info_on_an_onnx_file_without_a_card(tmp_path):
    """What a user needs to write a card: the graph's input and output names, element types and shapes."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["probs"], to=TensorProto.FLOAT16)], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 128, 128, 2])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT16, ["batch", 128, "width", 2])])
    path = tmp_path / "keras.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    for phrase in ("no seg-edge card", "docs/CARD.md", "seg-edge import onnx", "image float32 [batch, 128, 128, 2]",
                   "probs float16 [batch, 128, width, 2]"):
        assert phrase in result.stdout, (phrase, result.stdout)
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert data["card"] is None and "no seg-edge card" in data["note"]
    assert data["graph"]["inputs"] == [{"name": "image", "elem_type": 1, "dims": ["batch", 128, 128, 2],
                                        "type": "float32"}]
    assert data["graph"]["outputs"] == [{"name": "probs", "elem_type": 10, "dims": ["batch", 128, "width", 2],
                                         "type": "float16"}]


def test_info_on_a_file_that_is_not_onnx_is_still_a_model_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and result.stderr.startswith("model error:") and str(path) in result.stderr


def test_info_says_a_schema_2_0_card_was_read_as_2_2_and_states_the_2_1_fields(tmp_path):
    """A stored 2.0 card (no schema_minor) is read as 2.2 with its meaning, and info says so; a 2.1 card's
    tensor layout, slice range and way back are said in words."""
    old = softmax_2d_card()
    raw = json.loads(old.to_json())
    del raw["schema_minor"], raw["inputs"]["layout"], raw["outputs"]["layout"], raw["inputs"]["space"]
    for key in ("back", "back_interpolation", "range"):
        del raw["inputs"]["slice"][key]
    path = write_model(tmp_path / "old.onnx", old)
    model = onnx.load(str(path))
    helper.set_model_props(model, {CARD_KEY: json.dumps(raw)})
    onnx.save(model, str(path))
    result = CliRunner().invoke(app, ["info", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    for phrase in ("schema 2.0, read as schema 2.2", "input space", "atlas: co-registered",
                   "input N, C, spatial, output N, C, spatial",
                   "all of them, each resized to 160×192 (nearest); the logits resized back to the slice (nearest)"):
        assert phrase in result.stdout, (phrase, result.stdout)
    spec = SliceSpec(axis=0, size=(160, 192), interpolation="linear", back="labels", back_interpolation="nearest",
                     range=(22, 122))
    tutorial = old.replace(inputs=Inputs((Channel("flair", "max"), Channel("t1ce", "max")), axes=(2, 1, 0),
                                         spatial_dims=2, slice=spec, layout="channels_last"),
                           outputs=Outputs(kind="softmax", channels=("background", "NCR", "ED", "ET"), thresholds=(),
                                           order=(), layout="channels_last"))
    rows = dict(describe_card(tutorial))
    assert rows["card"] == "schema 2.2" and rows["input 'image'"].startswith("0: flair — divided by its maximum")
    assert rows["tensor layout"] == "input N, spatial, C (channels last), output N, spatial, C (channels last)"
    assert rows["2D slicing"] == ("2D network: slices along network axis 0 (array Z), those at indices 22..121 (the "
                                  "others background), each resized to 160×192 (linear); labelled at that size, then "
                                  "labels and probabilities resized back to the slice (nearest)")
