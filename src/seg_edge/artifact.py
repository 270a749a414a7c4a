"""The model card: everything the runtime needs to segment with a model, stored with the model.

ONNX files carry the card as JSON under the ``seg_edge.card`` key of ``metadata_props``;
TensorRT plans carry it in a sidecar ``<plan>.json`` so that the plan stays loadable by plain
TensorRT. Reading the card from an ONNX file needs neither ``onnx`` nor ``onnxruntime``: the
top-level fields of the protobuf are walked directly (weights are skipped, not parsed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_edge.errors import ArtifactError

CARD_KEY = "seg_edge.card"
CARD_SCHEMA = 1
MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("WT", "TC", "ET")
MASK_DEFINITIONS = {
    "none": "no mask channel",
    "nvidia": "1 where all z-scored modality channels are > 0 (NVIDIA BraTS21 preprocessor)",
}


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
        return len(self.modalities) + (0 if self.mask_channel == "none" else 1)

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse and validate a card; raises ArtifactError naming ``source`` on any defect."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{source}: model card is not valid JSON ({exc.msg})") from exc
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: model card must be a JSON object")
        return _card_from_dict(raw, source)


def _card_from_dict(raw: dict[str, Any], source: str) -> ModelCard:
    names = {f.name for f in dataclasses.fields(ModelCard)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ArtifactError(f"{source}: model card has unknown fields {unknown}")
    if raw.get("schema", CARD_SCHEMA) > CARD_SCHEMA:
        raise ArtifactError(f"{source}: model card schema {raw['schema']} is newer than {CARD_SCHEMA}")
    for key in ("name", "preset"):
        if key not in raw:
            raise ArtifactError(f"{source}: model card lacks '{key}'")
    data = dict(raw)
    try:
        data["et_rule"] = ETRule(**raw.get("et_rule", {}))
        data["tolerances"] = Tolerances(**raw.get("tolerances", {}))
    except TypeError as exc:
        raise ArtifactError(f"{source}: model card field is malformed ({exc})") from exc
    for key in ("modalities", "regions", "thresholds", "patch_size"):
        if key in data:
            data[key] = tuple(data[key])
    card = ModelCard(**data)
    _validate(card, source)
    return card


def _validate(card: ModelCard, source: str) -> None:
    problems = []
    if sorted(card.modalities) != sorted(MODALITIES):
        problems.append(f"modalities {list(card.modalities)} (expected an order of {list(MODALITIES)})")
    if card.mask_channel not in MASK_DEFINITIONS:
        problems.append(f"mask_channel '{card.mask_channel}' (expected one of {list(MASK_DEFINITIONS)})")
    if tuple(card.regions) != REGIONS:
        problems.append(f"regions {list(card.regions)} (expected {list(REGIONS)})")
    if len(card.thresholds) != len(card.regions):
        problems.append("thresholds (one per region expected)")
    if len(card.patch_size) != 3 or any(p % card.size_divisor for p in card.patch_size):
        problems.append(f"patch_size {list(card.patch_size)} (3 sizes divisible by {card.size_divisor})")
    if card.axis_order not in ("xyz", "zyx"):
        problems.append(f"axis_order '{card.axis_order}' (expected 'xyz' or 'zyx')")
    if card.label_scheme not in ("brats2021", "brats2023"):
        problems.append(f"label_scheme '{card.label_scheme}'")
    if problems:
        raise ArtifactError(f"{source}: invalid model card: " + "; ".join(problems))


@dataclass(frozen=True)
class Artifact:
    """A model file and its card. ``kind`` is 'onnx' or 'tensorrt'."""

    path: Path
    card: ModelCard
    kind: str


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def load_artifact(path: str | Path) -> Artifact:
    """Read the card of an ONNX file or a TensorRT plan (via its sidecar) without loading weights."""
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
    props = read_onnx_metadata(path)
    if CARD_KEY not in props:
        raise ArtifactError(f"{path}: ONNX model has no seg-edge card (metadata key '{CARD_KEY}'); "
                            "export it with 'seg-edge export'")
    return Artifact(path, ModelCard.from_json(props[CARD_KEY], str(path)), "onnx")


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: Any, pos: int, end: int):
    """Yield (field_number, wire_type, value_or_span) over one protobuf message."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            yield number, wire, None
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("length past end")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("message overruns its end")


_MODEL_METADATA_PROPS = 14  # ModelProto.metadata_props (onnx.proto)
_MODEL_GRAPH = 7


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """Return an ONNX file's ``metadata_props`` as a dict; ArtifactError if it is not ONNX."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props: dict[str, str] = {}
            has_graph = False
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number == _MODEL_GRAPH and wire == 2:
                    has_graph = True
                if number == _MODEL_METADATA_PROPS and wire == 2:
                    entry = {n: bytes(buf[s:e]).decode("utf-8")
                             for n, w, (s, e) in _fields(buf, *value) if w == 2}
                    props[entry.get(1, "")] = entry.get(2, "")
    except (ValueError, UnicodeDecodeError, TypeError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    if not has_graph:
        raise ArtifactError(f"{path}: not an ONNX model (no graph found)")
    return props
