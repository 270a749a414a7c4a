"""Model cards checked at load: field types and ranges, runtime-implemented values, and the ONNX graph.

Every malformed card must be an ArtifactError (exit 2, "model error") naming the file, the field
path (``inference.size_divisor``, ``inputs.channels[0].normalization``), the value found and the
value expected — never a TypeError, a ZeroDivisionError or an ORT trace. Schema-1 (flat) cards
are migrated to schema 2 on load and refused the same way when a field is wrong. The graphs
are tiny Identity/Conv models built with ``onnx.helper``.
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from seg_edge import artifact as art
from seg_edge import card as card_module
from seg_edge import onnxproto as walker
from seg_edge.artifact import load_artifact, sidecar_path
from seg_edge.card import CARD_KEY, Inference, ModelCard, Outputs
from seg_edge.cli.app import app
from seg_edge.errors import ArtifactError
from seg_edge.onnxproto import read_onnx_header

N, X, Y, Z = "batch", "x", "y", "z"
GOOD_IN = [N, 5, X, Y, Z]
GOOD_OUT = [N, 3, X, Y, Z]
DROP = object()  # set_path value: remove the key
SLICE_2D = {"axis": 2, "size": [32, 32], "interpolation": "linear"}


def _steps(path: str) -> list:
    """``inputs.channels[0].name`` → ['inputs', 'channels', 0, 'name']."""
    return [int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", path)]


def set_path(raw: dict, path: str, value) -> dict:
    """``raw`` with the field at ``path`` set to ``value`` (or removed: DROP); ``raw`` is changed."""
    *parents, last = _steps(path)
    node = raw
    for step in parents:
        node = node[step]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    return raw


def card_dict(**changes) -> dict:
    """A complete schema-2 card as stored (every field written), with dotted-path ``changes``.

    Keyword names use ``__`` for ``.`` (``inference__size_divisor=0``); ``changes`` may also be
    passed as one dict of real paths: ``card_dict(**{"inputs.channels[0].name": "t1c"})``.
    """
    raw = json.loads(ModelCard(name="tiny", preset="edge", inference=Inference(patch_size=(32, 32, 32))).to_json())
    for path, value in changes.items():
        set_path(raw, path.replace("__", "."), value)
    return raw


def schema1_dict(**changes) -> dict:
    """A flat schema-1 card as seg-edge 0.1 wrote them (the shipped model still carries one)."""
    raw = {"name": "tiny", "preset": "edge", "modalities": ["flair", "t1", "t1ce", "t2"], "mask_channel": "nvidia",
           "regions": ["WT", "TC", "ET"], "activation": "sigmoid", "thresholds": [0.5, 0.5, 0.5],
           "label_scheme": "brats2021", "patch_size": [32, 32, 32], "size_divisor": 16,
           "normalization": "zscore_nonzero", "axis_order": "xyz", "precision": "fp32", "input_name": "image",
           "output_name": "logits", "et_rule": {"enabled": True, "component_max_voxels": 8, "total_max_voxels": 73,
                                                "max_mean_prob": 0.9},
           "tolerances": {"max_prob_diff": 1e-4, "min_region_dice": 0.999}, "provenance": {}, "schema": 1}
    for key, value in changes.items():
        set_path(raw, key.replace("__", "."), value)
    return raw


def write_model(path, card: dict | str | None = None, inputs=(("image", GOOD_IN),), outputs=(("logits", GOOD_OUT),),
                elem=TensorProto.FLOAT, conv: bool = False):
    """An Identity graph (or a 1×1×1 Conv 5→3 with a weight initializer) carrying ``card``."""
    (in_name, _), (out_name, _) = inputs[0], outputs[0]
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


def assert_refused(path, prefix: str, words) -> str:
    """load_artifact raises an ArtifactError naming the file, with ``prefix`` and every word."""
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {prefix}"), message
    for word in words:
        assert word in message, (word, message)
    return message


# ----------------------------------------------------------------------------------- the reader

def test_walker_field_numbers_are_onnx_protos():
    fields = {
        (onnx.ModelProto, "graph"): walker._MODEL_GRAPH,
        (onnx.ModelProto, "metadata_props"): walker._MODEL_METADATA_PROPS,
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
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        onnx.load(str(bad))
    artifact = load_artifact(bad)
    assert artifact.inputs[0].name == "image" and artifact.outputs[0].dims == tuple(GOOD_OUT)


# ------------------------------------------------------------------------------ card field types

def test_runtime_implements_exactly_the_values_cards_may_name():
    from seg_edge.runtime.postprocess import ACTIVATIONS
    from seg_edge.runtime.preprocess import DERIVED, NORMALIZERS
    from seg_edge.runtime.regions import LABEL_SCHEMES

    assert tuple(ACTIVATIONS) == card_module.KINDS
    assert tuple(NORMALIZERS) == card_module.NORMALIZATIONS
    assert tuple(DERIVED) == card_module.DERIVED
    assert set(LABEL_SCHEMES) == set(card_module.LABEL_SCHEMES)


def _leaves(value, path: str = ""):
    """(path, value) of every field of a stored card, lists of scalars counting as one field."""
    if isinstance(value, dict) and path not in ("provenance", "outputs.source_labels"):
        for key, sub in value.items():
            yield from _leaves(sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        for i, sub in enumerate(value):
            yield from _leaves(sub, f"{path}[{i}]")
    else:
        yield path, value


def _wrong_type(value):
    """A JSON value of another type than ``value``'s (bool is not a number, a number not a bool)."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return "7"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return "[]"
    return [] if isinstance(value, dict) or value is None else None


