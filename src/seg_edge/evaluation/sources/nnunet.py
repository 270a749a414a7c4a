"""nnU-Net v2's own ``nnUNetPredictor`` run on a BraTS case folder: the reference for ``--reference nnunet:FOLDER``.

The case is read the way a user's ``nnUNetv2_predict`` reads it: the plans' ``image_reader_writer``
on the modality files in nnU-Net's channel order (which is the card's). nnU-Net preprocesses,
slides its window (gaussian, ``1 - overlap`` step, mirroring as asked), resamples back and
uncrops; its arrays come back in the reader's (z, y, x) view, turned here to the case's nibabel
(x, y, z) grid. nnU-Net's label values become BraTS labels through ``card.outputs.source_labels``
and its output channels (regions: sigmoid per region; labels: softmax per class) are reordered to
``card.outputs.channels``. torch and nnunetv2 are imported when the source is opened.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from seg_edge.card import LABELS, ModelCard
from seg_edge.errors import InputError
from seg_edge.evaluation.sources import SourceResult
from seg_edge.runtime.io import find_modalities
from seg_edge.runtime.postprocess import label_values
from seg_edge.runtime.regions import et_label

DEFAULT_CHECKPOINT = "checkpoint_final.pth"
INSTALL = "pip install 'seg-edge[nnunet]'"
# BraTS labels each region holds → the region's name
REGION_NAMES = {frozenset(LABELS): "WT", frozenset({"NCR", "ET"}): "TC", frozenset({"ET"}): "ET"}


@contextlib.contextmanager
def _quiet():
    """nnU-Net prints progress and notes to stdout; a parity run's stdout is its report (``--json``)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _import_predictor(folder: Path):
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise InputError(f"{folder}: nnU-Net v2 is not installed here ({exc.name or exc}); {INSTALL}") from exc
    return nnUNetPredictor


def _available_folds(folder: Path, checkpoint: str) -> list[int | str]:
    found = []
    for sub in sorted(folder.glob("fold_*")):
        tag = sub.name[len("fold_"):]
        if (sub / checkpoint).is_file():
            found.append(int(tag) if tag.isdigit() else tag)
    return found


def check_model_folder(folder: Path, folds: list[int | str] | None, checkpoint: str) -> list[int | str]:
    """The folds to use; InputError (one line, naming ``folder``) when a file nnU-Net needs is missing."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such nnU-Net model folder")
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not an nnU-Net model folder (no {name}; expected the folder "
                             "nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION)")
    available = _available_folds(folder, checkpoint)
    if folds is None:
        if not available:
            raise InputError(f"{folder}: no fold_*/{checkpoint} in the model folder")
        return available
    missing = [f for f in folds if f not in available]
    if missing:
        raise InputError(f"{folder}: fold(s) {missing} have no {checkpoint} (folds with one: {available or 'none'})")
    return list(folds)


def _region_members(region: Any, mapping: dict[str, str], folder: Path) -> frozenset[str]:
    values = region if isinstance(region, (list, tuple)) else [region]
    try:
        return frozenset(mapping[str(int(v))] for v in values)
    except KeyError as exc:
        raise InputError(f"{folder}: the card's outputs.source_labels {mapping} lack nnU-Net label "
                         f"{exc.args[0]}") from exc


def channel_order(label_manager, card: ModelCard, folder: Path) -> list[int]:
    """For each of the card's output channels, the index of nnU-Net's output channel that holds it."""
    mapping = card.outputs.source_labels
    if label_manager.has_regions:
        names = []
        for region in label_manager.foreground_regions:
            members = _region_members(region, mapping, folder)
            names.append(REGION_NAMES.get(members, "+".join(sorted(members))))
    else:
        names = ["background" if v == 0 else mapping.get(str(v), f"label {v}") for v in label_manager.all_labels]
    missing = [c for c in card.outputs.channels if c not in names]
    if missing or len(set(names)) != len(names):
        raise InputError(f"{folder}: nnU-Net's outputs are {names} (by the card's source_labels {mapping}); "
                         f"the card's channels {list(card.outputs.channels)} cannot all be found among them")
    return [names.index(c) for c in card.outputs.channels]


def label_lut(card: ModelCard, folder: Path, n_values: int) -> np.ndarray:
    """nnU-Net label value → BraTS label value (the card's scheme)."""
    values = label_values(et_label(card.label_scheme))
    lut = np.zeros(max(n_values, 1), dtype=np.uint8)
    for key, name in card.outputs.source_labels.items():
        if int(key) < len(lut):
            lut[int(key)] = values[name]
    unmapped = [v for v in range(1, n_values) if str(v) not in card.outputs.source_labels]
    if unmapped:
        raise InputError(f"{folder}: the card's outputs.source_labels {card.outputs.source_labels} do not map "
                         f"nnU-Net label value(s) {unmapped}")
    return lut


def _reorientation(reader_name: str, affine: np.ndarray):
    """The nibabel orientation that turns the reader's (x, y, z) view back into the file's, or None."""
    if reader_name != "NibabelIOWithReorient":
        return None
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))


