"""The model card: everything the runtime needs to segment with a model, stored with the model.

ONNX files carry the card as JSON under the ``seg_edge.card`` key of ``metadata_props``;
TensorRT plans carry it in a sidecar ``<plan>.json`` so that the plan stays loadable by plain
TensorRT. Reading the card from an ONNX file needs neither ``onnx`` nor ``onnxruntime``: the
protobuf is walked directly — metadata and the graph's declared inputs and outputs are read,
nodes and weights are skipped, not parsed.

A card is checked when it is read: the JSON type of every field, the range of every number,
values the runtime implements (activation, normalization, …) and, for ONNX, that the input
and output it names exist in the graph with the channel counts the card implies. Any defect is
an ``ArtifactError`` naming the file, the field, the value found and the value expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from seg_edge.errors import ArtifactError
from seg_edge.onnxproto import (ELEM_TYPES, OnnxHeader, TensorInfo, read_onnx_header,  # noqa: F401  (re-exported)
                                read_onnx_metadata)

CARD_KEY = "seg_edge.card"
CARD_SCHEMA = 1
MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("WT", "TC", "ET")
MASK_DEFINITIONS = {
    "none": "no mask channel",
    "nvidia": "1 where all z-scored modality channels are > 0 (NVIDIA BraTS21 preprocessor)",
}
# Values the runtime implements (runtime/segmenter.py and runtime/preprocess.py hold the functions;
# a unit test keeps the two lists equal).
ACTIVATIONS = ("sigmoid",)
NORMALIZATIONS = ("zscore_nonzero",)
LABEL_SCHEMES = ("brats2021", "brats2023")
AXIS_ORDERS = ("xyz", "zyx")
PRECISIONS = ("fp32", "fp16", "int8")


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
    """Parity tolerances of this artifact's precision against the PyTorch reference."""

    max_prob_diff: float = 1e-4
    min_region_dice: float = 0.999


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and produces. Frozen: derive a changed copy with ``replace``."""

    name: str
    preset: str
    modalities: tuple[str, ...] = MODALITIES
    mask_channel: str = "nvidia"
    regions: tuple[str, ...] = REGIONS
    activation: str = "sigmoid"
    thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    label_scheme: str = "brats2021"
    patch_size: tuple[int, int, int] = (128, 128, 128)
    size_divisor: int = 16
    normalization: str = "zscore_nonzero"
    axis_order: str = "xyz"
    et_rule: ETRule = field(default_factory=ETRule)
    precision: str = "fp32"
    input_name: str = "image"
    output_name: str = "logits"
    tolerances: Tolerances = field(default_factory=Tolerances)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: int = CARD_SCHEMA

    @property
    def in_channels(self) -> int:
        """Network input channels: the modalities plus the mask channel, if any."""
        return len(self.modalities) + (0 if self.mask_channel == "none" else 1)

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (not validated: ``from_json`` validates)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The card as compact JSON with sorted keys (what files store)."""
        return json.dumps(dataclasses.asdict(self), indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse and validate a card; raises ArtifactError naming ``source`` on any defect."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{source}: model card is not valid JSON ({exc.msg})") from exc
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: model card must be a JSON object, not {_show(raw)}")
        return _card_from_dict(raw, source)


# --------------------------------------------------------------------------- card validation

def _is_int(value: Any) -> bool:  # JSON true/false load as bool, a subclass of int: not a size
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


