"""The seed's Keras 2D U-Net run the way its tutorial runs it, for parity: ``--reference MODEL.keras``.

The tutorial (BraTS, FLAIR + T1ce, 2D slices) predicts a case like this, and so does this source,
with Keras' own functions and no seg-edge runtime code: each volume divided by its maximum; slices
``VOLUME_START_AT`` .. ``VOLUME_START_AT + VOLUME_SLICES - 1`` of the last array axis, each resized
to the model's input size with Keras' bilinear resize (half-pixel centres, no antialiasing; the
tutorial's ``cv2.resize`` default), channels last; ``model.predict``; the arg-max class at that
size; the class map resized back to the slice with Keras' nearest resize (voxel centres aligned);
every other slice background. Probabilities are the model's own softmax, resized back with the same
nearest rule, and 0 where the tutorial predicts nothing.

The model file is read with ``keras.saving.load_model(safe_mode=True)``: no Lambda layer's code is
deserialised. Keras runs on the backend ``KERAS_BACKEND`` names; seg-edge's extras install the
torch backend, so it is the default here (Keras' own default, TensorFlow, is not installed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import cast

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import InputError
from seg_edge.evaluation.sources import SourceResult
from seg_edge.runtime.io import find_modalities
from seg_edge.runtime.postprocess import label_values
from seg_edge.runtime.regions import et_label

TUTORIAL_MODALITIES = ("flair", "t1ce")  # the tutorial's input channels, in its order
VOLUME_START_AT = 22  # the first slice it predicts
VOLUME_SLICES = 100  # how many slices it predicts


def import_keras():
    """The ``keras`` module on the torch backend unless ``KERAS_BACKEND`` says otherwise; InputError naming
    the extra when Keras is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise InputError("--reference MODEL.keras needs Keras 3 (pip install keras; a clone: "
                         "pip install -e '.[dev]')") from exc
    return keras


class KerasSource:
    """A saved Keras model (``.keras``) predicting BraTS case folders as the seed's tutorial does."""

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: Keras model not found")
        keras = import_keras()
        if threads and keras.backend.backend() == "torch":
            import torch

            torch.set_num_threads(threads)
        try:
            self.model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a loadable Keras 3 model ({str(exc).splitlines()[0][:200]})") from exc
        self.keras, self.card = keras, card
        shape = tuple(self.model.input_shape)
        if len(shape) != 4 or shape[-1] != len(TUTORIAL_MODALITIES):
            raise InputError(f"{path}: model input shape {list(shape)} (expected [batch, height, width, "
                             f"{len(TUTORIAL_MODALITIES)}]: the tutorial's channels-last FLAIR + T1ce slices)")
        self.size = (int(shape[1]), int(shape[2]))
        if card.modalities != TUTORIAL_MODALITIES or card.outputs.kind != "softmax":
            raise InputError(f"{path}: the tutorial's model reads {list(TUTORIAL_MODALITIES)} and gives softmax "
                             f"classes; the card says {list(card.modalities)} and {card.outputs.kind}")
        values = label_values(et_label(card.label_scheme))
        self.lut = np.array([values[name] for name in card.outputs.channels], dtype=np.uint8)

    def predict(self, case_folder: Path) -> SourceResult:
        """Labels (the card's scheme) and probabilities (the card's class order) on the case's grid."""
        import nibabel as nib

        files = find_modalities(Path(case_folder), TUTORIAL_MODALITIES)
        images = [cast(nib.Nifti1Image, nib.load(str(files[m]))) for m in TUTORIAL_MODALITIES]
        volumes = [image.get_fdata(dtype=np.float32) for image in images]
        shape = volumes[0].shape[:3]
        stop = VOLUME_START_AT + VOLUME_SLICES
        if shape[2] < stop:
            raise InputError(f"{files['flair']}: {shape[2]} slices (the tutorial predicts slices {VOLUME_START_AT}.."
                             f"{stop - 1})")
        start = time.perf_counter()
        scaled = [v / v.max() for v in volumes]  # each volume divided by its maximum
        # (slices, X, Y, channels): the tutorial's X[j, :, :, c] = resize(volume_c[:, :, j + VOLUME_START_AT])
        x = np.stack([v[:, :, VOLUME_START_AT:stop] for v in scaled], axis=-1).transpose(2, 0, 1, 3)
        x = self._resize(x, self.size, "bilinear")
        probs = np.asarray(self.model.predict(x, verbose=0), dtype=np.float32)  # (slices, h, w, K)
        classes = np.argmax(probs, axis=-1).astype(np.float32)[..., None]
        classes = np.rint(self._resize(classes, shape[:2], "nearest")[..., 0]).astype(np.intp)
        probs = self._resize(probs, shape[:2], "nearest")
        seconds = time.perf_counter() - start
        labels = np.zeros(shape, dtype=np.uint8)
        labels[:, :, VOLUME_START_AT:stop] = self.lut[classes].transpose(1, 2, 0)
        probabilities = np.zeros((len(self.lut),) + tuple(shape), dtype=np.float32)
        probabilities[:, :, :, VOLUME_START_AT:stop] = probs.transpose(3, 1, 2, 0)
        return SourceResult(labels=labels, probabilities=probabilities, seconds=seconds)

    def _resize(self, images: np.ndarray, size: tuple[int, ...], interpolation: str) -> np.ndarray:
        """Keras' own image resize of (N, H, W, C) float32 images, channels last."""
        out = self.keras.ops.image.resize(images, tuple(size), interpolation=interpolation, antialias=False,
                                          data_format="channels_last")
        return np.asarray(self.keras.ops.convert_to_numpy(out), dtype=np.float32)