def to_case_grid(volume: np.ndarray, ornt) -> np.ndarray:
    """A reader-view (…, z, y, x) array on the file's nibabel (…, x, y, z) grid."""
    lead = volume.ndim - 3
    out = np.moveaxis(volume, (lead, lead + 1, lead + 2), (lead + 2, lead + 1, lead))
    if ornt is None:
        return out
    from nibabel.orientations import apply_orientation

    if lead == 0:
        return apply_orientation(out, ornt)
    return np.stack([apply_orientation(v, ornt) for v in out])


class NnunetSource:
    """``nnUNetPredictor`` on the CPU over a trained model folder, as a parity reference."""

    def __init__(self, model_folder: Path, card: ModelCard, tta: bool, threads: int | None,
                 folds: list[int | str] | None = None, checkpoint: str | None = None,
                 configuration: str | None = None):
        self.folder = Path(model_folder)
        self.card = card
        self.threads = threads
        prov = card.provenance
        checkpoint = checkpoint or prov.get("checkpoint") or DEFAULT_CHECKPOINT
        folds = folds if folds is not None else prov.get("folds")
        configuration = configuration or prov.get("configuration")
        nn_predictor = _import_predictor(self.folder)
        use_folds = check_model_folder(self.folder, folds, checkpoint)
        self._check_configuration(configuration)
        self.predictor = self._load(nn_predictor, use_folds, checkpoint, tta)
        self.folds, self.checkpoint = tuple(use_folds), checkpoint
        self.reader_name = self.predictor.plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
        label_manager = self.predictor.label_manager
        self.order = channel_order(label_manager, card, self.folder)
        n_values = max(label_manager.regions_class_order or label_manager.all_labels) + 1
        self.lut = label_lut(card, self.folder, n_values)
        self._check_channels()

    def _check_configuration(self, configuration: str | None) -> None:
        parts = self.folder.name.split("__")
        if configuration and len(parts) == 3 and parts[2] != configuration:
            raise InputError(f"{self.folder}: this model folder holds configuration {parts[2]}; the card was "
                             f"imported from {configuration}")

    def _load(self, nn_predictor, folds: list, checkpoint: str, tta: bool):
        import torch

        try:
            with _quiet():
                predictor = nn_predictor(tile_step_size=1.0 - float(self.card.inference.overlap),
                                         use_gaussian=True, use_mirroring=tta, perform_everything_on_device=False,
                                         device=torch.device("cpu"), verbose=False, allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(str(self.folder), use_folds=folds,
                                                               checkpoint_name=checkpoint)
        except Exception as exc:  # nnU-Net's own failures (trainer class lookup, state dict) as one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InputError(f"{self.folder}: nnU-Net could not load folds {folds} ({checkpoint}): "
                             f"{type(exc).__name__}: {first}") from exc
        return predictor

    def _check_channels(self) -> None:
        names = self.predictor.dataset_json.get("channel_names") or self.predictor.dataset_json.get("modality", {})
        if len(names) != len(self.card.modalities):
            raise InputError(f"{self.folder}: dataset.json has {len(names)} channels {list(names.values())}; "
                             f"the card names {len(self.card.modalities)}: {list(self.card.modalities)}")

    def _read(self, case_folder: Path) -> tuple[np.ndarray, dict, np.ndarray, tuple[int, ...]]:
        """The case through nnU-Net's reader, checked to be the file's grid seen as (z, y, x)."""
        files = find_modalities(case_folder, self.card.modalities)
        paths = [str(files[m]) for m in self.card.modalities]
        reader = self.predictor.plans_manager.image_reader_writer_class()
        with _quiet():
            image, props = reader.read_images(paths)
        first: nib.Nifti1Image = nib.load(paths[0])  # type: ignore[assignment]
        ornt = _reorientation(self.reader_name, first.affine)
        data = np.asanyarray(first.dataobj).astype(np.float32)
        seen = to_case_grid(image[0], ornt)
        scale = float(np.abs(data).max()) or 1.0
        if seen.shape != data.shape or not np.allclose(seen, data, rtol=1e-5, atol=1e-5 * scale):
            raise InputError(f"{case_folder}: nnU-Net's {self.reader_name} does not read {Path(paths[0]).name} as "
                             "its (z, y, x) view; this source cannot map its output back to the file's grid")
        return image, props, ornt, data.shape

    def predict(self, case_folder: Path) -> SourceResult:
        """nnU-Net's segmentation and probabilities for one case, on the case's grid, in the card's terms."""
        import torch

        image, props, ornt, shape = self._read(Path(case_folder))
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with _quiet():
                start = time.perf_counter()
                seg, probs = self.predictor.predict_single_npy_array(image, props, None, None, True)
                seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
        labels = self.lut[to_case_grid(np.asarray(seg), ornt)]
        probs = to_case_grid(np.asarray(probs, dtype=np.float32), ornt)[self.order]
        if labels.shape != shape:
            raise InputError(f"{case_folder}: nnU-Net returned shape {labels.shape}, the case is {shape}")
        return SourceResult(labels.astype(np.uint8), np.ascontiguousarray(probs, dtype=np.float32), seconds)