def test_every_field_of_the_card_is_type_checked(tmp_path):
    """Each field of a full card, in turn given a value of the wrong JSON type, is refused by its path."""
    full = card_dict(**{"outputs.source_labels": {"1": "ED"}, "inputs.spacing": [1.0, 1.0, 1.0],
                        "inputs.orientation": "RAS"})
    leaves = list(_leaves(full))
    assert {"inputs.channels[4].derived", "inputs.slice", "inference.et_rule.enabled", "outputs.order[2]",
            "tolerances.min_region_dice", "schema"} <= {p for p, _ in leaves}
    for path, value in leaves:
        if path == "schema":
            continue  # the schema number decides how the rest is read: its own tests below
        bad = _wrong_type(value)
        raw = set_path(copy.deepcopy(full), path, bad)
        with pytest.raises(ArtifactError) as info:
            ModelCard.from_json(json.dumps(raw), "m.onnx")
        message = str(info.value)
        assert message.startswith("m.onnx: invalid model card: "), message
        assert f"{path} is {json.dumps(bad)} (expected " in message, (path, message)


# field path → (value, words the message must hold)
MALFORMED = {
    "schema-as-string": ({"schema": "2"}, ['schema is "2"', "expected an integer 1..2"]),
    "schema-zero": ({"schema": 0}, ["schema is 0", "expected an integer 1..2"]),
    "schema-bool": ({"schema": True}, ["schema is true", "expected an integer"]),
    "size-divisor-zero": ({"inference.size_divisor": 0}, ["inference.size_divisor 0", "expected an integer >= 1"]),
    "size-divisor-bool": ({"inference.size_divisor": True}, ["inference.size_divisor is true", "expected an integer"]),
    "patch-negative": ({"inference.patch_size": [-32, 32, 32]}, ["inference.patch_size [-32, 32, 32]", "sizes >= 1"]),
    "patch-not-divisible": ({"inference.patch_size": [32, 32, 40]},
                            ["inference.patch_size [32, 32, 40]", "multiple of size_divisor 16"]),
    "patch-two-sizes": ({"inference.patch_size": [32, 32]}, ["inference.patch_size [32, 32]", "expected 3 sizes"]),
    "patch-floats": ({"inference.patch_size": [32.0, 32, 32]}, ["inference.patch_size[0] is 32.0",
                                                                "expected an integer"]),
    "overlap-one": ({"inference.overlap": 1}, ["inference.overlap 1.0", "expected 0 <= overlap < 1"]),
    "blend-unknown": ({"inference.blend": "median"},
                      ['inference.blend "median"', "['gaussian', 'constant', 'nnunet_gaussian']"]),
    "tta-axis-3": ({"inference.tta_axes": [0, 3]}, ["inference.tta_axes [0, 3]", "network axes in 0..2"]),
    "tta-axis-twice": ({"inference.tta_axes": [1, 1]}, ["inference.tta_axes [1, 1]", "distinct"]),
    "ensemble-zero": ({"inference.ensemble": 0}, ["inference.ensemble 0", "expected an integer >= 1"]),
    "inference-unknown-field": ({"inference.window": 64}, ["inference has unknown fields ['window']",
                                                          "expected only ["]),
    "et-rule-string-int": ({"inference.et_rule.component_max_voxels": "8"},
                           ['inference.et_rule.component_max_voxels is "8"', "expected an integer"]),
    "et-rule-negative": ({"inference.et_rule.total_max_voxels": -1},
                         ["inference.et_rule.total_max_voxels -1", ">= 0"]),
    "et-rule-enabled-int": ({"inference.et_rule.enabled": 1}, ["inference.et_rule.enabled is 1", "true or false"]),
    "et-rule-unknown-key": ({"inference.et_rule.size": 3}, ["inference.et_rule has unknown fields ['size']"]),
    "et-rule-not-object": ({"inference.et_rule": "on"}, ['inference.et_rule is "on"', "JSON object"]),
    "et-rule-prob-nan": ({"inference.et_rule.max_mean_prob": math.nan},
                         ["inference.et_rule.max_mean_prob nan", "[0, 1]"]),
    "et-rule-without-et-output": ({"outputs.channels": ["WT", "TC"], "outputs.thresholds": [0.5, 0.5],
                                   "outputs.order": [["WT", "ED"], ["TC", "NCR"]]},
                                  ["inference.et_rule is enabled but no output channel is ET", "enabled: false"]),
    "thresholds-string": ({"outputs.thresholds": "0.5"}, ['outputs.thresholds is "0.5"', "expected a list"]),
    "thresholds-strings": ({"outputs.thresholds": ["0.5", "0.5", "0.5"]},
                           ['outputs.thresholds[0] is "0.5"', "expected a number"]),
    "thresholds-out-of-range": ({"outputs.thresholds": [0.5, 0.0, 1.5]},
                                ["outputs.thresholds [0.5, 0.0, 1.5]", "each in (0, 1)"]),
    "thresholds-too-few": ({"outputs.thresholds": [0.5]}, ["outputs.thresholds [0.5]", "one per channel"]),
    "kind-unknown": ({"outputs.kind": "relu"}, ['outputs.kind "relu"', "expected one of ['sigmoid', 'softmax']"]),
    "rule-unknown": ({"outputs.rule": "max"}, ['outputs.rule "max"', "['nested', 'sequential']"]),
    "region-unknown": ({"outputs.channels": ["WT", "TC", "NET"]},
                       ["outputs.channels ['WT', 'TC', 'NET']", "distinct names from ['WT', 'TC', 'ET']"]),
    "regions-repeated": ({"outputs.channels": ["WT", "WT", "ET"]}, ["outputs.channels ['WT', 'WT', 'ET']",
                                                                   "distinct"]),
    "softmax-classes-repeated": ({"outputs.kind": "softmax", "outputs.channels": ["background", "ED", "ED", "ET"]},
                                 ["outputs.channels ['background', 'ED', 'ED', 'ET']",
                                  "distinct names from ['background', 'NCR', 'ED', 'ET']"]),
    "order-region-not-an-output": ({"outputs.order": [["WT", "ED"], ["XX", "NCR"]]},
                                   ["outputs.order[1] ['XX', 'NCR']", "region of outputs.channels"]),
    "order-label-unknown": ({"outputs.order[0]": ["WT", "edema"]}, ["outputs.order[0] ['WT', 'edema']",
                                                                   "['NCR', 'ED', 'ET']"]),
    "order-empty": ({"outputs.order": []}, ["outputs.order is empty"]),
    "source-label-unknown": ({"outputs.source_labels": {"1": "edema"}},
                             ['outputs.source_labels["1"] "edema"', "expected one of ['background'"]),
    "output-tensor-empty": ({"outputs.tensor": ""}, ["outputs.tensor is empty"]),
    "outputs-not-object": ({"outputs": "sigmoid"}, ['outputs is "sigmoid"', "expected a JSON object"]),
    "normalization-unknown": ({"inputs.channels[0].normalization": "minmax"},
                              ['inputs.channels[0].normalization "minmax"',
                               "expected one of ['zscore_nonzero', 'zscore_mask', 'zscore', 'max', 'none']"]),
    "normalization-number": ({"inputs.channels[0].normalization": 3},
                             ["inputs.channels[0].normalization is 3", "expected a string"]),
    "modality-unknown": ({"inputs.channels[2].name": "t1c"},
                         ['inputs.channels[2].name "t1c"', "expected one of ['flair', 't1', 't1ce', 't2']"]),
    "modality-repeated": ({"inputs.channels[1].name": "flair"},
                          ["inputs.channels ['flair', 'flair', 't1ce', 't2', 'mask']", "distinct channels"]),
    "derived-unknown": ({"inputs.channels[4].derived": "brain_mask"},
                        ['inputs.channels[4].derived "brain_mask"', "expected one of ['nvidia_mask']"]),
    "channels-string": ({"inputs.channels": "flair,t1,t1ce,t2"},
                        ['inputs.channels is "flair,t1,t1ce,t2"', "expected a list"]),
    "channels-only-derived": ({"inputs.channels": [{"name": "mask", "normalization": "none",
                                                    "derived": "nvidia_mask"}]},
                              ["inputs.channels has no modality"]),
    "channels-missing": ({"inputs.channels": DROP}, ["lacks 'inputs.channels'"]),
    "channel-unknown-field": ({"inputs.channels[0].scale": 2}, ["inputs.channels[0] has unknown fields ['scale']"]),
    "crop-unknown": ({"inputs.crop": "brain"}, ['inputs.crop "brain"', "expected one of ['nonzero', 'none']"]),
    "axes-not-permutation": ({"inputs.axes": [0, 0, 2]}, ["inputs.axes [0, 0, 2]", "permutation of [0, 1, 2]"]),
    "axes-string": ({"inputs.axes": "zyx"}, ['inputs.axes is "zyx"', "expected a list"]),
    "spatial-dims-4": ({"inputs.spatial_dims": 4}, ["inputs.spatial_dims 4", "expected one of [2, 3]"]),
    "2d-without-slice": ({"inputs.spatial_dims": 2, "inference.patch_size": [32, 32]},
                         ["inputs.slice is null", "for a 2D model"]),
    "2d-slice-one-size": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "size": [32]},
                           "inference.patch_size": [32, 32]}, ["inputs.slice.size [32]", "2 sizes >= 1"]),
    "2d-slice-interpolation": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "interpolation": "cubic"},
                                "inference.patch_size": [32, 32]},
                               ['inputs.slice.interpolation "cubic"', "['linear', 'nearest']"]),
    "2d-tta-axis-2": ({"inputs.spatial_dims": 2, "inputs.slice": SLICE_2D, "inference.patch_size": [32, 32],
                       "inference.tta_axes": [2]}, ["inference.tta_axes [2]", "network axes in 0..1"]),
    "3d-with-slice": ({"inputs.slice": SLICE_2D}, ["inputs.slice is set for a 3D model", "expected null"]),
    "2d-labels-back-linear": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "back": "labels",
                                                                          "back_interpolation": "linear"},
                               "inference.patch_size": [32, 32]},
                              ['inputs.slice.back_interpolation "linear" with back "labels"', 'expected "nearest"']),
    "2d-back-unknown": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "back": "probabilities"},
                         "inference.patch_size": [32, 32]},
                        ['inputs.slice.back "probabilities"', "['logits', 'labels']"]),
    "2d-range-reversed": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "range": [122, 22]},
                           "inference.patch_size": [32, 32]},
                          ["inputs.slice.range [122, 22]", "0 <= start < stop"]),
    "2d-range-negative": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "range": [-1, 22]},
                           "inference.patch_size": [32, 32]}, ["inputs.slice.range [-1, 22]", "0 <= start < stop"]),
    "2d-range-one-number": ({"inputs.spatial_dims": 2, "inputs.slice": {**SLICE_2D, "range": [22]},
                             "inference.patch_size": [32, 32]}, ["inputs.slice.range [22]", "[start, stop]"]),
    "input-layout-unknown": ({"inputs.layout": "nhwc"},
                             ['inputs.layout "nhwc"', "expected one of ['channels_first', 'channels_last']"]),
    "output-layout-unknown": ({"outputs.layout": "NCHW"}, ['outputs.layout "NCHW"', "'channels_last'"]),
    "input-tensor-empty": ({"inputs.tensor": ""}, ["inputs.tensor is empty"]),
    "tolerance-negative": ({"tolerances.max_prob_diff": -0.1}, ["tolerances.max_prob_diff -0.1", "[0, 1]"]),
    "tolerance-string": ({"tolerances.min_region_dice": "high"}, ["tolerances.min_region_dice is", "number"]),
    "precision-unknown": ({"precision": "int4"}, ['precision "int4"', "'fp32', 'fp16', 'int8'"]),
    "label-scheme-unknown": ({"label_scheme": "brats2019"}, ['label_scheme "brats2019"', "'brats2021'"]),
    "provenance-list": ({"provenance": [1]}, ["provenance is [1]", "JSON object"]),
    "name-null": ({"name": None}, ["name is null", "expected a string"]),
    "name-empty": ({"name": ""}, ["name is empty"]),
    "preset-missing": ({"preset": DROP}, ["lacks 'preset'"]),
    "unknown-field": ({"surprise": 1}, ["has unknown fields ['surprise']"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_card_is_an_artifact_error_naming_field_value_and_expectation(tmp_path, case):
    change, words = MALFORMED[case]
    path = write_model(tmp_path / f"{case}.onnx", card_dict(**change))
    assert_refused(path, "invalid model card: ", words)


@pytest.mark.parametrize("schema", [3, 99])
def test_a_newer_schema_asks_for_an_upgrade(tmp_path, schema):
    path = write_model(tmp_path / "new.onnx", card_dict(schema=schema))
    assert_refused(path, f"model card schema {schema} is newer than 2", ["upgrade seg-edge"])


# schema-1 (flat) field → (value, words); refused through the migration to schema 2
MALFORMED_SCHEMA1 = {
    "axis-order-list": ({"axis_order": ["x", "y", "z"]}, ['axis_order is ["x", "y", "z"]', "expected a string"]),
    "axis-order-unknown": ({"axis_order": "xzy"}, ['axis_order "xzy"', "'xyz' or 'zyx'"]),
    "mask-channel-half": ({"mask_channel": "half"}, ['mask_channel "half"', "'nvidia' or 'none'"]),
    "activation-half": ({"activation": "half"}, ['activation "half"', "'sigmoid'"]),
    "activation-softmax": ({"activation": "softmax"}, ['activation "softmax"', "'sigmoid'"]),
    "modalities-number": ({"modalities": 4}, ["modalities is 4", "expected a list"]),
    "unknown-field": ({"surprise": 1}, ["unknown schema-1 fields ['surprise']"]),
    # checked once migrated: the message names the schema-2 field the flat one became
    "size-divisor-zero": ({"size_divisor": 0}, ["inference.size_divisor 0", "expected an integer >= 1"]),
    "patch-not-divisible": ({"patch_size": [32, 32, 40]}, ["inference.patch_size [32, 32, 40]", "multiple"]),
    "thresholds-string": ({"thresholds": "0.5"}, ['outputs.thresholds is "0.5"', "expected a list"]),
    "normalization-unknown": ({"normalization": "minmax"}, ['inputs.channels[0].normalization "minmax"']),
    "modality-unknown": ({"modalities": ["flair", "t1", "t1c", "t2"]}, ['inputs.channels[2].name "t1c"']),
    "et-rule-enabled-int": ({"et_rule": {"enabled": 1}}, ["inference.et_rule.enabled is 1", "true or false"]),
    "input-name-number": ({"input_name": 5}, ["inputs.tensor is 5", "expected a string"]),
    "precision-unknown": ({"precision": "int4"}, ['precision "int4"']),
}


@pytest.mark.parametrize("change,words", [
    pytest.param(*MALFORMED_SCHEMA1[name], id=name) for name in sorted(MALFORMED_SCHEMA1)])
def test_malformed_schema1_card_is_refused_too(tmp_path, change, words):
    path = write_model(tmp_path / "old.onnx", schema1_dict(**change))
    message = assert_refused(path, "invalid model card", words)
    assert "Traceback" not in message


def test_a_valid_schema1_card_loads_as_schema2(tmp_path):
    card = load_artifact(write_model(tmp_path / "old.onnx", schema1_dict())).card
    assert card.schema == 2 and card == ModelCard.from_json(json.dumps(card_dict()))
    zyx = load_artifact(write_model(tmp_path / "zyx.onnx", schema1_dict(axis_order="zyx"))).card
    assert zyx.inputs.axes == (2, 1, 0)
    four = write_model(tmp_path / "four.onnx", schema1_dict(mask_channel="none"), inputs=(("image", [N, 4, X, Y, Z]),))
    assert [c.name for c in load_artifact(four).card.inputs.channels] == ["flair", "t1", "t1ce", "t2"]


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", r"must be a JSON object, not \[1, 2\]"),
    ('"card"', "must be a JSON object"),
    ("{not json", "not valid JSON"),
    (json.dumps(set_path(card_dict(), "preset", DROP)), "lacks 'preset'"),
    (json.dumps(set_path(schema1_dict(), "name", DROP)), "lacks 'name'"),
])
def test_card_that_is_not_an_object_or_lacks_a_field(tmp_path, text, words):
    with pytest.raises(ArtifactError, match=words):
        load_artifact(write_model(tmp_path / "m.onnx", text))


