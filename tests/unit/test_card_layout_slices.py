"""Schema 2.1: what the seed's Keras 2D U-Net needed the card to state, and the runtime doing it.

Channels-last graphs (the sessions move the axes), the ``max`` normalisation, a 2D model labelled at
the network's size with the labels resized back (``slice.back``), a slice range, and schema-2.0 cards
reading as 2.1 with the meaning they had.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from seg_edge.card import Channel, ETRule, Inference, Inputs, ModelCard, Outputs, SliceSpec
from seg_edge.errors import ArtifactError, InputError
from seg_edge.runtime.inference import nearest_indices, resize_plane, slicewise
from seg_edge.runtime.preprocess import max_scaled, preprocess
from seg_edge.runtime.resample import check_slice_range
from seg_edge.runtime.sessions.base import SessionBase

CLASSES = ("background", "NCR", "ED", "ET")


def tutorial_card(size=(8, 8), back="labels", back_interpolation="nearest", range_=(3, 9), crop="none",
                  layout="channels_last") -> ModelCard:
    """The Keras tutorial's pipeline, small: FLAIR + T1ce divided by their maximum, slices along Z."""
    spec = SliceSpec(axis=2, size=size, interpolation="linear", back=back, back_interpolation=back_interpolation,
                     range=range_)
    inputs = Inputs((Channel("flair", "max"), Channel("t1ce", "max")), crop=crop, spatial_dims=2, slice=spec,
                    layout=layout)
    outputs = Outputs(kind="softmax", channels=CLASSES, thresholds=(), order=(), layout=layout)
    return ModelCard("seed", "keras", inputs, outputs,
                     Inference(patch_size=size, size_divisor=4, et_rule=ETRule(enabled=False)))  # the tutorial has none


def volumes(rng, shape=(12, 10, 14)) -> np.ndarray:
    images = np.zeros((2,) + shape, dtype=np.float32)
    images[:, 2:10, 1:9, 1:13] = rng.integers(1, 3000, size=(2, 8, 8, 12))
    return images


# ------------------------------------------------------------------------------------- the card

def test_a_schema_2_0_card_reads_as_2_2_with_its_meaning():
    raw = {"schema": 2, "name": "m", "preset": "p",
           "inputs": {"channels": [{"name": "flair"}], "spatial_dims": 2,
                      "slice": {"axis": 0, "size": [32, 32], "interpolation": "nearest"}},
           "inference": {"patch_size": [32, 32]}}
    card = ModelCard.from_json(json.dumps(raw), "old.onnx")
    assert (card.schema, card.schema_minor) == (2, 2)
    # 2.0's one interpolation resized both ways, logits came back, every slice ran
    assert card.inputs.slice == SliceSpec(0, (32, 32), "nearest", "logits", "nearest", None)
    assert card.inputs.layout == card.outputs.layout == "channels_first"
    assert card.inputs.space == "atlas"  # every input was taken as BraTS-preprocessed
    again = json.loads(card.to_json())
    assert again["schema_minor"] == 2 and ModelCard.from_json(card.to_json()) == card


def test_a_2_0_card_with_2_1_fields_is_refused_and_a_newer_minor_too():
    raw = {"schema": 2, "name": "m", "preset": "p", "inputs": {"channels": [{"name": "flair"}], "spatial_dims": 2,
           "slice": {"size": [32, 32], "back": "labels"}}, "inference": {"patch_size": [32, 32]}}
    with pytest.raises(ArtifactError, match=r"old.onnx: invalid model card \(schema 2.0\): inputs.slice.back is a "
                                            r"schema-2.1 field"):
        ModelCard.from_json(json.dumps(raw), "old.onnx")
    with pytest.raises(ArtifactError, match=r"new.onnx: model card schema 2.3 is newer than 2.2; upgrade seg-edge"):
        ModelCard.from_json(json.dumps({"schema": 2, "schema_minor": 3, "name": "m", "preset": "p"}), "new.onnx")
    with pytest.raises(ArtifactError, match=r'schema_minor is "1" \(expected an integer 0..2\)'):
        ModelCard.from_json(json.dumps({"schema": 2, "schema_minor": "1", "name": "m", "preset": "p"}), "m.onnx")


