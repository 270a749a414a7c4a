"""Model cards checked at load: field types and ranges, runtime-implemented values, and the ONNX graph.

Every malformed card must be an ArtifactError (exit 2, "model error") naming the file, the field,
the value found and the value expected — never a TypeError, a ZeroDivisionError or an ORT trace.
The graphs are tiny Identity/Conv models built with ``onnx.helper``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from seg_edge import artifact as art
from seg_edge import onnxproto as walker
from seg_edge.artifact import (CARD_KEY, ETRule, ModelCard, Tolerances, load_artifact, read_onnx_header,
                               sidecar_path)
from seg_edge.cli.app import app
from seg_edge.errors import ArtifactError

N, X, Y, Z = "batch", "x", "y", "z"
GOOD_IN = [N, 5, X, Y, Z]
GOOD_OUT = [N, 3, X, Y, Z]


def card_dict(**changes) -> dict:
    raw = json.loads(ModelCard(name="tiny", preset="edge", patch_size=(32, 32, 32)).to_json())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def write_model(path, card: dict | str | None = None, inputs=(("image", GOOD_IN),), outputs=(("logits", GOOD_OUT),),
                elem=TensorProto.FLOAT, conv: bool = False):
    """An Identity graph (or a 1×1×1 Conv 5→3 with a weight initializer) carrying ``card``."""
    (in_name, in_shape), (out_name, out_shape) = inputs[0], outputs[0]
    inits = []
    if conv:
        weight = np.random.default_rng(0).standard_normal((3, 5, 1, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "w"))
        node = helper.make_node("Conv", [in_name, "w"], [out_name], name="conv")
    else:
        node = helper.make_node("Identity", [in_name], [out_name], name="identity")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, elem, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if card is not None:
        helper.set_model_props(model, {CARD_KEY: card if isinstance(card, str) else json.dumps(card)})
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------------- the reader

def test_walker_field_numbers_are_onnx_protos():
    fields = {
        (onnx.ModelProto, "graph"): walker._MODEL_GRAPH, (onnx.ModelProto, "metadata_props"): walker._MODEL_METADATA_PROPS,
        (onnx.GraphProto, "input"): walker._GRAPH_INPUT, (onnx.GraphProto, "output"): walker._GRAPH_OUTPUT,
        (onnx.ValueInfoProto, "name"): walker._VALUE_NAME, (onnx.ValueInfoProto, "type"): walker._VALUE_TYPE,
        (onnx.TypeProto, "tensor_type"): walker._TYPE_TENSOR, (onnx.TypeProto.Tensor, "elem_type"): walker._TENSOR_ELEM,
        (onnx.TypeProto.Tensor, "shape"): walker._TENSOR_SHAPE, (onnx.TensorShapeProto, "dim"): walker._SHAPE_DIM,
        (onnx.TensorShapeProto.Dimension, "dim_value"): walker._DIM_VALUE,
        (onnx.TensorShapeProto.Dimension, "dim_param"): walker._DIM_PARAM,
    }
    for (proto, name), number in fields.items():
        assert proto.DESCRIPTOR.fields_by_name[name].number == number, (proto.DESCRIPTOR.name, name)


def _onnx_io(path):
    model = onnx.load(str(path), load_external_data=False)

    def info(v):
        t = v.type.tensor_type
        dims = None if not t.HasField("shape") else tuple(
            d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in t.shape.dim)
        return art.TensorInfo(v.name, t.elem_type, dims)
    return tuple(map(info, model.graph.input)), tuple(map(info, model.graph.output))


def test_graph_io_reader_agrees_with_onnx(tmp_path, edge_onnx):
    odd = write_model(tmp_path / "odd.onnx", None, inputs=(("a", [1, -1, "s", None, 7]), ("b", [])),
                      outputs=(("c", None), ("d", [2, 3])), elem=TensorProto.FLOAT16)
    for path in (edge_onnx, odd):
        header = read_onnx_header(path)
        assert (header.inputs, header.outputs) == _onnx_io(path)
    header = read_onnx_header(odd)
    assert header.inputs[0].dims == (1, -1, "s", None, 7) and header.inputs[1].dims == ()
    assert header.outputs[0].dims is None and header.inputs[0].elem_type == TensorProto.FLOAT16
    edge = read_onnx_header(edge_onnx)
    assert [i.name for i in edge.inputs] == ["image"] and edge.inputs[0].dims[1] == 5
    assert edge.outputs[0].dims[1] == 3 and not isinstance(edge.inputs[0].dims[2], int)


def _delimited(number: int, payload: bytes) -> bytes:
    def varint(v):
        out = b""
        while v > 0x7F:
            out, v = out + bytes([v & 0x7F | 0x80]), v >> 7
        return out + bytes([v])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_initializers_are_skipped_not_parsed(tmp_path):
    """A garbage initializer (field 5) that onnx cannot parse does not stop the walker."""
    model = onnx.load(str(write_model(tmp_path / "ok.onnx", card_dict(), conv=True)))
    graph = model.graph.SerializeToString() + _delimited(5, b"\xff" * 4096)
    model.ClearField("graph")
    bad = tmp_path / "garbage_weights.onnx"
    bad.write_bytes(model.SerializeToString() + _delimited(7, graph))
    with pytest.raises(Exception):
        onnx.load(str(bad))
    artifact = load_artifact(bad)
    assert artifact.inputs[0].name == "image" and artifact.outputs[0].dims == tuple(GOOD_OUT)


# ------------------------------------------------------------------------------ card field types

def test_type_table_covers_every_card_field():
    assert set(art.FIELD_TYPES) == {f.name for f in dataclasses.fields(ModelCard)}
    assert set(art.NESTED_TYPES["et_rule"]) == {f.name for f in dataclasses.fields(ETRule)}
    assert set(art.NESTED_TYPES["tolerances"]) == {f.name for f in dataclasses.fields(Tolerances)}


def test_runtime_implements_exactly_the_values_cards_may_name():
    from seg_edge.runtime.regions import LABEL_SCHEMES
    from seg_edge.runtime.preprocess import NORMALIZERS
    from seg_edge.runtime.segmenter import ACTIVATION_FUNCTIONS

    assert tuple(ACTIVATION_FUNCTIONS) == art.ACTIVATIONS
    assert tuple(NORMALIZERS) == art.NORMALIZATIONS
    assert set(LABEL_SCHEMES) == set(art.LABEL_SCHEMES)


MALFORMED = {
    "schema-as-string": ({"schema": "2"}, ['schema is "2"', "expected an integer"]),
    "schema-zero": ({"schema": 0}, ["schema 0", "expected 1..1"]),
    "size-divisor-zero": ({"size_divisor": 0}, ["size_divisor 0", "expected an integer >= 1"]),
    "size-divisor-bool": ({"size_divisor": True}, ["size_divisor is true", "expected an integer"]),
    "patch-negative": ({"patch_size": [-32, 32, 32]}, ["patch_size [-32, 32, 32]", "sizes >= 1"]),
    "patch-not-divisible": ({"patch_size": [32, 32, 40]}, ["patch_size [32, 32, 40]", "multiple of size_divisor 16"]),
    "patch-two-sizes": ({"patch_size": [32, 32]}, ["patch_size [32, 32]", "3 sizes"]),
    "patch-floats": ({"patch_size": [32.0, 32, 32]}, ["patch_size is [32.0, 32, 32]", "list of integers"]),
    "thresholds-string": ({"thresholds": "0.5"}, ['thresholds is "0.5"', "list of numbers"]),
    "thresholds-strings": ({"thresholds": ["0.5", "0.5", "0.5"]}, ["thresholds is", "list of numbers"]),
    "thresholds-out-of-range": ({"thresholds": [0.5, 0.0, 1.5]}, ["thresholds [0.5, 0.0, 1.5]", "in (0, 1)"]),
    "thresholds-too-few": ({"thresholds": [0.5]}, ["thresholds [0.5]", "one per region"]),
    "activation-unknown": ({"activation": "softmax"}, ['activation "softmax"', "expected one of ['sigmoid']"]),
    "normalization-unknown": ({"normalization": "minmax"}, ['normalization "minmax"', "['zscore_nonzero']"]),
    "normalization-number": ({"normalization": 3}, ["normalization is 3", "expected a string"]),
    "modalities-string": ({"modalities": "flair,t1,t1ce,t2"}, ['modalities is "flair,t1', "list of strings"]),
    "modalities-wrong-set": ({"modalities": ["flair", "t1", "t1", "t2"]}, ["modalities", "an order of"]),
    "et-rule-string-int": ({"et_rule": {"component_max_voxels": "8"}},
                           ['et_rule.component_max_voxels is "8"', "expected an integer"]),
    "et-rule-negative": ({"et_rule": {"total_max_voxels": -1}}, ["et_rule.total_max_voxels -1", ">= 0"]),
    "et-rule-enabled-int": ({"et_rule": {"enabled": 1}}, ["et_rule.enabled is 1", "true or false"]),
    "et-rule-unknown-key": ({"et_rule": {"size": 3}}, ["et_rule.size is not a field"]),
    "et-rule-not-object": ({"et_rule": "on"}, ['et_rule is "on"', "JSON object"]),
    "et-rule-prob-nan": ({"et_rule": {"max_mean_prob": math.nan}}, ["et_rule.max_mean_prob nan", "[0, 1]"]),
    "tolerance-negative": ({"tolerances": {"max_prob_diff": -0.1}}, ["tolerances.max_prob_diff -0.1", "[0, 1]"]),
    "tolerance-string": ({"tolerances": {"min_region_dice": "high"}}, ["tolerances.min_region_dice is", "number"]),
    "precision-unknown": ({"precision": "int4"}, ['precision "int4"', "'fp32', 'fp16', 'int8'"]),
    "axis-order-list": ({"axis_order": ["x", "y", "z"]}, ["axis_order is", "expected a string"]),
    "input-name-empty": ({"input_name": ""}, ["input_name is empty"]),
    "provenance-list": ({"provenance": [1]}, ["provenance is [1]", "JSON object"]),
    "name-missing": ({"name": None}, ["name is null", "expected a string"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_card_is_an_artifact_error_naming_field_value_and_expectation(tmp_path, case):
    change, words = MALFORMED[case]
    path = write_model(tmp_path / f"{case}.onnx", card_dict(**change))
    assert_refused(path, "invalid model card: ", words)


def assert_refused(path, prefix: str, words) -> None:
    """load_artifact raises an ArtifactError naming the file, with ``prefix`` and every word."""
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {prefix}")
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", r"must be a JSON object, not \[1, 2\]"),
    ('"card"', "must be a JSON object"),
    (json.dumps({k: v for k, v in card_dict().items() if k != "preset"}), "lacks 'preset'"),
])
def test_card_that_is_not_an_object_or_lacks_a_field(tmp_path, text, words):
    with pytest.raises(ArtifactError, match=words):
        load_artifact(write_model(tmp_path / "m.onnx", text))


@pytest.mark.parametrize("change", [{"schema": "2"}, {"size_divisor": 0}, {"thresholds": "0.5"}])
def test_cli_reports_a_model_error_not_an_internal_error(tmp_path, change):
    path = write_model(tmp_path / "m.onnx", card_dict(**change))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2, result.output
    assert "model error" in result.stderr and "internal error" not in result.stderr
    assert str(path) in result.stderr.replace("\n", "")


def test_tensorrt_sidecar_cards_are_type_checked(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"opaque engine bytes")
    for change, word in (({"schema": "2"}, 'schema is "2"'), ({"size_divisor": 0}, "size_divisor 0"),
                         ({"activation": "relu"}, 'activation "relu"')):
        sidecar_path(plan).write_text(json.dumps({"card": card_dict(**change), "tensorrt": {"version": "10.3"}}))
        with pytest.raises(ArtifactError, match=word) as info:
            load_artifact(plan)
        assert str(sidecar_path(plan)) in str(info.value)
    sidecar_path(plan).write_text(json.dumps({"card": card_dict(), "tensorrt": {"version": "10.3"}}))
    assert load_artifact(plan).kind == "tensorrt"


# ------------------------------------------------------------------------------- card vs graph

GRAPH_MISMATCH = {
    "input-name": (dict(inputs=(("input", GOOD_IN),)),
                   ["input_name 'image' is not a graph input", "graph inputs: ['input']"]),
    "output-name": (dict(outputs=(("output", GOOD_OUT),)),
                    ["output_name 'logits' is not a graph output", "graph outputs: ['output']"]),
    "in-channels": (dict(inputs=(("image", [N, 4, X, Y, Z]),)),
                    ["mask_channel 'nvidia' gives 5 input channels", "graph input 'image' has 4 (dim 1)"]),
    "out-channels": (dict(outputs=(("logits", [N, 4, X, Y, Z]),)),
                     ["regions ['WT', 'TC', 'ET'] gives 3 output channels", "graph output 'logits' has 4 (dim 1)"]),
    "in-rank-4": (dict(inputs=(("image", [N, 5, X, Y]),)), ["graph input 'image' has rank 4 (expected 5"]),
    "out-rank-6": (dict(outputs=(("logits", [N, 3, X, Y, Z, 1]),)), ["graph output 'logits' has rank 6"]),
    "float16-io": (dict(elem=TensorProto.FLOAT16), ["graph input 'image' is float16", "expected float32"]),
}


@pytest.mark.parametrize("case", sorted(GRAPH_MISMATCH))
def test_card_that_does_not_fit_its_graph_is_an_artifact_error(tmp_path, case):
    graph, words = GRAPH_MISMATCH[case]
    path = write_model(tmp_path / f"{case}.onnx", card_dict(), **graph)
    assert_refused(path, "model card does not fit its graph: ", words)


def test_mask_channel_none_expects_four_input_channels(tmp_path):
    path = write_model(tmp_path / "m.onnx", card_dict(mask_channel="none"))
    with pytest.raises(ArtifactError, match="gives 4 input channels but graph input 'image' has 5"):
        load_artifact(path)
    four = write_model(tmp_path / "four.onnx", card_dict(mask_channel="none"), inputs=(("image", [N, 4, X, Y, Z]),))
    assert load_artifact(four).card.in_channels == 4


@pytest.mark.parametrize("in_shape,out_shape", [
    ([N, "c", X, Y, Z], [N, "k", X, Y, Z]),      # symbolic channels: not checked
    ([None] * 5, [None] * 5),                    # unknown dims
    (None, None),                                # no shape declared at all
    ([1, 5, 32, 32, 32], [1, 3, 32, 32, 32]),    # fully fixed
])
def test_graphs_that_leave_dims_open_are_accepted(tmp_path, in_shape, out_shape):
    path = write_model(tmp_path / "m.onnx", card_dict(), inputs=(("image", in_shape),),
                       outputs=(("logits", out_shape),))
    assert load_artifact(path).card.name == "tiny"


def test_a_valid_conv_model_segments_with_the_card_it_carries(tmp_path):
    """The Conv graph passes the checks and runs end to end through the runtime."""
    from seg_edge.runtime.io import Case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    path = write_model(tmp_path / "conv.onnx", card_dict(), conv=True)
    images = np.zeros((4, 20, 18, 12), dtype=np.float32)
    images[:, 4:16, 3:15, 2:10] = np.random.default_rng(1).uniform(1, 100, (4, 12, 12, 8))
    case = Case("c", images, np.eye(4), None, {}, [])
    with Segmenter.open(path, options=SegmenterOptions(et_rule=False)) as seg:
        result = seg.predict(case)
    assert result.labels.shape == (20, 18, 12) and result.labels.dtype == np.uint8


# ---------------------------------------------------------------------- the runtime reads the card

class _NoSession:
    def run(self, batch):  # pragma: no cover - never called here
        raise AssertionError

    def close(self) -> None:
        pass


def test_segmenter_applies_the_cards_activation_from_its_table(monkeypatch):
    from seg_edge.runtime import segmenter as seg_module
    from seg_edge.runtime.preprocess import Inverse

    card = ModelCard(name="t", preset="edge", activation="half", thresholds=(0.25, 0.25, 0.25))
    artifact = art.Artifact(art.Path("m.onnx"), card, "onnx")
    with pytest.raises(ArtifactError, match="activation 'half' is not implemented.*'sigmoid'"):
        seg_module.Segmenter(artifact, _NoSession())
    monkeypatch.setitem(seg_module.ACTIVATION_FUNCTIONS, "half", lambda x: np.asarray(x, np.float32) * 0.5)
    seg = seg_module.Segmenter(artifact, _NoSession(), seg_module.SegmenterOptions(et_rule=False))
    logits = np.zeros((3, 4, 4, 4), dtype=np.float32)
    logits[0, :2] = 0.6  # 'half' makes 0.3 > 0.25 (WT); sigmoid would make every voxel > 0.25
    inverse = Inverse((4, 4, 4), (slice(0, 4),) * 3, (4, 4, 4), "xyz")
    from seg_edge.runtime.io import Case

    result = seg.finish(Case("c", np.zeros((4, 4, 4, 4), np.float32), np.eye(4), None, {}, []), logits, inverse)
    assert int((result.labels > 0).sum()) == 2 * 4 * 4