_STR = (lambda v: isinstance(v, str), "a string")
_INT = (_is_int, "an integer")
_NUMBER = (_is_number, "a number")
_OBJECT = (lambda v: isinstance(v, dict), "a JSON object")
_STRINGS = (_list_of(_STR[0]), "a list of strings")
# JSON type of every card field (a unit test keeps this table and the dataclasses in step).
FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": _STR, "preset": _STR, "modalities": _STRINGS, "mask_channel": _STR, "regions": _STRINGS,
    "activation": _STR, "thresholds": (_list_of(_is_number), "a list of numbers"), "label_scheme": _STR,
    "patch_size": (_list_of(_is_int), "a list of integers"), "size_divisor": _INT,
    "normalization": _STR, "axis_order": _STR, "et_rule": _OBJECT, "precision": _STR,
    "input_name": _STR, "output_name": _STR, "tolerances": _OBJECT, "provenance": _OBJECT, "schema": _INT,
}
NESTED_TYPES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "et_rule": {"enabled": (lambda v: isinstance(v, bool), "true or false"), "component_max_voxels": _INT,
                "total_max_voxels": _INT, "max_mean_prob": _NUMBER},
    "tolerances": {"max_prob_diff": _NUMBER, "min_region_dice": _NUMBER},
}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_problems(raw: dict[str, Any]) -> list[str]:
    """One line per field whose JSON type is wrong: field, value found, type expected."""
    problems = []
    for key, value in raw.items():
        check, expected = FIELD_TYPES[key]
        if not check(value):
            problems.append(f"{key} is {_show(value)} (expected {expected})")
            continue
        spec = NESTED_TYPES.get(key, {})
        for sub, sub_value in value.items() if key in NESTED_TYPES else ():
            if sub not in spec:
                problems.append(f"{key}.{sub} is not a field (expected only {sorted(spec)})")
            elif not spec[sub][0](sub_value):
                problems.append(f"{key}.{sub} is {_show(sub_value)} (expected {spec[sub][1]})")
    return problems


def _card_from_dict(raw: dict[str, Any], source: str) -> ModelCard:
    schema = raw.get("schema", CARD_SCHEMA)
    if _is_int(schema) and schema > CARD_SCHEMA:
        raise ArtifactError(f"{source}: model card schema {schema} is newer than {CARD_SCHEMA}; "
                            "upgrade seg-edge to read it")
    unknown = sorted(set(raw) - set(FIELD_TYPES))
    if unknown:
        raise ArtifactError(f"{source}: model card has unknown fields {unknown}")
    problems = [f"lacks '{key}' (expected a string)" for key in ("name", "preset") if key not in raw]
    problems += _type_problems(raw)
    if problems:
        raise ArtifactError(f"{source}: invalid model card: " + "; ".join(problems))
    data = dict(raw)
    data["et_rule"] = ETRule(**raw.get("et_rule", {}))
    data["tolerances"] = Tolerances(**raw.get("tolerances", {}))
    for key in ("modalities", "regions", "thresholds", "patch_size"):
        if key in data:
            data[key] = tuple(data[key])
    card = ModelCard(**data)
    validate_card(card, source)
    return card


def _choice_problems(card: ModelCard) -> list[str]:
    """Names and enumerated values: each must be one the runtime implements."""
    problems = []
    choices = (("mask_channel", tuple(MASK_DEFINITIONS)), ("activation", ACTIVATIONS),
               ("normalization", NORMALIZATIONS), ("label_scheme", LABEL_SCHEMES),
               ("axis_order", AXIS_ORDERS), ("precision", PRECISIONS))
    for key, allowed in choices:
        if getattr(card, key) not in allowed:
            problems.append(f"{key} {_show(getattr(card, key))} (expected one of {list(allowed)})")
    if sorted(card.modalities) != sorted(MODALITIES):
        problems.append(f"modalities {list(card.modalities)} (expected an order of {list(MODALITIES)})")
    if tuple(card.regions) != REGIONS:
        problems.append(f"regions {list(card.regions)} (expected {list(REGIONS)})")
    for key in ("name", "input_name", "output_name"):
        if not getattr(card, key):
            problems.append(f"{key} is empty (expected a non-empty string)")
    return problems


def _number_problems(card: ModelCard) -> list[str]:
    """Sizes, thresholds, the ET rule and tolerances: each within its range."""
    problems = []
    if len(card.thresholds) != len(card.regions) or not all(0 < t < 1 for t in card.thresholds):
        problems.append(f"thresholds {list(card.thresholds)} (expected one per region, each in (0, 1))")
    divisor = card.size_divisor
    if divisor < 1:
        problems.append(f"size_divisor {divisor} (expected an integer >= 1)")
    patch = list(card.patch_size)
    if len(patch) != 3 or min(patch) < 1 or (divisor >= 1 and any(p % divisor for p in patch)):
        problems.append(f"patch_size {patch} (expected 3 sizes >= 1, each a multiple of size_divisor {divisor})")
    rule, tol = card.et_rule, card.tolerances
    for key in ("component_max_voxels", "total_max_voxels"):
        if getattr(rule, key) < 0:
            problems.append(f"et_rule.{key} {getattr(rule, key)} (expected an integer >= 0)")
    for key, value in (("et_rule.max_mean_prob", rule.max_mean_prob), ("tolerances.max_prob_diff",
                       tol.max_prob_diff), ("tolerances.min_region_dice", tol.min_region_dice)):
        if not 0 <= value <= 1:  # also refuses NaN
            problems.append(f"{key} {value} (expected a number in [0, 1])")
    if card.schema < 1:
        problems.append(f"schema {card.schema} (expected 1..{CARD_SCHEMA})")
    return problems


