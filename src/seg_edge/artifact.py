"""The model card: everything the runtime needs to segment with a model, stored with the model.

ONNX files carry the card as JSON under the ``seg_edge.card`` key of ``metadata_props``;
TensorRT plans carry it in a sidecar ``<plan>.json`` so that the plan stays loadable by plain
TensorRT. Reading the card from an ONNX file needs neither ``onnx`` nor ``onnxruntime``: the
protobuf is walked directly — metadata and the graph's declared inputs and outputs are read,
nodes and weights are skipped, not parsed.

The card itself is ``seg_edge.card`` (schema 2, docs/CARD.md). Here a card is also checked
against its ONNX graph: the input and output it names exist with the rank and channel counts
the card implies. Any defect is an ``ArtifactError`` naming the file, the field, the value
found and the value expected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from seg_edge.card import CARD_KEY, ModelCard
from seg_edge.errors import ArtifactError
from seg_edge.onnxproto import ELEM_TYPES, OnnxHeader, TensorInfo, read_onnx_header

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


def channel_axis(layout: str, rank: int) -> int:
    """The channel axis of a graph tensor of ``rank`` in the card's ``layout``."""
    return rank - 1 if layout == "channels_last" else 1


def _tensor_problems(info: TensorInfo, what: str, channel_field: str, channels: int, rank: int,
                     layout: str = "channels_first") -> list[str]:
    problems = []
    if info.elem_type not in (0, _FLOAT):
        problems.append(f"graph {what} '{info.name}' is {ELEM_TYPES.get(info.elem_type, info.elem_type)} "
                        "(expected float32: the runtime feeds and reads float32)")
    if info.dims is None:
        return problems
    if len(info.dims) != rank:
        problems.append(f"graph {what} '{info.name}' has rank {len(info.dims)} (expected {rank}: N, C and "
                        f"{rank - 2} spatial axes)")
    elif isinstance(info.dims[axis := channel_axis(layout, rank)], int) and info.dims[axis] != channels:
        hint = "" if layout == "channels_last" or info.dims[-1] != channels else \
            f" and {channels} in its last dim (a channels-last graph: state {what}s.layout \"channels_last\")"
        problems.append(f"{channel_field} gives {channels} {what} channels but graph {what} '{info.name}' "
                        f"has {info.dims[axis]} (dim {axis}){hint}")
    return problems


def check_card_graph(card: ModelCard, header: OnnxHeader, source: str) -> None:
    """ArtifactError unless the card's input/output names and channel counts fit the ONNX graph.

    A dimension the graph leaves symbolic or unknown is not checked; a fixed one must match.
    """
    problems = []
    rank = card.inputs.spatial_dims + 2
    ends = (("input", "inputs.tensor", card.input_name, header.inputs,
             f"inputs.channels {[c.name for c in card.inputs.channels]}", card.in_channels, card.inputs.layout),
            ("output", "outputs.tensor", card.output_name, header.outputs,
             f"outputs.channels {list(card.outputs.channels)}", card.out_channels, card.outputs.layout))
    for what, key, name, infos, channel_field, channels, layout in ends:
        found = next((info for info in infos if info.name == name), None)
        if found is None:
            names = [info.name for info in infos][:8]
            problems.append(f"{key} '{name}' is not a graph {what} (graph {what}s: {names})")
        else:
            problems += _tensor_problems(found, what, channel_field, channels, rank, layout)
    if problems:
        raise ArtifactError(f"{source}: model card does not fit its graph: " + "; ".join(problems))
