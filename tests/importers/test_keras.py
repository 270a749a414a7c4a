"""The seed's Keras 2D U-Net, deployed exactly: built in Keras 3, exported by Keras to ONNX, imported with
``seg-edge import onnx`` and a card that states what the tutorial does — channels-last tensors, each volume
divided by its maximum, slices 22..121 resized linearly to 128², the arg-max taken at 128² and the labels
resized back with nearest, every other slice background. seg-edge must then label a synthetic case exactly
as the Keras model's own slice-by-slice prediction (``evaluation/sources/keras.py``, Keras' own resize and
``model.predict``), and ``seg-edge parity --reference model.keras`` must pass.

The model is tiny (3 levels, 4-16 filters), seeded and trained for a few steps on slices of another
synthetic case, its class biases then set so that it predicts every class somewhere. Keras runs on its
torch backend (CPU torch is what the dev extra installs; TensorFlow is not needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras 3 is not installed (pip install -e '.[dev]')")

from importer_fixtures import card_json  # noqa: E402
from seg_edge.artifact import file_sha256, load_artifact  # noqa: E402
from seg_edge.cli.app import app  # noqa: E402
from seg_edge.onnxproto import read_onnx_header  # noqa: E402
from seg_edge.runtime.io import load_case  # noqa: E402
from seg_edge.runtime.segmenter import Segmenter  # noqa: E402
from seg_edge.synth.writer import write_case  # noqa: E402

runner = CliRunner()
SIZE = 128
START, STOP = 22, 122  # the tutorial's VOLUME_START_AT and VOLUME_START_AT + VOLUME_SLICES


def unet2d(width: int = 4):
    """The tutorial's U-Net shape, narrowed: conv blocks, max-pooling down, up-sampling and concatenation up,
    a 1×1 convolution to 4 classes with a softmax, channels last."""
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 2), name="image")

    def block(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)

    c1 = block(inputs, width)
    c2 = block(layers.MaxPooling2D()(c1), 2 * width)
    c3 = block(layers.MaxPooling2D()(c2), 4 * width)
    u2 = block(layers.concatenate([c2, layers.UpSampling2D()(c3)]), 2 * width)
    u1 = block(layers.concatenate([c1, layers.UpSampling2D()(u2)]), width)
    outputs = layers.Conv2D(4, 1, activation="softmax")(u1)
    return keras.Model(inputs, outputs)


def training_slices(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Slices of a case as the tutorial's generator makes them: FLAIR + T1ce at 128², each volume divided by its
    maximum, labels 0, 1, 2, 3 (BraTS 4 → 3) one-hot, resized with nearest."""
    import nibabel as nib

    cid = folder.name
    vols = [nib.load(str(folder / f"{cid}_{m}.nii.gz")).get_fdata(dtype=np.float32) for m in ("flair", "t1ce")]
    seg = nib.load(str(folder / f"{cid}_seg.nii.gz")).get_fdata(dtype=np.float32)
    seg[seg == 4] = 3
    picks = range(START + 20, STOP - 20, 3)
    x = np.stack([np.stack([v[:, :, k] / v.max() for v in vols], -1) for k in picks])
    y = np.stack([seg[:, :, k] for k in picks])[..., None]
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (SIZE, SIZE), interpolation="bilinear"))
    y = keras.ops.convert_to_numpy(keras.ops.image.resize(y, (SIZE, SIZE), interpolation="nearest"))[..., 0]
    return x.astype(np.float32), keras.utils.to_categorical(y.astype(np.int64), 4)


def calibrate_classes(model, x: np.ndarray, fractions: np.ndarray) -> None:
    """Shift the final layer's class biases so that on ``x`` each class wins on its share ``fractions`` of the
    pixels: a few training steps do not yet predict the rare classes (NCR, ET), and a test that never sees
    them could not tell a wrong class order or label value from a right one."""
    log_p = np.log(np.maximum(model.predict(x, verbose=0), 1e-30)).reshape(-1, 4)
    shift = np.zeros(4)
    for _ in range(3):
        for k in (1, 2, 3):
            others = np.delete(log_p + shift, k, axis=1).max(axis=1)
            shift[k] = np.quantile(others - log_p[:, k], fractions[k])
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel, bias + shift.astype(np.float32)])


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory):
    """(model.keras, model.onnx exported by Keras, a held-out synthetic case folder)."""
    root = tmp_path_factory.mktemp("keras2d")
    train_case = write_case(root / "cases", 7, 0)
    case = write_case(root / "cases", 7, 1)
    keras.utils.set_random_seed(0)
    model = unet2d()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    x, y = training_slices(train_case)
    weights = np.array([0.2, 3.0, 1.0, 3.0], dtype=np.float32)  # the tumour classes are a few % of the pixels
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, sample_weight=(y * weights).sum(-1))
    calibrate_classes(model, x, y.reshape(-1, 4).mean(axis=0))
    model.save(root / "model.keras")
    model.export(str(root / "model.onnx"), format="onnx", verbose=False)
    return root / "model.keras", root / "model.onnx", case