@pytest.mark.parametrize("change", [{"schema": "2"}, {"inference.size_divisor": 0}, {"outputs.thresholds": "0.5"}])
def test_cli_reports_a_model_error_not_an_internal_error(tmp_path, change):
    path = write_model(tmp_path / "m.onnx", card_dict(**change))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2, result.output
    assert "model error" in result.stderr and "internal error" not in result.stderr
    assert str(path) in result.stderr.replace("\n", "")


def test_tensorrt_sidecar_cards_are_type_checked(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"opaque engine bytes")
    for card, word in ((card_dict(schema="2"), 'schema is "2"'),
                       (card_dict(**{"inference.size_divisor": 0}), "inference.size_divisor 0"),
                       (card_dict(**{"outputs.kind": "relu"}), 'outputs.kind "relu"'),
                       (schema1_dict(activation="relu"), 'activation "relu"')):
        sidecar_path(plan).write_text(json.dumps({"card": card, "tensorrt": {"version": "10.3"}}))
        with pytest.raises(ArtifactError, match=re.escape(word)) as info:
            load_artifact(plan)
        assert str(sidecar_path(plan)) in str(info.value)
    for card in (card_dict(), schema1_dict()):
        sidecar_path(plan).write_text(json.dumps({"card": card, "tensorrt": {"version": "10.3"}}))
        assert load_artifact(plan).kind == "tensorrt" and load_artifact(plan).card.schema == 2


