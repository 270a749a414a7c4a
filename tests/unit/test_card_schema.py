"""Model card schema 2: schema-1 cards keep their behaviour, the JSON Schema agrees with the code,
cards survive a JSON round trip.

(a) The shipped model still stores a flat schema-1 card: read as schema 2 it must say what
    docs/CARD.md ("Schema 1") promises, and a model segments bit-identically with either card.
(b) ``assets/card.schema.json`` accepts every card the code writes and refuses malformed ones
    (the rules JSON Schema cannot state are listed, and only those may slip through).
(c) ``ModelCard.from_json(card.to_json()) == card`` for cards of other sources' models.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from seg_edge.artifact import load_artifact
from seg_edge.card import (CARD_KEY, Channel, ETRule, Inference, Inputs, ModelCard, Outputs, SliceSpec,
                           schema1_card)
from seg_edge.errors import ArtifactError
from seg_edge.onnxproto import read_onnx_metadata

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "seg_edge" / "assets"
SHIPPED = ASSETS / "seg-edge-edge.onnx"
SCHEMA_FILE = ASSETS / "card.schema.json"
ORDER = (("WT", "ED"), ("TC", "NCR"), ("ET", "ET"))


def stored_card(path: Path) -> dict:
    """The card JSON exactly as the file stores it (no migration)."""
    return json.loads(read_onnx_metadata(path)[CARD_KEY])


def with_metadata_card(src: Path, dst: Path, card: dict) -> Path:
    """A copy of ``src`` (graph and weights unchanged) storing ``card`` as its seg-edge card."""
    proto = onnx.load(str(src))
    entry = next(p for p in proto.metadata_props if p.key == CARD_KEY)
    entry.value = json.dumps(card)
    onnx.save(proto, str(dst))
    return dst


def flat_card(card: ModelCard, axis_order: str = "xyz") -> dict:
    """The schema-1 (flat) card seg-edge 0.1 wrote for what ``card`` describes."""
    return {"name": card.name, "preset": card.preset, "modalities": list(card.modalities), "mask_channel": "nvidia",
            "regions": list(card.outputs.channels), "activation": "sigmoid",
            "thresholds": list(card.outputs.thresholds),
            "label_scheme": card.label_scheme, "patch_size": list(card.patch_size), "size_divisor": card.size_divisor,
            "normalization": "zscore_nonzero", "axis_order": axis_order, "precision": card.precision,
            "input_name": card.input_name, "output_name": card.output_name,
            "et_rule": asdict(card.et_rule), "tolerances": asdict(card.tolerances), "provenance": card.provenance,
            "schema": 1}


# ----------------------------------------------------------------------- (a) schema 1 → schema 2

# the FP32 file keeps the card it shipped with; the INT8/FP16 files are remade by today's quantize
# (`make reduced-precision`), so their cards are written in the current schema
@pytest.mark.parametrize("name", ["seg-edge-edge.onnx"])
def test_shipped_schema1_card_reads_as_documented(name):
    raw = stored_card(ASSETS / name)
    assert raw["schema"] == 1 and "inputs" not in raw  # still the flat card: this test is about migration
    card = load_artifact(ASSETS / name).card
    assert card.schema == 2 and (card.name, card.preset) == (raw["name"], raw["preset"])
    # inputs: each modality a zscore_nonzero channel in the stored order, then NVIDIA's mask channel
    assert card.inputs.channels == tuple(Channel(m, "zscore_nonzero") for m in raw["modalities"]) + (
        Channel("mask", "none", "nvidia_mask"),)
    assert card.modalities == ("flair", "t1", "t1ce", "t2") and card.in_channels == 5
    assert card.inputs.crop == "nonzero" and card.inputs.tensor == raw["input_name"] == "image"
    assert card.inputs.axes == {"xyz": (0, 1, 2), "zyx": (2, 1, 0)}[raw["axis_order"]]
    assert card.inputs.spatial_dims == 3 and card.inputs.slice is None
    # outputs: sigmoid WT, TC, ET with the nested rule in NVIDIA's order
    out = card.outputs
    assert (out.kind, out.channels, out.rule, out.order) == ("sigmoid", ("WT", "TC", "ET"), "nested", ORDER)
    assert out.thresholds == tuple(raw["thresholds"]) and out.tensor == raw["output_name"] == "logits"
    assert out.source_labels == {}
    # inference: the stored patch and divisor; overlap 0.5, gaussian, no TTA, one network
    inf = card.inference
    assert inf.patch_size == tuple(raw["patch_size"]) == (96, 96, 96) and inf.size_divisor == raw["size_divisor"]
    assert (inf.overlap, inf.blend, inf.tta_axes, inf.ensemble) == (0.5, "gaussian", (), 1)
    assert inf.et_rule == ETRule(**raw["et_rule"])
    assert (card.label_scheme, card.precision) == (raw["label_scheme"], raw["precision"])
    assert asdict(card.tolerances) == raw["tolerances"] and card.provenance == raw["provenance"]


def test_shipped_card_through_schema1_card_equals_the_loaded_one():
    raw = {k: v for k, v in stored_card(SHIPPED).items() if k != "schema"}
    assert schema1_card(**raw) == load_artifact(SHIPPED).card


@pytest.fixture(scope="module")
def schema1_copies(tmp_path_factory, edge_onnx) -> dict[str, Path]:
    """edge_onnx (exported by today's code: schema 2) and copies storing a flat schema-1 card, xyz and zyx."""
    card = load_artifact(edge_onnx).card
    assert stored_card(edge_onnx)["schema"] == 2
    root = tmp_path_factory.mktemp("schema1")
    zyx = card.replace(inputs=Inputs(card.inputs.channels, card.inputs.tensor, axes=(2, 1, 0)))
    return {"schema2": edge_onnx,
            "schema1": with_metadata_card(edge_onnx, root / "schema1.onnx", flat_card(card)),
            "schema2-zyx": with_metadata_card(edge_onnx, root / "schema2_zyx.onnx", json.loads(zyx.to_json())),
            "schema1-zyx": with_metadata_card(edge_onnx, root / "schema1_zyx.onnx", flat_card(card, "zyx"))}


@pytest.mark.parametrize("axes", ["", "-zyx"], ids=["xyz", "zyx"])
def test_schema1_and_schema2_cards_segment_bit_identically(schema1_copies, case_dir, axes):
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    old, new = schema1_copies["schema1" + axes], schema1_copies["schema2" + axes]
    assert stored_card(old)["schema"] == 1 and stored_card(new)["schema"] == 2
    assert load_artifact(old).card == load_artifact(new).card
    results = []
    for path in (old, new):
        with Segmenter.open(path, options=SegmenterOptions(probabilities=True)) as seg:
            case = load_case(case_dir, seg.card.modalities)
            results.append(seg.predict(case))
    a, b = results
    assert a.labels.dtype == np.uint8 and a.labels.shape == case.images.shape[1:]
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.probabilities, b.probabilities)
    assert a.volumes_ml == b.volumes_ml and a.et_relabelled_voxels == b.et_relabelled_voxels