def tutorial_card(path: Path, onnx_path: Path, keras_path: Path, **slice_changes) -> Path:
    """The tutorial's pipeline as a card: every field the seed needs stated, nothing left to defaults."""
    header = read_onnx_header(onnx_path)
    spec = {"axis": 2, "size": [SIZE, SIZE], "interpolation": "linear", "back": "labels",
            "back_interpolation": "nearest", "range": [START, STOP], **slice_changes}
    return card_json(
        path, schema_minor=1, name="seed-unet2d-keras", preset="keras-tutorial",
        inputs={"tensor": header.inputs[0].name, "layout": "channels_last", "crop": "none", "axes": [0, 1, 2],
                "channels": [{"name": "flair", "normalization": "max"}, {"name": "t1ce", "normalization": "max"}],
                "spatial_dims": 2, "slice": spec},
        outputs={"tensor": header.outputs[0].name, "layout": "channels_last", "kind": "softmax",
                 "channels": ["background", "NCR", "ED", "ET"], "thresholds": [], "order": [],
                 "source_labels": {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}},
        inference={"patch_size": [SIZE, SIZE], "size_divisor": 4, "et_rule": {"enabled": False}},
        provenance={"source_framework": "keras", "keras_sha256": file_sha256(keras_path)})


@pytest.fixture(scope="module")
def imported(seed_model, tmp_path_factory):
    keras_path, onnx_path, case = seed_model
    root = tmp_path_factory.mktemp("imported")
    out = root / "seed2d.onnx"
    result = runner.invoke(app, ["import", "onnx", str(onnx_path), "--card",
                                 str(tutorial_card(root / "card.json", onnx_path, keras_path)), "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed_activation"] == "Softmax"
    return out


def keras_reference(keras_path: Path, model: Path, case: Path):
    from seg_edge.evaluation.sources.keras import KerasSource

    return KerasSource(keras_path, load_artifact(model).card).predict(case)


def test_seg_edge_labels_the_case_exactly_as_the_keras_model_does(seed_model, imported):
    keras_path, _, case = seed_model
    ref = keras_reference(keras_path, imported, case)
    with Segmenter.open(imported, options=None) as seg:
        got = seg.predict(load_case(case, seg.card.modalities))
    classes = {int(v): int((ref.labels == v).sum()) for v in np.unique(ref.labels)}
    print("reference label counts", classes)
    assert set(classes) == {0, 1, 2, 4}  # the fixture predicts every class: the test can tell them apart
    assert not ref.labels[:, :, :START].any() and not ref.labels[:, :, STOP:].any()
    changed = int((got.labels != ref.labels).sum())
    print("voxels changed", changed, "of", got.labels.size)
    assert changed == 0


def test_the_old_way_back_differs(seed_model, imported, tmp_path):
    """The card before schema 2.1 could only resize logits back linearly and ran every slice: not the tutorial."""
    keras_path, onnx_path, case = seed_model
    ref = keras_reference(keras_path, imported, case)
    card = tutorial_card(tmp_path / "old.json", onnx_path, keras_path, back="logits", back_interpolation="linear",
                         range=None)
    out = tmp_path / "old.onnx"
    assert runner.invoke(app, ["import", "onnx", str(onnx_path), "--card", str(card), "--out", str(out)]).exit_code == 0
    with Segmenter.open(out) as seg:
        got = seg.predict(load_case(case, seg.card.modalities))
    agreement = float((got.labels == ref.labels).mean())
    print("agreement with logits resized back", agreement)
    assert agreement < 1.0


def test_parity_against_the_keras_model_passes(seed_model, imported):
    keras_path, _, case = seed_model
    result = runner.invoke(app, ["parity", str(imported), str(case), "--reference", str(keras_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    row = data["results"][0]
    print("parity", {k: row[k] for k in ("max_abs", "labels_changed", "label_agreement", "dice")})
    assert data["passed"] and row["labels_changed"] == 0 and row["label_agreement"] == 1.0