# ------------------------------------------------------------------------------- card vs graph

CHANNELS_5 = "inputs.channels ['flair', 't1', 't1ce', 't2', 'mask']"
GRAPH_MISMATCH = {
    "input-name": (dict(inputs=(("input", GOOD_IN),)),
                   ["inputs.tensor 'image' is not a graph input", "graph inputs: ['input']"]),
    "output-name": (dict(outputs=(("output", GOOD_OUT),)),
                    ["outputs.tensor 'logits' is not a graph output", "graph outputs: ['output']"]),
    "in-channels": (dict(inputs=(("image", [N, 4, X, Y, Z]),)),
                    [f"{CHANNELS_5} gives 5 input channels", "graph input 'image' has 4 (dim 1)"]),
    "out-channels": (dict(outputs=(("logits", [N, 4, X, Y, Z]),)),
                     ["outputs.channels ['WT', 'TC', 'ET'] gives 3 output channels",
                      "graph output 'logits' has 4 (dim 1)"]),
    "in-rank-4": (dict(inputs=(("image", [N, 5, X, Y]),)),
                  ["graph input 'image' has rank 4 (expected 5: N, C and 3 spatial axes)"]),
    "out-rank-6": (dict(outputs=(("logits", [N, 3, X, Y, Z, 1]),)), ["graph output 'logits' has rank 6"]),
    "float16-io": (dict(elem=TensorProto.FLOAT16), ["graph input 'image' is float16", "expected float32",
                                                    "graph output 'logits' is float16"]),
}


