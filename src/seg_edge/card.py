"""The model card, schema 2.2 (docs/CARD.md): what a network expects and produces, in data.

Importers write cards; the runtime reads them and never branches on a preset. Schema-1 cards
(flat fields), schema-2.0 cards (no ``schema_minor``) and 2.1 cards load as 2.2 with identical
behaviour (``cardmigrate``). Parsing checks the
JSON type of every field against the dataclasses' annotations (``_build``), then the values
(``validate_card``); any defect is an ArtifactError naming the source, the field, the value
found and the value expected.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from seg_edge.errors import ArtifactError

CARD_KEY = "seg_edge.card"
CARD_SCHEMA = 2
# 1: tensor layouts, the "max" normalisation, a 2D model's way back (labels or logits) and slice range
# 2: inputs.space (the space the network's inputs are in: the BraTS atlas grid, or the scanner's own)
CARD_SCHEMA_MINOR = 2
MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("WT", "TC", "ET")
LABELS = ("NCR", "ED", "ET")
CLASSES = ("background",) + LABELS
NORMALIZATIONS = ("zscore_nonzero", "zscore_mask", "zscore", "max", "none")
LAYOUTS = ("channels_first", "channels_last")
# atlas: co-registered, skull-stripped, 1 mm on an atlas grid (BraTS's preprocessing; ``predict --raw`` makes it
# from scanner series); native: the series as scanned, co-registered onto one of them (never atlas-registered)
SPACES = ("atlas", "native")
BACKS = ("logits", "labels")
DERIVED = ("nvidia_mask",)
CROPS = ("nonzero", "none")
KINDS = ("sigmoid", "softmax")
RULES = ("nested", "sequential")
BLENDS = ("gaussian", "constant", "nnunet_gaussian")
STEPS = ("monai", "nnunet")
INTERPOLATIONS = ("linear", "nearest")
# Label sets (docs/CARD.md, "Label sets"): label name → the value a label map holds. brats2021 and brats2023 are
# the glioma labels of those years; brats2024-gli-post is BraTS 2024's post-treatment glioma set (the metastases
# challenge's as well), whose resection cavity (RC) has no value in the older sets.
LABEL_SETS: dict[str, dict[str, int]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
    "brats2024-gli-post": {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4},
}
# BraTS 2023 renamed two tissues without changing them: a relabelling may map each name onto its other name
LABEL_SYNONYMS = {"NETC": "NCR", "SNFH": "ED"}
LABEL_SCHEMES = tuple(LABEL_SETS)
PRECISIONS = ("fp32", "fp16", "int8")
# backends a tuned profile may name (runtime.sessions.base.BACKENDS; a test keeps the two equal)
PROFILE_BACKENDS = ("onnxruntime", "ort-cuda", "ort-trt", "tensorrt", "openvino")
PRECISION_HINTS = ("f32", "bf16")


@dataclass(frozen=True)
class ETRule:
    """NVIDIA's BraTS21 enhancing-tumour clean-up, applied to the label map.

    ET components with ``2 <= size < component_max_voxels`` and mean ET probability below
    ``max_mean_prob`` become necrosis; then, if all ET together has fewer than
    ``total_max_voxels`` voxels and mean probability below ``max_mean_prob``, all of it does.
    """

    enabled: bool = True
    component_max_voxels: int = 8
    total_max_voxels: int = 73
    max_mean_prob: float = 0.9


@dataclass(frozen=True)
class Tolerances:
    """Parity tolerances of this artifact's precision against the framework reference."""

    max_prob_diff: float = 1e-4
    min_region_dice: float = 0.999


@dataclass(frozen=True)
class Channel:
    """One network input channel: a modality with its normalization, or a derived channel."""

    name: str
    normalization: str = "zscore_nonzero"
    derived: str | None = None


@dataclass(frozen=True)
class SliceSpec:
    """2D models: slices along network ``axis`` (after ``Inputs.axes``), resized in-plane to ``size``
    with ``interpolation``. The way back (``back``): ``logits`` resized to the slice's size with
    ``back_interpolation``, then activated and labelled there; or ``labels``: activated and labelled
    at ``size``, then labels and probabilities resized back with ``back_interpolation`` (nearest).
    ``range``: [start, stop) of the loaded array's indices along the slice axis the network sees
    (None: every slice); slices outside it are background."""

    axis: int = 2
    size: tuple[int, ...] = (128, 128)
    interpolation: str = "linear"
    back: str = "logits"
    back_interpolation: str = "linear"
    range: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Inputs:
    """The network input: channels in order, crop policy, axis permutation, 2D slicing, and the
    grid the network was trained on (``spacing`` in mm and ``orientation`` axis codes, both in
    NIfTI array order; ``None``: not checked). The runtime checks an input against them and
    refuses a mismatch; it never reorients, and resamples only when asked (``--resample``)."""

    channels: tuple[Channel, ...]
    tensor: str = "image"
    crop: str = "nonzero"
    axes: tuple[int, ...] = (0, 1, 2)
    spatial_dims: int = 3
    slice: SliceSpec | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    layout: str = "channels_first"  # channels_last: the graph takes N, *spatial, C (Keras' default)
    space: str = "atlas"  # SPACES; cards before 2.2 read as "atlas" (seg-edge took every input as BraTS-preprocessed)