# ----------------------------------------------------------------------- (c) cards of other sources

def softmax_2d_card() -> ModelCard:
    """A 2D network on axial slices whose classes are BraTS labels (softmax)."""
    return ModelCard(
        name="unet2d-softmax", preset="custom",
        inputs=Inputs(tuple(Channel(m, "zscore") for m in ("flair", "t1ce")), tensor="input", crop="none",
                      axes=(0, 1, 2), spatial_dims=2, slice=SliceSpec(axis=2, size=(128, 128), interpolation="linear")),
        outputs=Outputs(kind="softmax", channels=("background", "NCR", "ED", "ET"), thresholds=(), tensor="output"),
        inference=Inference(patch_size=(128, 128), size_divisor=16, overlap=0.0, tta_axes=(0, 1)),
        label_scheme="brats2023",
        provenance={"source_framework": "torch", "source_file": "unet2d.pt", "source_sha256": "0" * 64})


def monai_bundle_card() -> ModelCard:
    """MONAI's brats_mri_segmentation bundle: SegResNet on 4 channels, sigmoid TC, WT, ET, 'ET→4, else TC→1,
    else WT→2'."""
    return ModelCard(
        name="brats_mri_segmentation", preset="monai-bundle",
        inputs=Inputs(tuple(Channel(m) for m in ("t1ce", "t1", "t2", "flair")), crop="none"),
        outputs=Outputs(kind="sigmoid", channels=("TC", "WT", "ET"), thresholds=(0.5, 0.5, 0.5), rule="sequential",
                        order=ORDER),
        inference=Inference(patch_size=(240, 240, 160), size_divisor=8, overlap=0.5, et_rule=ETRule(enabled=False)),
        provenance={"source_framework": "monai_bundle", "source_file": "models/model.pt", "source_sha256": "1" * 64,
                    "importer": "seg-edge 0.2.0"})