@pytest.mark.parametrize("case", sorted(GRAPH_MISMATCH))
def test_card_that_does_not_fit_its_graph_is_an_artifact_error(tmp_path, case):
    graph, words = GRAPH_MISMATCH[case]
    for card in (card_dict(), schema1_dict()):
        path = write_model(tmp_path / f"{case}.onnx", card, **graph)
        assert_refused(path, "model card does not fit its graph: ", words)


def test_input_and_output_names_are_the_cards(tmp_path):
    """Tensor names other than image/logits are fine when the card names them."""
    card = card_dict(**{"inputs.tensor": "volume_in", "outputs.tensor": "probs_out"})
    path = write_model(tmp_path / "m.onnx", card, inputs=(("volume_in", GOOD_IN),), outputs=(("probs_out", GOOD_OUT),))
    loaded = load_artifact(path).card
    assert (loaded.input_name, loaded.output_name) == ("volume_in", "probs_out")
    assert_refused(write_model(tmp_path / "n.onnx", card), "model card does not fit its graph: ",
                   ["inputs.tensor 'volume_in' is not a graph input (graph inputs: ['image'])",
                    "outputs.tensor 'probs_out' is not a graph output"])


def test_a_card_without_the_mask_channel_expects_four_input_channels(tmp_path):
    four_channels = card_dict()["inputs"]["channels"][:4]
    path = write_model(tmp_path / "m.onnx", card_dict(**{"inputs.channels": four_channels}))
    with pytest.raises(ArtifactError, match=re.escape("gives 4 input channels but graph input 'image' has 5")):
        load_artifact(path)
    four = write_model(tmp_path / "four.onnx", card_dict(**{"inputs.channels": four_channels}),
                       inputs=(("image", [N, 4, X, Y, Z]),))
    assert load_artifact(four).card.in_channels == 4