def test_input_space_is_a_2_2_field_with_two_values():
    base = {"schema": 2, "name": "m", "preset": "p", "inputs": {"channels": [{"name": "flair"}]}}
    native = ModelCard.from_json(json.dumps({**base, "schema_minor": 2,
                                             "inputs": {**base["inputs"], "space": "native"}}), "n.onnx")
    assert native.inputs.space == "native" and ModelCard.from_json(native.to_json()) == native
    assert ModelCard.from_json(json.dumps({**base, "schema_minor": 1}), "m.onnx").inputs.space == "atlas"
    with pytest.raises(ArtifactError, match=r"old.onnx: invalid model card \(schema 2.1\): inputs.space is a "
                                            r"schema-2.2 field"):
        ModelCard.from_json(json.dumps({**base, "schema_minor": 1, "inputs": {**base["inputs"], "space": "atlas"}}),
                            "old.onnx")
    with pytest.raises(ArtifactError, match=r"inputs.space \"mni\""):
        ModelCard.from_json(json.dumps({**base, "schema_minor": 2, "inputs": {**base["inputs"], "space": "mni"}}),
                            "bad.onnx")


def test_the_tutorial_card_round_trips():
    card = tutorial_card()
    assert ModelCard.from_json(card.to_json(), "seed") == card


# -------------------------------------------------------------------------------- normalisation

def test_max_divides_each_channel_by_its_own_maximum_exactly(rng):
    images = volumes(rng)
    tensor, _ = preprocess(images, tutorial_card(range_=None))
    for c in range(2):  # bit for bit the tutorial's volume / volume.max() in float32
        np.testing.assert_array_equal(tensor[c], images[c] / images[c].max())
    assert np.array_equal(max_scaled(np.zeros((3, 3), np.float32)), np.zeros((3, 3)))  # no division by 0


def test_normalisation_statistics_cover_the_volume_not_only_the_slice_range(rng):
    images = volumes(rng)
    images[0, 5, 5, 11] = 9000  # the maximum lies outside slices 3..8
    tensor, inverse = preprocess(images, tutorial_card())
    assert tensor.shape == (2, 12, 10, 6) and inverse.box[2] == slice(3, 9)
    np.testing.assert_array_equal(tensor[0], images[0, :, :, 3:9] / np.float32(9000))


# ---------------------------------------------------------------------------------- resizing

def test_nearest_is_voxel_centre_aligned_as_keras_and_torch_nearest_exact():
    torch = pytest.importorskip("torch")
    for source, target in ((128, 240), (240, 128), (155, 128), (7, 3), (3, 7)):
        x = torch.arange(source, dtype=torch.float32)[None, None, :, None].expand(1, 1, source, 2)
        want = torch.nn.functional.interpolate(x, size=(target, 2), mode="nearest-exact")[0, 0, :, 0]
        np.testing.assert_array_equal(nearest_indices(source, target), want.numpy().astype(np.int64))
    labels = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    assert resize_plane(labels, (6, 8), "nearest").dtype == np.uint8  # labels stay labels


def test_linear_matches_torch_bilinear_without_align_corners(rng):
    torch = pytest.importorskip("torch")
    x = rng.uniform(0, 1, size=(2, 30, 22)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(16, 16), mode="bilinear",
                                           align_corners=False, antialias=False)[0].numpy()
    np.testing.assert_allclose(resize_plane(x, (16, 16), "linear"), want, atol=1e-6)


# ---------------------------------------------------------------------- labels at the network size

def fake_logits(batch: np.ndarray) -> np.ndarray:
    """(N, 2, h, w) → (N, 4, h, w): a smooth function of the inputs with every class winning somewhere."""
    a, b = batch[:, 0], batch[:, 1]
    return np.stack([0.5 - a, a - b, b - 0.3, 3 * a * b - 0.4], axis=1).astype(np.float32)