def nnunet_card() -> ModelCard:
    """nnU-Net v2 (Dataset137_BraTS2021, region-based): 5 folds mirrored on every axis."""
    return ModelCard(
        name="nnunet-brats21", preset="nnunet",
        inputs=Inputs(tuple(Channel(m, "zscore_nonzero") for m in ("t1", "t1ce", "t2", "flair"))),
        outputs=Outputs(kind="sigmoid", channels=("WT", "TC", "ET"), thresholds=(0.5, 0.5, 0.5), rule="sequential",
                        order=ORDER, source_labels={"1": "ED", "2": "NCR", "3": "ET"}),
        inference=Inference(patch_size=(128, 128, 128), size_divisor=32, tta_axes=(0, 1, 2), ensemble=5,
                            et_rule=ETRule(enabled=False)),
        provenance={"source_framework": "nnunetv2", "source_file": "Dataset137_BraTS2021", "folds": [0, 1, 2, 3, 4]})


OTHER_CARDS = {"2d-softmax": softmax_2d_card, "monai-bundle": monai_bundle_card, "nnunet": nnunet_card}


@pytest.mark.parametrize("name", sorted(OTHER_CARDS))
def test_round_trip(name):
    card = OTHER_CARDS[name]()
    text = card.to_json()
    again = ModelCard.from_json(text, name)
    assert again == card and again.to_json() == text
    raw = json.loads(text)
    assert raw["schema"] == 2 and raw["schema_minor"] == 2
    assert set(raw) == {"schema", "schema_minor", "name", "preset", "inputs", "outputs", "inference",
                        "label_scheme", "precision", "tolerances", "provenance"}


def test_round_trip_keeps_what_each_source_states():
    monai, nnunet, flat = monai_bundle_card(), nnunet_card(), softmax_2d_card()
    monai = ModelCard.from_json(monai.to_json())
    assert monai.modalities == ("t1ce", "t1", "t2", "flair") and monai.in_channels == 4
    assert monai.inputs.crop == "none" and monai.outputs.channels == ("TC", "WT", "ET")
    assert monai.outputs.rule == "sequential" and monai.outputs.order == ORDER and not monai.et_rule.enabled
    nnunet = ModelCard.from_json(nnunet.to_json())
    assert nnunet.modalities == ("t1", "t1ce", "t2", "flair")
    assert {c.normalization for c in nnunet.inputs.channels} == {"zscore_nonzero"}
    assert (nnunet.inference.tta_axes, nnunet.inference.ensemble) == ((0, 1, 2), 5)
    assert nnunet.outputs.source_labels == {"1": "ED", "2": "NCR", "3": "ET"}
    flat = ModelCard.from_json(flat.to_json())
    assert flat.inputs.slice == SliceSpec(2, (128, 128), "linear") and flat.out_channels == 4


# ----------------------------------------------------------------------- (b) the JSON Schema file

@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")  # the dev extra; only the schema tests need it
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, raw: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]