@dataclass(frozen=True)
class Outputs:
    """What the output channels mean and how they become BraTS labels."""

    kind: str = "sigmoid"
    channels: tuple[str, ...] = REGIONS
    thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    rule: str = "nested"
    order: tuple[tuple[str, ...], ...] = (("WT", "ED"), ("TC", "NCR"), ("ET", "ET"))
    tensor: str = "logits"
    source_labels: dict[str, str] = field(default_factory=dict)
    layout: str = "channels_first"  # channels_last: the graph gives N, *spatial, K


@dataclass(frozen=True)
class Inference:
    """Sliding window (``steps``: where windows go, MONAI's or nnU-Net's rule), blending,
    mirroring TTA, ensemble size (networks averaged inside the graph) and the ET rule."""

    patch_size: tuple[int, ...] = (128, 128, 128)
    size_divisor: int = 16
    overlap: float = 0.5
    blend: str = "gaussian"
    steps: str = "monai"
    tta_axes: tuple[int, ...] = ()
    ensemble: int = 1
    et_rule: ETRule = field(default_factory=ETRule)


_INFERENCE_FIELDS = frozenset(f.name for f in dataclasses.fields(Inference))


@dataclass(frozen=True)
class Machine:
    """The machine a profile was measured on: CPU model, its compute ISA flags, usable cores, and
    the versions of the backends that ran (``{"onnxruntime": "1.32.0"}``)."""

    cpu: str
    flags: tuple[str, ...] = ()
    cores: int = 1
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceProfile:
    """The fastest configuration ``seg-edge tune`` measured within ``budget`` (worst-region Dice loss
    against the reference configuration) on ``machine``; ``predict`` uses it there by default.

    ``window`` empty: the card's patch; else sizes (multiples of the size divisor, >= the patch)
    capped at the crop. ``streams`` > 1: the windows of a batch run in parallel, the threads shared
    out among them. ``tta`` false: mirroring off. ``measured``: what tune measured (seconds per
    case, the reference's, worst Dice, cases), informational.
    """

    machine: Machine
    backend: str = "onnxruntime"
    precision_hint: str | None = None
    threads: int | None = None
    streams: int = 1
    window: tuple[int, ...] = ()
    overlap: float = 0.5
    blend: str = "gaussian"
    steps: str = "monai"
    batch_size: int = 1
    tta: bool = True
    budget: float = 0.01
    measured: dict[str, Any] = field(default_factory=dict)