def test_labels_back_takes_the_argmax_at_the_network_size_then_nearest(rng):
    from seg_edge.runtime.segmenter import Segmenter

    class Fake(SessionBase):
        name = "fake"

        def _run(self, batch):
            return np.moveaxis(fake_logits(np.moveaxis(batch, -1, 1)), 1, -1)  # a channels-last graph

    card = tutorial_card()
    session = Fake(2, 4, 2, channels_last=(True, True))
    images = volumes(rng)
    tensor, inverse = preprocess(images, card)
    seg = Segmenter.__new__(Segmenter)  # the pieces finish() needs, without a model file
    seg.card, seg.et, seg.scheme = card, 4, "brats2021"
    seg.activate = lambda x: np.exp(x) / np.exp(x).sum(axis=0)
    seg.options = type("O", (), {"et_rule": True, "probabilities": True})()
    logits = slicewise(tensor, session.run, card, batch_size=4)
    assert logits.shape == (4, 8, 8, 6)  # kept at the network's 8×8 for labelling there
    case = type("C", (), {"case_id": "c", "spacing": (1.0, 1.0, 1.0), "warnings": []})()
    got = seg.finish(case, logits, inverse)
    # by hand: slices 3..8 resized to 8×8, arg-max there, class map back with floor((i + ½)·8/12), (… 8/10)
    lut = np.array([0, 1, 2, 4], dtype=np.uint8)
    rows, cols = nearest_indices(8, 12), nearest_indices(8, 10)
    want = np.zeros(images.shape[1:], dtype=np.uint8)
    for z in range(3, 9):
        plane = resize_plane(np.stack([images[c, :, :, z] / images[c].max() for c in range(2)]), (8, 8), "linear")
        classes = np.argmax(fake_logits(plane[None])[0], axis=0)
        want[:, :, z] = lut[classes[rows[:, None], cols[None, :]]]
    np.testing.assert_array_equal(got.labels, want)
    assert set(np.unique(want)) == {0, 1, 2, 4}  # every class decided somewhere
    assert not got.probabilities[:, :, :, :3].any() and not got.probabilities[:, :, :, 9:].any()
    inside = got.probabilities[:, :, :, 3:9]  # probabilities agree with the labels voxel for voxel
    np.testing.assert_array_equal(lut[np.argmax(inside, axis=0)], got.labels[:, :, 3:9])
    seg.options = type("O", (), {"et_rule": True, "probabilities": False})()  # (the card's ET rule is off)
    alone = seg.finish(case, logits, inverse)  # the probabilities are not brought back: the same labels
    assert alone.probabilities is None and np.array_equal(alone.labels, got.labels)


def test_a_range_outside_the_crop_runs_no_slice(rng):
    images = volumes(rng)  # content on slices 1..12 only
    card = tutorial_card(range_=(13, 14), crop="nonzero")
    tensor, inverse = preprocess(images, card)
    assert tensor.shape[3] == 0 and inverse.box[2].stop - inverse.box[2].start == 0
    logits = slicewise(tensor, lambda b: pytest.fail("no slice to run"), card, batch_size=2)
    assert logits.shape == (4, 8, 8, 0)


def test_an_input_shorter_than_the_slice_range_is_refused():
    card = tutorial_card(range_=(22, 122))
    check_slice_range("c_flair.nii.gz", (240, 240, 155), card)
    with pytest.raises(InputError, match=r"c_flair.nii.gz: 100 slices along array axis 2 \(model 'seed' reads "
                                         r"slices 22..121: expected at least 122\)"):
        check_slice_range("c_flair.nii.gz", (240, 240, 100), card)


# ------------------------------------------------------------------------------------- layout

def test_a_channels_last_session_takes_and_gives_channels_first():
    seen = []

    class Fake(SessionBase):
        name = "fake"

        def _run(self, batch):
            seen.append(batch.shape)
            return np.concatenate([batch, batch[..., :1]], axis=-1)  # N, H, W, 3

    batch = np.arange(2 * 2 * 4 * 5, dtype=np.float32).reshape(2, 2, 4, 5)
    out = Fake(2, 3, 2, channels_last=(True, True)).run(batch)
    assert seen == [(2, 4, 5, 2)] and out.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out[:, :2], batch)
    with pytest.raises(InputError, match=r"expected float32 \[N, 2, H, W\]"):  # callers still give N, C, H, W
        Fake(2, 3, 2, channels_last=(True, True)).run(np.zeros((1, 4, 5, 2), np.float32))


def test_a_channels_last_graph_under_a_channels_first_card_is_refused_with_the_hint(tmp_path):
    from onnx import TensorProto, helper, save

    from seg_edge.artifact import load_artifact
    from seg_edge.card import CARD_KEY

    def write(card: ModelCard):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["image"], ["logits"])], "g",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 8, 8, 2])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 8, 8, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        helper.set_model_props(model, {CARD_KEY: card.to_json()})
        path = tmp_path / f"{card.inputs.layout}.onnx"
        save(model, str(path))
        return path

    channels_first = tutorial_card(layout="channels_first")
    with pytest.raises(ArtifactError, match=r"graph input 'image' has 8 \(dim 1\) and 2 in its last dim \(a "
                                            r"channels-last graph: state inputs.layout \"channels_last\"\)"):
        load_artifact(write(channels_first))
    assert load_artifact(write(tutorial_card())).card.inputs.layout == "channels_last"
