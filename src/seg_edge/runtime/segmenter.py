"""Segmenter: artifact + session + options → predict(case) → Segmentation.

The CLI, the benchmark and the parity checker all drive this one object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.card import BLENDS, ModelCard

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.errors import InputError
from seg_edge.runtime.io import Case
from seg_edge.runtime.inference import Plan, network_logits
from seg_edge.runtime.postprocess import ACTIVATIONS, apply_et_rule, et_probability, to_labels
from seg_edge.runtime.regions import et_label, labels_to_regions
from seg_edge.runtime.preprocess import Inverse, crop_padding, implemented, preprocess, to_original_grid
from seg_edge.runtime.resample import check_geometry, resize
from seg_edge.runtime.sessions.base import Session, open_session


@dataclass(frozen=True)
class SegmenterOptions:
    """User-chosen inference options; ``None`` means the model card's, everything else is the card's."""

    overlap: float | None = None
    blend: str | None = None
    batch_size: int = 1
    label_scheme: str | None = None  # None: the card's
    et_rule: bool = True
    probabilities: bool = False
    tta: bool | None = None  # None: the card's tta_axes; False: none; True: the card's, or every axis
    resample: bool = False  # resample inputs whose spacing differs from the card's (else they are refused)

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap {self.overlap} (expected 0 <= overlap < 1)")
        if self.blend is not None and self.blend not in BLENDS:
            raise InputError(f"blend '{self.blend}' (expected one of {', '.join(BLENDS)})")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size} (expected >= 1)")

    def plan(self, card: ModelCard) -> Plan:
        """The options in force for ``card``."""
        inf = card.inference
        if self.tta is False:
            axes: tuple[int, ...] = ()
        elif self.tta and not inf.tta_axes:
            axes = tuple(range(card.inputs.spatial_dims))
        else:
            axes = tuple(inf.tta_axes)
        return Plan(inf.overlap if self.overlap is None else self.overlap, self.blend or inf.blend,
                    self.batch_size, axes, inf.steps)


@dataclass
class Segmentation:
    """A label map on the case's original grid, with volumes and stage timings."""

    case_id: str
    labels: np.ndarray
    label_scheme: str
    volumes_ml: dict[str, float]
    timings: dict[str, float]
    probabilities: np.ndarray | None = None
    et_relabelled_voxels: int = 0
    warnings: list[str] = field(default_factory=list)


def region_volumes(labels: np.ndarray, et: int, spacing: tuple[float, ...]) -> dict[str, float]:
    """Volumes in mL of WT, TC, ET and of the NCR and ED labels."""
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    regions = labels_to_regions(labels, et)
    out = {name: int(mask.sum()) * voxel_ml for name, mask in zip(("WT", "TC", "ET"), regions)}
    out["NCR"] = int((labels == 1).sum()) * voxel_ml
    out["ED"] = int((labels == 2).sum()) * voxel_ml
    return out


class Segmenter:
    """Runs the whole pipeline on cases with one loaded model."""

    def __init__(self, artifact: Artifact, session: Session, options: SegmenterOptions | None = None):
        self.artifact = artifact
        self.card = artifact.card
        self.session = session
        self.options = options or SegmenterOptions()
        self.scheme = self.options.label_scheme or self.card.label_scheme
        self.et = et_label(self.scheme)
        self.activate = implemented(ACTIVATIONS, self.card.outputs.kind, "outputs.kind", self.card)
        self.plan = self.options.plan(self.card)

    @classmethod
    def open(cls, model: str | Path, backend: str = "onnxruntime", threads: int | None = None,
             options: SegmenterOptions | None = None, precision_hint: str | None = None) -> Segmenter:
        artifact = load_artifact(model)
        return cls(artifact, open_session(artifact, backend, threads=threads, precision_hint=precision_hint),
                   options)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logits(self, images: np.ndarray, on_window=None,
               scale: tuple[float, ...] | None = None) -> tuple[np.ndarray, Inverse, dict[str, float]]:
        """Preprocess (resampled by ``scale``) and run the sliding window: network-layout logits and the Inverse."""
        t0 = time.perf_counter()
        tensor, inverse = preprocess(images, self.card, scale)
        t1 = time.perf_counter()
        logits = network_logits(tensor, self.session.run, self.card, self.plan, on_window)
        t2 = time.perf_counter()
        return logits, inverse, {"preprocess": t1 - t0, "inference": t2 - t1}

    def predict(self, case: Case, on_window=None) -> Segmentation:
        """Segment one loaded case."""
        if case.images.shape[0] != len(self.card.modalities):
            raise InputError(f"{case.case_id}: {case.images.shape[0]} modalities "
                             f"(expected {len(self.card.modalities)})")
        source = str(next(iter(case.sources.values()), case.case_id))
        scale = check_geometry(source, case.images.shape[1:], case.spacing,
                               case.affine if case.header is not None else None, self.card, self.options.resample)
        if case.header is None and (self.card.inputs.spacing or self.card.inputs.orientation):
            case.warnings.append(f"{source}: no geometry in the file; assumed the model's spacing and orientation")
        if scale is not None:
            target = "×".join(f"{t:g}" for t in self.card.inputs.spacing or ())
            case.warnings.append(f"{source}: resampled to {target} mm for the network and back (--resample)")
        logits, inverse, timings = self.logits(case.images, on_window, scale)
        return self.finish(case, logits, inverse, timings)

    def finish(self, case: Case, logits: np.ndarray, inverse: Inverse,
               timings: dict[str, float] | None = None) -> Segmentation:
        """Network-layout logits → Segmentation on the case's grid (also used for references)."""
        timings = dict(timings or {})
        t0 = time.perf_counter()
        logits = crop_padding(logits, inverse)  # padding is dropped first: the rule must not see it
        if inverse.resampled_shape is not None:  # logits back to the input's spacing, linear (as nnU-Net)
            logits = resize(logits, inverse.network_shape, order=1)
        probs = self.activate(logits)
        labels_net = to_labels(probs, self.card.outputs, self.et)
        et_prob = et_probability(probs, self.card.outputs)
        relabelled = 0
        if self.options.et_rule and et_prob is not None:
            relabelled = apply_et_rule(labels_net, et_prob, self.card.et_rule, self.et)
        labels = to_original_grid(labels_net, inverse)
        full_probs = to_original_grid(probs, inverse) if self.options.probabilities else None
        timings["postprocess"] = time.perf_counter() - t0
        return Segmentation(case.case_id, labels, self.scheme, region_volumes(labels, self.et, case.spacing),
                            timings, full_probs, relabelled, list(case.warnings))