def test_softmax_classes_are_the_output_channels(tmp_path):
    softmax = {"outputs.kind": "softmax", "outputs.channels": ["background", "NCR", "ED", "ET"]}
    path = write_model(tmp_path / "m.onnx", card_dict(**softmax))
    assert_refused(path, "model card does not fit its graph: ",
                   ["outputs.channels ['background', 'NCR', 'ED', 'ET'] gives 4 output channels",
                    "graph output 'logits' has 3 (dim 1)"])
    ok = write_model(tmp_path / "ok.onnx", card_dict(**softmax), outputs=(("logits", [N, 4, X, Y, Z]),))
    assert load_artifact(ok).card.out_channels == 4


def test_a_2d_card_expects_rank_4_graphs(tmp_path):
    card = card_dict(**{"inputs.spatial_dims": 2, "inputs.slice": SLICE_2D, "inference.patch_size": [32, 32]})
    assert_refused(write_model(tmp_path / "m.onnx", card), "model card does not fit its graph: ",
                   ["graph input 'image' has rank 5 (expected 4: N, C and 2 spatial axes)",
                    "graph output 'logits' has rank 5 (expected 4"])
    ok = write_model(tmp_path / "ok.onnx", card, inputs=(("image", [N, 5, X, Y]),), outputs=(("logits", [N, 3, X, Y]),))
    loaded = load_artifact(ok).card
    assert loaded.inputs.spatial_dims == 2 and loaded.inputs.slice.size == (32, 32)


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

    images = np.zeros((4, 20, 18, 12), dtype=np.float32)
    images[:, 4:16, 3:15, 2:10] = np.random.default_rng(1).uniform(1, 100, (4, 12, 12, 8))
    case = Case("c", images, np.eye(4), None, {}, [])
    labels = []
    for i, card in enumerate((card_dict(), schema1_dict())):
        path = write_model(tmp_path / f"conv{i}.onnx", card, conv=True)
        with Segmenter.open(path, options=SegmenterOptions(et_rule=False)) as seg:
            result = seg.predict(case)
        assert result.labels.shape == (20, 18, 12) and result.labels.dtype == np.uint8
        labels.append(result.labels)
    assert np.array_equal(*labels)