def validate_card(card: ModelCard, source: str = "card") -> None:
    """ArtifactError naming ``source`` unless every value of a well-typed card is in range."""
    problems = _choice_problems(card) + _number_problems(card)
    if problems:
        raise ArtifactError(f"{source}: invalid model card: " + "; ".join(problems))


# --------------------------------------------------------------------------- artifacts

@dataclass(frozen=True)
class Artifact:
    """A model file and its card. ``kind`` is 'onnx' or 'tensorrt'; ONNX ones keep their graph I/O."""

    path: Path
    card: ModelCard
    kind: str
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(plan: Path) -> Path:
    """Where a TensorRT plan's card lives: ``<plan>.json`` beside it."""
    return plan.with_name(plan.name + ".json")


def load_artifact(path: str | Path) -> Artifact:
    """Read and check the card of an ONNX file or a TensorRT plan (via its sidecar); weights stay unread."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    if path.suffix in (".plan", ".engine"):
        side = sidecar_path(path)
        if not side.is_file():
            raise ArtifactError(f"{path}: TensorRT plan has no sidecar card {side.name}")
        try:
            card_json = json.dumps(json.loads(side.read_text())["card"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{side}: sidecar is not JSON with a 'card' entry ({exc})") from exc
        return Artifact(path, ModelCard.from_json(card_json, str(side)), "tensorrt")
    header = read_onnx_header(path)
    if CARD_KEY not in header.metadata:
        raise ArtifactError(f"{path}: ONNX model has no seg-edge card (metadata key '{CARD_KEY}'); "
                            "export it with 'seg-edge export'")
    card = ModelCard.from_json(header.metadata[CARD_KEY], str(path))
    check_card_graph(card, header, str(path))
    return Artifact(path, card, "onnx", header.inputs, header.outputs)


_FLOAT = 1


def _tensor_problems(info: TensorInfo, what: str, channel_field: str, channels: int) -> list[str]:
    problems = []
    if info.elem_type not in (0, _FLOAT):
        problems.append(f"graph {what} '{info.name}' is {ELEM_TYPES.get(info.elem_type, info.elem_type)} "
                        "(expected float32: the runtime feeds and reads float32)")
    if info.dims is None:
        return problems
    if len(info.dims) != 5:
        problems.append(f"graph {what} '{info.name}' has rank {len(info.dims)} (expected 5: N, C, X, Y, Z)")
    elif isinstance(info.dims[1], int) and info.dims[1] != channels:
        problems.append(f"{channel_field} gives {channels} {what} channels but graph {what} '{info.name}' "
                        f"has {info.dims[1]} (dim 1)")
    return problems


def check_card_graph(card: ModelCard, header: OnnxHeader, source: str) -> None:
    """ArtifactError unless the card's input/output names and channel counts fit the ONNX graph.

    A dimension the graph leaves symbolic or unknown is not checked; a fixed one must match.
    """
    problems = []
    ends = (("input", "input_name", card.input_name, header.inputs,
             f"modalities ({len(card.modalities)}) + mask_channel '{card.mask_channel}'", card.in_channels),
            ("output", "output_name", card.output_name, header.outputs,
             f"regions {list(card.regions)}", len(card.regions)))
    for what, key, name, infos, channel_field, channels in ends:
        found = next((info for info in infos if info.name == name), None)
        if found is None:
            names = [info.name for info in infos][:8]
            problems.append(f"{key} '{name}' is not a graph {what} (graph {what}s: {names})")
        else:
            problems += _tensor_problems(found, what, channel_field, channels)
    if problems:
        raise ArtifactError(f"{source}: model card does not fit its graph: " + "; ".join(problems))
