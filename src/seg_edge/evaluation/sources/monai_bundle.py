"""A MONAI bundle's own inference on a case, for parity: ``--reference monai-bundle:BUNDLE_DIR``.

The bundle is read with ``monai.bundle.ConfigParser`` (``importers.monai_bundle.open_bundle``); its
own instantiated ``preprocessing``, network (``models/model.pt`` loaded), ``inferer`` and
``postprocessing`` run on the case as MONAI's ``SupervisedEvaluator`` drives them: the case's
files (in the bundle's channel order) through the preprocessing, collated into a batch, the
inferer with the network, decollated, then each postprocessing transform in turn. SaveImaged is
not run (it writes the array it is given; nothing here needs the file). Probabilities are the
same objects' output without the transforms that discretise (AsDiscreted, Lambdad): the
activation, and Invertd where the bundle has one, so they lie on the case's grid.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import InputError
from seg_edge.evaluation.sources import SourceResult
from seg_edge.importers.monai_bundle import open_bundle
from seg_edge.importers.monai_bundle_transforms import monai_name
from seg_edge.runtime.io import find_modalities
from seg_edge.runtime.postprocess import label_values, to_labels
from seg_edge.runtime.regions import et_label

DISCRETE = ("AsDiscreted", "Lambdad", "SaveImaged")


class BundleSource:
    """The bundle's inference config run through ``monai.bundle`` on BraTS case folders."""

    def __init__(self, bundle_dir: Path, card: ModelCard, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.bundle = open_bundle(Path(bundle_dir))
        self.card = card
        own = self.bundle.card
        if set(own.outputs.channels) != set(card.outputs.channels) or own.outputs.kind != card.outputs.kind:
            raise InputError(f"{bundle_dir}: the bundle's outputs are {own.outputs.kind} {list(own.outputs.channels)}, "
                             f"the model's {card.outputs.kind} {list(card.outputs.channels)} (expected the same)")
        self.order = [list(own.outputs.channels).index(c) for c in card.outputs.channels]

    def predict(self, case_folder: Path) -> SourceResult:
        """Labels (the card's scheme) and probabilities (the card's channel order) on the case's grid."""
        b = self.bundle
        files = find_modalities(Path(case_folder), b.card.modalities)
        start = time.perf_counter()
        final, probs = self._run([str(files[m]) for m in b.card.modalities])
        seconds = time.perf_counter() - start
        probabilities = np.asarray(probs, dtype=np.float32)[self.order]
        labels = self._labels(np.asarray(final))
        first: nib.Nifti1Image = nib.load(str(files[b.card.modalities[0]]))  # type: ignore[assignment]
        shape = tuple(first.shape[:3])
        if labels.shape != shape or probabilities.shape[1:] != shape:
            raise InputError(f"{case_folder}: the bundle's output has shape {list(labels.shape)} (expected the case's "
                             f"{list(shape)}: its postprocessing does not bring the prediction back to the input grid)")
        return SourceResult(labels=labels, probabilities=probabilities, seconds=seconds)

    def _run(self, files: list[str]):
        """The bundle's objects on one case, as SupervisedEvaluator runs them: (final output, probabilities)."""
        import torch
        from monai.data import decollate_batch, list_data_collate
        from monai.transforms import apply_transform

        b = self.bundle
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Invertd's note that LoadImaged has nothing to invert
            batch = list_data_collate([b.preprocessing({b.image_key: files})])
            pred = b.inferer(batch[b.image_key], b.network)
            item: Any = {**decollate_batch(batch, detach=True)[0],
                         **decollate_batch({b.pred_key: pred}, detach=True)[0]}
            steps = [t for t in b.postprocessing.transforms if monai_name(t) != "SaveImaged"]
            probs: Any = copy.deepcopy(item)
            for t in steps:
                item = apply_transform(t, item)
            for t in (t for t in steps if monai_name(t) not in DISCRETE):
                probs = apply_transform(t, probs)
        return item[b.pred_key].detach().cpu(), probs[b.pred_key].detach().cpu()

    def _labels(self, final: np.ndarray) -> np.ndarray:
        """The bundle's final output as BraTS labels in the card's scheme."""
        b, et = self.bundle, et_label(self.card.label_scheme)
        if b.labels_from == "function":  # the bundle's own label values, ET as its scheme writes it
            labels = final.reshape(final.shape[-3:]).astype(np.uint8)
            labels[labels == et_label(b.card.label_scheme)] = et
            return labels
        if b.labels_from == "argmax":  # class indices → the BraTS label each class names
            lut = np.array([label_values(et)[c] for c in b.card.outputs.channels], dtype=np.uint8)
            return lut[final.reshape(final.shape[-3:]).astype(np.intp)]
        # region masks (no label conversion in the bundle): labels by the card's rule
        return to_labels(final[self.order].astype(np.float32), self.card.outputs, et)
