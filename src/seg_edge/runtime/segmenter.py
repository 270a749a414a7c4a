"""Segmenter: artifact + session + options → predict(case) → Segmentation.

The CLI, the benchmark and the parity checker all drive this one object.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.card import BLENDS, STEPS, InferenceProfile, ModelCard

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.errors import InputError
from seg_edge.runtime.io import Case
from seg_edge.runtime.machine import mismatch
from seg_edge.runtime.inference import Plan, labels_back, network_logits
from seg_edge.runtime.postprocess import ACTIVATIONS, apply_et_rule, et_probability, to_labels
from seg_edge.runtime.regions import label_map, region_counts
from seg_edge.runtime.preprocess import Inverse, crop_padding, implemented, preprocess, to_original_grid
from seg_edge.runtime.resample import check_geometry, check_slice_range, resize
from seg_edge.runtime.sessions.base import Session, open_session


@dataclass(frozen=True)
class SegmenterOptions:
    """User-chosen inference options; ``None`` means the model card's (or its tuned profile's, where one
    is in force: ``with_profile``), everything else is the card's."""

    overlap: float | None = None
    blend: str | None = None
    batch_size: int | None = None  # None: 1, or the profile's
    label_scheme: str | None = None  # None: the card's
    et_rule: bool = True
    probabilities: bool = False
    tta: bool | None = None  # None: the card's tta_axes; False: none; True: the card's, or every axis
    resample: bool = False  # resample inputs whose spacing differs from the card's (else they are refused)
    window: tuple[int, ...] | None = None  # None: the card's patch (3D); larger sizes are capped at the crop
    steps: str | None = None  # None: the card's window positions rule
    skip_empty: bool = True  # all-zero windows get the network's all-zero logits without a run

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap {self.overlap} (expected 0 <= overlap < 1)")
        if self.blend is not None and self.blend not in BLENDS:
            raise InputError(f"blend '{self.blend}' (expected one of {', '.join(BLENDS)})")
        if self.steps is not None and self.steps not in STEPS:
            raise InputError(f"steps '{self.steps}' (expected one of {', '.join(STEPS)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size} (expected >= 1)")

    def with_profile(self, profile: InferenceProfile) -> SegmenterOptions:
        """These options with every field left ``None`` taken from a tuned ``profile``."""
        return dataclasses.replace(
            self, overlap=_first(self.overlap, profile.overlap), blend=_first(self.blend, profile.blend),
            steps=_first(self.steps, profile.steps), batch_size=_first(self.batch_size, profile.batch_size),
            window=_first(self.window, tuple(profile.window) or None),
            tta=_first(self.tta, None if profile.tta else False))

    def plan(self, card: ModelCard) -> Plan:
        """The options in force for ``card``."""
        inf = card.inference
        if self.tta is False:
            axes: tuple[int, ...] = ()
        elif self.tta and not inf.tta_axes:
            axes = tuple(range(card.inputs.spatial_dims))
        else:
            axes = tuple(inf.tta_axes)
        window = self.window if self.window and tuple(self.window) != tuple(inf.patch_size) else None
        if window is not None and card.inputs.spatial_dims != 3:
            raise InputError(f"window {list(window)}: a 2D model's slices have the card's size {list(inf.patch_size)}")
        if window is not None and (len(window) != len(inf.patch_size) or any(
                w < p or w % inf.size_divisor for w, p in zip(window, inf.patch_size))):
            raise InputError(f"window {list(window)} (expected {len(inf.patch_size)} sizes >= the patch "
                             f"{list(inf.patch_size)}, each a multiple of {inf.size_divisor})")
        return Plan(inf.overlap if self.overlap is None else self.overlap, self.blend or inf.blend,
                    self.batch_size or 1, axes, self.steps or inf.steps, window, self.skip_empty)


_T = TypeVar("_T")
OnWindow = Callable[[int, int], None]  # progress: (windows or slices done, of how many)


