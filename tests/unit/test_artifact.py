"""Model card: JSON round trip, validation at load, and the protobuf reader against onnx's own parser."""

from __future__ import annotations

import json
import re

import onnx
import pytest
from onnx import TensorProto, helper

from seg_edge.artifact import load_artifact, sidecar_path
from seg_edge.card import CARD_KEY, ModelCard
from seg_edge.errors import ArtifactError
from seg_edge.model.networks import card_for
from seg_edge.onnxproto import read_onnx_metadata


def test_card_round_trip_is_exact():
    card = card_for("nvidia-brats21", "demo").replace(provenance={"a": [1, 2], "b": {"c": "d"}})
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.schema == 2
    assert again.in_channels == 5 and again.inputs.axes == (2, 1, 0) and again.patch_size == (128, 128, 128)
    assert json.loads(again.to_json()) == json.loads(card.to_json())


@pytest.mark.parametrize("path,value,words", [
    ("inputs.channels", [{"name": c} for c in ("flair", "t1", "t2")],
     r"inputs.channels \['flair', 't1', 't2'\] gives 3"),
    ("outputs.channels", ["TC", "WT", "WT"], r"outputs.channels \['TC', 'WT', 'WT'\]"),
    ("inputs.channels[4].derived", "ones", "inputs.channels\\[4\\].derived"),
    ("inference.patch_size", [96, 96, 90], "inference.patch_size"),
    ("label_scheme", "brats2019", "label_scheme"),
    ("surprise", 1, r"unknown fields \['surprise'\]"),
    ("schema", 99, "newer"),
])
def test_invalid_cards_are_rejected_with_the_field_named(tmp_path, path, value, words):
    raw = json.loads(card_for("edge").to_json())
    *parents, last = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    model = tmp_path / "m.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 5, 16, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 16, 16, 16])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(proto, {CARD_KEY: json.dumps(raw)})
    onnx.save(proto, model)
    with pytest.raises(ArtifactError, match=words) as info:
        load_artifact(model)
    assert str(info.value).startswith(f"{model}: ")


def _tiny_model(props: dict[str, str]) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def test_metadata_reader_agrees_with_onnx(tmp_path, edge_onnx):
    props = {"k1": "v1", "ünïcode": "värde " * 50, CARD_KEY: card_for("edge").to_json()}
    path = tmp_path / "m.onnx"
    onnx.save(_tiny_model(props), path)
    assert read_onnx_metadata(path) == props
    expected = {p.key: p.value for p in onnx.load(str(edge_onnx), load_external_data=False).metadata_props}
    assert read_onnx_metadata(edge_onnx) == expected


@pytest.mark.parametrize("content", [b"", b"not a protobuf at all \xff\xfe", b"\x08\x07"])
def test_non_onnx_files_raise_artifact_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match="bad.onnx"):
        load_artifact(path)


def test_onnx_without_card_is_named(tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(_tiny_model({"other": "x"}), path)
    with pytest.raises(ArtifactError, match="no seg-edge card"):
        load_artifact(path)


def test_plan_reads_its_sidecar(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"opaque engine bytes")
    with pytest.raises(ArtifactError, match="sidecar"):
        load_artifact(plan)
    card = card_for("edge").replace(precision="fp16")
    sidecar_path(plan).write_text('{"card": ' + card.to_json() + ', "tensorrt": {"version": "10.3.0"}}')
    artifact = load_artifact(plan)
    assert artifact.kind == "tensorrt" and artifact.card == card