def nvidia_inputs(tensor: str = "image", axes: tuple[int, ...] = (0, 1, 2)) -> Inputs:
    """FLAIR, T1, T1ce, T2 z-scored over non-zero voxels plus NVIDIA's mask channel."""
    return Inputs(tuple(Channel(m) for m in MODALITIES) + (Channel("mask", "none", "nvidia_mask"),), tensor,
                  "nonzero", axes)


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and produces. Frozen: derive a changed copy with ``replace``."""

    name: str
    preset: str
    inputs: Inputs = field(default_factory=nvidia_inputs)
    outputs: Outputs = field(default_factory=Outputs)
    inference: Inference = field(default_factory=Inference)
    label_scheme: str = "brats2021"
    precision: str = "fp32"
    tolerances: Tolerances = field(default_factory=Tolerances)
    provenance: dict[str, Any] = field(default_factory=dict)
    profile: InferenceProfile | None = None
    schema: int = CARD_SCHEMA
    schema_minor: int = CARD_SCHEMA_MINOR

    @property
    def in_channels(self) -> int:
        return len(self.inputs.channels)

    @property
    def out_channels(self) -> int:
        return len(self.outputs.channels)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the network reads, in its channel order (derived channels excluded)."""
        return tuple(c.name for c in self.inputs.channels if c.derived is None)

    @property
    def input_name(self) -> str:
        return self.inputs.tensor

    @property
    def output_name(self) -> str:
        return self.outputs.tensor

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.inference.patch_size

    @property
    def size_divisor(self) -> int:
        return self.inference.size_divisor

    @property
    def et_rule(self) -> ETRule:
        return self.inference.et_rule

    def slice_spec(self) -> SliceSpec:
        """A 2D card's ``inputs.slice`` (the card check sets it for 2D cards and only them); ArtifactError
        for a card without one."""
        if self.inputs.slice is None:
            raise ArtifactError(f"model card {self.name!r}: no inputs.slice (a 3D model, or a 2D card that "
                                "skipped the card check)")
        return self.inputs.slice

    def slice_range(self) -> tuple[int, int, int] | None:
        """A 2D card's slice range as (array axis, start, stop), or None: every slice is read."""
        spec = self.inputs.slice
        if self.inputs.spatial_dims != 2 or spec is None or spec.range is None:
            return None
        return self.inputs.axes[spec.axis], spec.range[0], spec.range[1]

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (not validated: ``from_json`` validates).

        Names of ``Inference`` fields (``patch_size``, ``overlap``, …) change the inference part.
        """
        nested = {k: changes.pop(k) for k in list(changes) if k in _INFERENCE_FIELDS}
        if nested:
            changes["inference"] = dataclasses.replace(changes.get("inference", self.inference), **nested)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The card as compact JSON with sorted keys (what files store); no ``profile`` key when there is none."""
        raw = dataclasses.asdict(self)
        if raw["profile"] is None:
            del raw["profile"]
        return json.dumps(raw, indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse, migrate (schema 1, 2.0) and validate a card; ArtifactError naming ``source`` on any defect."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{source}: model card is not valid JSON ({exc.msg})") from exc
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: model card must be a JSON object, not {show(raw)}")
        return card_from_dict(raw, source)


# --------------------------------------------------------------------------- parsing

def show(value: Any) -> str:
    """A value as JSON, shortened for one-line messages."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:  # JSON true/false load as bool, a subclass of int: not a size
    return isinstance(value, int) and not isinstance(value, bool)


def _build(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` converted to annotation ``tp``; a type mismatch is appended to ``problems``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where, problems)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where, problems)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{where} is {show(value)} (expected a list)")
            return ()
        item = args[0]
        return tuple(_build(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where} is {show(value)} (expected a JSON object)")
            return {}
        return dict(value)
    checks: dict[type, tuple[Callable[[Any], bool], str]] = {
        str: (lambda v: isinstance(v, str), "a string"), int: (_is_int, "an integer"),
        float: (lambda v: _is_int(v) or isinstance(v, float), "a number"),
        bool: (lambda v: isinstance(v, bool), "true or false")}
    check, expected = checks[tp]
    if not check(value):
        problems.append(f"{where} is {show(value)} (expected {expected})")
        return tp() if tp is not float else 0.0
    return float(value) if tp is float else value


def _build_dataclass(cls: type[Any], value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{where} is {show(value)} (expected a JSON object)")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        problems.append(f"{where or 'card'} has unknown fields {unknown} (expected only {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in value:
            kwargs[name] = _build(hints[name], value[name], path, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"lacks '{path}'")
    try:
        return cls(**kwargs)
    except TypeError:  # a missing required field, already reported
        return None


def card_from_dict(raw: dict[str, Any], source: str) -> ModelCard:
    """A validated ModelCard from a parsed JSON object (schema 1 migrated)."""
    # a card without "schema" is read by its layout: nested sections are schema 2, flat fields schema 1
    schema = raw.get("schema", 2 if {"inputs", "outputs", "inference"} & set(raw) else 1)
    if not _is_int(schema) or not 1 <= schema:
        raise ArtifactError(f"{source}: invalid model card: schema is {show(schema)} (expected an integer "
                            f"1..{CARD_SCHEMA})")
    if schema > CARD_SCHEMA:
        raise ArtifactError(f"{source}: model card schema {schema} is newer than {CARD_SCHEMA}; "
                            "upgrade seg-edge to read it")
    from seg_edge.cardmigrate import to_current  # older layouts, in their own module

    raw = to_current(raw, schema, source)
    problems: list[str] = []
    card: ModelCard | None = _build_dataclass(ModelCard, raw, "", problems)
    if problems or card is None:
        raise ArtifactError(f"{source}: invalid model card: " + "; ".join(problems or ["unreadable"]))
    from seg_edge.cardcheck import validate_card  # value rules live beside the card, in their own module

    validate_card(card, source)
    return card


def schema1_card(**fields: Any) -> ModelCard:
    """A card from schema-1 (flat) fields, migrated and validated like a stored schema-1 card."""
    return card_from_dict(json.loads(json.dumps({**fields, "schema": 1})), "schema-1 card")