def _first(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value


@dataclass
class Prepared:
    """A case's network tensor (None once the network has run), its Inverse and stage timings so far."""

    tensor: np.ndarray | None
    inverse: Inverse
    timings: dict[str, float]


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


def profile_in_force(card: ModelCard, backend: str | None, use: bool) -> tuple[InferenceProfile | None, str | None]:
    """The card's tuned profile if it applies here, and a line saying what was decided (None: no profile)."""
    profile = card.profile
    if profile is None:
        return None, None
    if not use:
        return None, "tuned profile not used (--reference): the card's configuration"
    if backend is not None and backend != profile.backend:
        return None, f"tuned profile not used: it was measured on {profile.backend}, --backend {backend} was asked"
    why = mismatch(profile.machine, profile.backend)
    if why:
        return None, f"tuned profile not used: {why}; the card's configuration"
    return profile, f"tuned profile: {describe_profile(profile)} (measured on this machine; --reference for the card's)"


def describe_profile(p: InferenceProfile) -> str:
    """One line: backend, window, overlap, blend, steps, batch, threads, TTA."""
    window = "×".join(map(str, p.window)) if p.window else "card patch"
    hint = f" {p.precision_hint}" if p.precision_hint else ""
    streams = f" in {p.streams} streams" if p.streams > 1 else ""
    return (f"{p.backend}{hint}, window {window}, overlap {p.overlap:g}, {p.blend}, {p.steps} steps, "
            f"batch {p.batch_size}, {p.threads or 'default'} threads{streams}{'' if p.tta else ', no TTA'}")


def region_volumes(labels: np.ndarray, et: int, spacing: tuple[float, ...], *,
                   scheme: str | None = None) -> dict[str, float]:
    """Volumes in mL of WT, TC, ET and of the NCR and ED labels (one count per label value); with ``scheme``,
    of WT, TC and every label of its set (``regions.region_counts``)."""
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    return {name: count * voxel_ml for name, count in region_counts(labels, et, scheme=scheme).items()}


class Segmenter:
    """Runs the whole pipeline on cases with one loaded model."""

    def __init__(self, artifact: Artifact, session: Session, options: SegmenterOptions | None = None):
        self.artifact = artifact
        self.card = artifact.card
        self.session = session
        self.options = options or SegmenterOptions()
        self.scheme = self.options.label_scheme or self.card.label_scheme
        self.et = self.values["ET"]  # a scheme the model's labels cannot be written in is refused here
        self.activate = implemented(ACTIVATIONS, self.card.outputs.kind, "outputs.kind", self.card)
        self.plan = self.options.plan(self.card)
        self.profile_note: str | None = None  # what open_profiled decided about the card's tuned profile
        self.profile: InferenceProfile | None = None  # the tuned profile in force (open_profiled), if any
        # the network's logits for an all-zero window, per window shape
        self._background: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def values(self) -> dict[str, int]:
        """Each label the card's outputs name (and background) → its value under the scheme written
        (``regions.label_map``: InputError where one has none)."""
        return label_map(self.card.label_scheme, self.scheme)

    @classmethod
    def open(cls, model: str | Path, backend: str = "onnxruntime", threads: int | None = None,
             options: SegmenterOptions | None = None, precision_hint: str | None = None, streams: int = 1) -> Segmenter:
        artifact = load_artifact(model)
        session = open_session(artifact, backend, threads=threads, precision_hint=precision_hint, streams=streams)
        return cls(artifact, session, options)

    @classmethod
    def open_profiled(cls, model: str | Path | Artifact, backend: str | None = None, threads: int | None = None,
                      options: SegmenterOptions | None = None, precision_hint: str | None = None,
                      use_profile: bool = True, url: str | None = None) -> Segmenter:
        """Like ``open``, with the card's tuned profile in force where it applies (this machine, the
        profile's backend): its backend, threads and window settings fill what was not given.
        ``profile_note`` says whether it was used and why not. ``url``: the server of ``--backend triton``.
        ``model``: a path, or an Artifact already loaded (the file is read once)."""
        artifact = model if isinstance(model, Artifact) else load_artifact(model)
        options = options or SegmenterOptions()
        profile, note = profile_in_force(artifact.card, backend, use_profile)
        streams = 1
        if profile is not None:
            backend, streams = profile.backend, profile.streams
            threads, precision_hint = threads or profile.threads, precision_hint or profile.precision_hint
            options = options.with_profile(profile)
        session = open_session(artifact, backend or "onnxruntime", threads=threads, precision_hint=precision_hint,
                               streams=streams, url=url)
        segmenter = cls(artifact, session, options)
        segmenter.profile_note, segmenter.profile = note, profile
        return segmenter

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logits(self, images: np.ndarray, on_window: OnWindow | None = None,
               scale: tuple[float, ...] | None = None) -> tuple[np.ndarray, Inverse, dict[str, float]]:
        """Preprocess (resampled by ``scale``) and run the sliding window: network-layout logits and the Inverse."""
        prepared = self.preprocess(images, scale)
        return self.network(prepared, on_window), prepared.inverse, prepared.timings

    def warm_up(self) -> None:
        """Import what postprocessing will need (the ET rule's scipy.ndimage, 0.1 s) while the first case
        is read in another thread (``runner.run_cases``), not after its network has run.
        Running the network once on a zero window here as well was measured and left out: on 2 cores
        it slowed the read more than it saved (single case 1.94-2.11 s against 1.75-1.99 s; a batch
        of 10 9.25/9.43 s against 8.95/9.12 s, commit 29a9cbf)."""
        if self.options.et_rule and self.card.et_rule.enabled:
            import scipy.ndimage  # noqa: F401

    def preprocess(self, images: np.ndarray, scale: tuple[float, ...] | None = None) -> Prepared:
        """The network tensor of ``images`` (resampled by ``scale``) with its Inverse, timed."""
        t0 = time.perf_counter()
        tensor, inverse = preprocess(images, self.card, scale, self.plan.window)
        return Prepared(tensor, inverse, {"preprocess": time.perf_counter() - t0})

    def network(self, prepared: Prepared, on_window: OnWindow | None = None) -> np.ndarray:
        """Network-layout logits of a prepared tensor (the sliding window or the slices), timed into
        ``prepared.timings``; the tensor is released."""
        t0 = time.perf_counter()
        if prepared.tensor is None:
            raise InputError("the case's network tensor was already run and released (prepare it again)")
        logits = network_logits(prepared.tensor, self.session.run, self.card, self.plan, on_window, self._background)
        prepared.tensor = None
        prepared.timings["inference"] = time.perf_counter() - t0
        return logits

    def prepare(self, case: Case) -> Prepared:
        """Check a loaded case against the card (geometry, modalities) and preprocess it."""
        if case.images.shape[0] != len(self.card.modalities):
            raise InputError(f"{case.case_id}: {case.images.shape[0]} modalities "
                             f"(expected {len(self.card.modalities)})")
        source = str(next(iter(case.sources.values()), case.case_id))
        scale = check_geometry(source, case.images.shape[1:], case.spacing,
                               case.affine if case.header is not None else None, self.card, self.options.resample)
        if case.header is None and (self.card.inputs.spacing or self.card.inputs.orientation):
            case.warnings.append(f"{source}: no geometry in the file; assumed the model's spacing and orientation")
        check_slice_range(source, case.images.shape[1:], self.card)
        spec = self.card.inputs.slice
        if scale is not None and spec is not None and (spec.back == "labels" or spec.range is not None):
            raise InputError(f"{source}: --resample with model {self.card.name!r}, which labels slices at the "
                             "network's size or reads a slice range (not implemented together: give the input "
                             "on the model's grid)")
        if scale is not None:
            target = "×".join(f"{t:g}" for t in self.card.inputs.spacing or ())
            case.warnings.append(f"{source}: resampled to {target} mm for the network and back (--resample)")
        return self.preprocess(case.images, scale)

    def predict(self, case: Case, on_window: OnWindow | None = None) -> Segmentation:
        """Segment one loaded case."""
        prepared = self.prepare(case)
        logits = self.network(prepared, on_window)
        return self.finish(case, logits, prepared.inverse, prepared.timings)

    def finish(self, case: Case, logits: np.ndarray, inverse: Inverse,
               timings: dict[str, float] | None = None) -> Segmentation:
        """Network-layout logits → Segmentation on the case's grid (also used for references)."""
        timings = dict(timings or {})
        t0 = time.perf_counter()
        spec = self.card.inputs.slice
        at_network_size = spec is not None and spec.back == "labels"  # 2D: labelled at the slice size
        if not at_network_size:
            logits = crop_padding(logits, inverse)  # padding is dropped first: the rule must not see it
        if inverse.resampled_shape is not None:  # logits back to the input's spacing, linear (as nnU-Net)
            logits = resize(logits, inverse.network_shape, order=1)
        activated = self.activate(logits)
        labels_net = to_labels(activated, self.card.outputs, self.et, values=self.values)
        probs: np.ndarray | None = activated
        if at_network_size:
            # the probabilities come back only when written or read by the ET rule: resizing them back is
            # most of the way back (100 slices to 240×240: 0.37 s, the labels 0.01 s)
            wanted = self.options.probabilities or (self.options.et_rule and self.card.et_rule.enabled)
            labels_net, probs = labels_back(labels_net, activated if wanted else None, inverse.network_shape,
                                            self.card)
        et_prob = None if probs is None else et_probability(probs, self.card.outputs)
        relabelled = 0
        if self.options.et_rule and et_prob is not None:
            relabelled = apply_et_rule(labels_net, et_prob, self.card.et_rule, self.et)
        labels = to_original_grid(labels_net, inverse)
        full_probs = to_original_grid(probs, inverse) if self.options.probabilities and probs is not None else None
        timings["postprocess"] = time.perf_counter() - t0
        volumes = region_volumes(labels, self.et, case.spacing, scheme=self.scheme)
        return Segmentation(case.case_id, labels, self.scheme, volumes, timings, full_probs, relabelled,
                            list(case.warnings))