def documented_card() -> dict:
    """The layout example of docs/CARD.md."""
    text = (ROOT / "docs" / "CARD.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


def written_cards(edge_onnx) -> dict[str, dict]:
    """Every kind of card the code writes, as the file stores it."""
    from seg_edge.model.networks import PRESETS, card_for
    from seg_edge.runtime.sessions.plans import make_profile, sidecar

    cards = {f"card_for-{p}": json.loads(card_for(p).to_json()) for p in PRESETS}
    cards["exported"] = stored_card(edge_onnx)
    for path in sorted(ASSETS.glob("*.onnx")):  # schema 1 on disk: what seg-edge writes when it re-saves them
        cards[f"migrated-{path.name}"] = json.loads(load_artifact(path).card.to_json())
    for precision in ("fp16", "int8"):
        cards[f"quantized-{precision}"] = json.loads(card_for("edge").replace(precision=precision).to_json())
    device = SimpleNamespace(name="GPU", compute_capability="9.0")  # what sidecar() reads of a Device
    edge = card_for("edge")
    cards["plan-sidecar"] = sidecar(edge, "10.3", device, "fp16", make_profile(edge), 1.0, "0" * 64)["card"]
    cards.update({name: json.loads(make().to_json()) for name, make in OTHER_CARDS.items()})
    cards["docs-example"] = documented_card()
    return cards


def test_json_schema_accepts_every_card_the_code_writes(validator, edge_onnx):
    cards = written_cards(edge_onnx)
    assert len(cards) >= 10
    for name, raw in cards.items():
        ModelCard.from_json(json.dumps(raw), name)  # the code accepts it ...
        assert _errors(validator, raw) == [], name  # ... and so does the schema


SLICE = {"axis": 0, "size": [32, 32], "interpolation": "nearest"}
VALID_VARIANTS = {
    "minimal": None,
    "2d": {"inputs.spatial_dims": 2, "inputs.slice": SLICE, "inference.patch_size": [32, 32],
           "inference.tta_axes": [1, 0]},
    "softmax-no-thresholds": {"outputs.kind": "softmax", "outputs.channels": ["background", "NCR", "ED", "ET"],
                              "outputs.thresholds": [], "outputs.order": []},
    "no-et-output-rule-off": {"outputs.channels": ["WT", "TC"], "outputs.thresholds": [0.4, 0.6],
                              "outputs.order": [["WT", "ED"], ["TC", "NCR"]], "inference.et_rule.enabled": False},
    "two-modalities-no-mask": {"inputs.channels": [{"name": "t2", "normalization": "zscore"}, {"name": "flair"}]},
    "other-axes-crop-tta": {"inputs.axes": [1, 2, 0], "inputs.crop": "none", "inference.tta_axes": [2, 0],
                            "inference.overlap": 0, "inference.blend": "constant", "inference.ensemble": 3},
    "source-labels": {"outputs.source_labels": {"1": "ED", "2": "NCR", "4": "ET", "0": "background"}},
}


@pytest.mark.parametrize("name", sorted(VALID_VARIANTS))
def test_json_schema_accepts_what_the_code_accepts(validator, name):
    from test_card_graph import card_dict

    raw = {"schema": 2, "name": "m", "preset": "p"} if VALID_VARIANTS[name] is None else card_dict(
        **VALID_VARIANTS[name])
    ModelCard.from_json(json.dumps(raw), name)
    assert _errors(validator, raw) == []


def test_docs_example_is_the_edge_presets_card(validator):
    from seg_edge.model.networks import card_for

    documented, edge = ModelCard.from_json(json.dumps(documented_card()), "docs/CARD.md"), card_for("edge")
    assert (documented.inputs, documented.outputs, documented.inference) == (edge.inputs, edge.outputs, edge.inference)


# Rules only the code checks (JSON Schema cannot compare one field with another, tell 32.0 from
# 32, or see NaN, which JSON does not have); the schema's description lists them.
NOT_EXPRESSIBLE = {"patch-not-divisible", "patch-floats", "thresholds-too-few", "modality-repeated",
                   "et-rule-prob-nan", "2d-range-reversed"}


def test_json_schema_refuses_what_the_code_refuses(validator):
    from test_card_graph import MALFORMED, card_dict

    assert NOT_EXPRESSIBLE <= set(MALFORMED)
    slipped = set()
    for name, (change, _) in MALFORMED.items():
        raw = card_dict(**change)
        with pytest.raises(ArtifactError):
            ModelCard.from_json(json.dumps(raw), name)
        if not _errors(validator, raw):
            slipped.add(name)
    assert slipped == NOT_EXPRESSIBLE
    description = json.loads(SCHEMA_FILE.read_text())["description"]
    for words in ("multiple of inference.size_divisor", "distinct", "one entry per sigmoid channel", "32.0",
                  "start < stop"):
        assert words in description


@pytest.mark.parametrize("change,where", [
    ({"schema": 1}, "schema"),
    ({"schema": 3}, "schema"),
    ({"inputs.channels[0].derived": "brain_mask"}, "inputs/channels/0/derived"),
    ({"outputs.kind": "softmax"}, "outputs/channels/0"),  # WT is not a softmax class
    ({"inputs.spatial_dims": 2, "inference.patch_size": [32, 32]}, "inputs"),  # 2D without a slice
    ({"inputs.axes": [0, 1]}, "inputs/axes"),
    ({"outputs.source_labels": {"1": "edema"}}, "outputs/source_labels/1"),
    ({"inference.window": 64}, "inference"),
    ({"provenance": "exported by hand"}, "provenance"),
])
def test_json_schema_refuses_malformed_cards(validator, change, where):
    from test_card_graph import card_dict

    raw = card_dict(**change)
    errors = _errors(validator, raw)
    assert errors and any(e.startswith(where) for e in errors), errors
    with pytest.raises(ArtifactError):
        ModelCard.from_json(json.dumps(raw), "m.onnx")


def test_json_schema_is_shipped_as_package_data():
    import tomllib
    from fnmatch import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["seg_edge"]
    assert any(fnmatch("assets/card.schema.json", p) for p in patterns)
    import seg_edge

    assert (Path(seg_edge.__file__).parent / "assets" / "card.schema.json").is_file()