# ---------------------------------------------------------------------- the runtime reads the card

class _NoSession:
    def run(self, batch):  # pragma: no cover - never called here
        raise AssertionError

    def close(self) -> None:
        pass


def test_segmenter_applies_the_cards_output_kind_from_its_table(monkeypatch):
    from seg_edge.runtime import postprocess
    from seg_edge.runtime import segmenter as seg_module
    from seg_edge.runtime.io import Case
    from seg_edge.runtime.preprocess import Inverse

    # built directly, unchecked: a card naming a kind this runtime lacks is refused when the Segmenter opens
    card = ModelCard(name="t", preset="edge", outputs=Outputs(kind="half", thresholds=(0.25, 0.25, 0.25)))
    artifact = art.Artifact(art.Path("m.onnx"), card, "onnx")
    with pytest.raises(ArtifactError, match=r"outputs.kind 'half' is not implemented.*'sigmoid', 'softmax'"):
        seg_module.Segmenter(artifact, _NoSession())
    monkeypatch.setitem(postprocess.ACTIVATIONS, "half", lambda x: np.asarray(x, np.float32) * 0.5)
    seg = seg_module.Segmenter(artifact, _NoSession(), seg_module.SegmenterOptions(et_rule=False))
    logits = np.zeros((3, 4, 4, 4), dtype=np.float32)
    logits[0, :2] = 0.6  # 'half' makes 0.3 > 0.25 (WT); sigmoid would make every voxel > 0.25
    inverse = Inverse((4, 4, 4), (slice(0, 4),) * 3, (4, 4, 4))
    result = seg.finish(Case("c", np.zeros((4, 4, 4, 4), np.float32), np.eye(4), None, {}, []), logits, inverse)
    assert int((result.labels > 0).sum()) == 2 * 4 * 4


@pytest.mark.parametrize("what,channel,words", [
    ("normalization", {"name": "flair", "normalization": "minmax"}, "normalization 'minmax' is not implemented"),
    ("derived", {"name": "m", "normalization": "none", "derived": "brain"}, "derived channel 'brain' is not"),
])
def test_preprocess_refuses_channel_names_it_lacks(what, channel, words):
    """The runtime's own guard, for cards built in code (loaded cards are checked first)."""
    from seg_edge.card import Channel, Inputs
    from seg_edge.runtime.preprocess import preprocess

    channels = (Channel("t1"), Channel(**channel)) if what == "derived" else (Channel(**channel),)
    card = ModelCard(name="t", preset="edge", inputs=Inputs(channels), inference=Inference(patch_size=(16, 16, 16)))
    images = np.ones((1, 8, 8, 8), np.float32)
    with pytest.raises(ArtifactError, match=words):
        preprocess(images, card)
