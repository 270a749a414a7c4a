"""Attach a model card to an ONNX file made elsewhere (tf2onnx from Keras, another exporter, …).

The card is checked against the graph before anything is written, with the torch- and
onnxruntime-free header reader: input and output names, float32, rank (spatial_dims + 2),
channel counts, and fixed spatial sizes against the card's patch. Writing needs ``onnx``: a final
Sigmoid or channel Softmax that turns the graph's output into probabilities is removed, because
the card promises logits and the runtime applies the card's activation itself (a Sigmoid on a
softmax card, or the other way round, is refused). Nothing is written unless every check passes.

Keras graphs are channels-last: state it in the card (``inputs.layout`` / ``outputs.layout``
"channels_last"), or convert with ``tf2onnx --inputs-as-nchw … --outputs-as-nchw …``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from seg_edge.artifact import check_card_graph
from seg_edge.card import ModelCard
from seg_edge.errors import ArtifactError, InputError
from seg_edge.export.onnx import write_card
from seg_edge.importers.common import read_card_file, refuse_existing_dir, source_provenance
from seg_edge.onnxproto import OnnxHeader, read_onnx_header
from seg_edge.runtime.atomic import atomic_write

_ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}


@dataclass(frozen=True)
class AttachReport:
    """What ``import_onnx`` wrote: the file, its card, its size, the activation removed (if any), warnings."""

    path: Path
    card: ModelCard
    size_bytes: int
    removed_activation: str | None
    warnings: tuple[str, ...]


def check_graph_fits(card: ModelCard, header: OnnxHeader, source: str) -> list[str]:
    """ArtifactError unless the card fits the graph's inputs and outputs; returns warnings.

    Beyond ``check_card_graph`` (names, float32, rank, channel counts): a spatial size the graph
    fixes must be the card's patch size, since the runtime feeds windows of that size.
    """
    check_card_graph(card, header, source)
    graph_input = next(t for t in header.inputs if t.name == card.input_name)
    warnings = []
    if graph_input.dims is not None:
        last = card.inputs.layout == "channels_last"  # N, spatial, C
        batch, spatial = graph_input.dims[0], graph_input.dims[1:-1] if last else graph_input.dims[2:]
        for i, (got, want) in enumerate(zip(spatial, card.patch_size)):
            if isinstance(got, int) and got > 0 and got != want:
                raise ArtifactError(f"{source}: model card does not fit its graph: graph input '{card.input_name}' "
                                    f"fixes spatial axis {i} at {got} but inference.patch_size is "
                                    f"{list(card.patch_size)}")
        if isinstance(batch, int) and batch > 0:
            warnings.append(f"graph input '{card.input_name}' fixes the batch at {batch}: "
                            f"run with --batch-size {batch}")
    return warnings


def _final_activation(graph, output: str, rank: int, channel_axis: int = 1):
    """(Sigmoid/Softmax node, the channel axis at its output), walking back from ``output`` over layout ops.

    tf2onnx's ``--outputs-as-nchw`` puts a Transpose after a Keras model's final activation.
    (None, axis) when the graph does not end in an activation.
    """
    producers = {name: node for node in graph.node for name in node.output}
    axis, node = channel_axis, producers.get(output)
    while node is not None and node.op_type in ("Transpose", "Identity"):
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(rank))[::-1])
            axis = perm[axis]
        node = producers.get(node.input[0])
    return (node, axis) if node is not None and node.op_type in _ACTIVATIONS else (None, axis)


def _strip_activation(model, card: ModelCard, source: str) -> str | None:
    """Turn a final Sigmoid/channel Softmax into Identity so the graph gives logits; returns the op (or None)."""
    rank = card.inputs.spatial_dims + 2
    act, channel_axis = _final_activation(model.graph, card.output_name, rank,
                                          rank - 1 if card.outputs.layout == "channels_last" else 1)
    if act is None:
        return None
    kind = _ACTIVATIONS[act.op_type]
    if kind != card.outputs.kind:
        raise ArtifactError(f"{source}: the graph ends in {act.op_type} but outputs.kind is "
                            f"'{card.outputs.kind}' (expected a {kind} card, or a graph that gives logits)")
    if act.op_type == "Softmax":
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        axis = next((a.i for a in act.attribute if a.name == "axis"), -1 if opset >= 13 else 1) % rank
        if axis != channel_axis or (opset < 13 and axis != rank - 1):  # before opset 13: softmax of a flattened tail
            raise ArtifactError(f"{source}: the final Softmax does not run over the channels (axis {axis}, "
                                f"channels at {channel_axis}, opset {opset}); expected a per-channel softmax")
    uses = sum(act.output[0] in n.input for n in model.graph.node)
    uses += sum(o.name == act.output[0] for o in model.graph.output)
    if uses != 1:
        raise ArtifactError(f"{source}: the final {act.op_type}'s output feeds {uses} places (expected only the "
                            "graph output): cannot give the runtime logits")
    op = act.op_type
    act.op_type, act.domain = "Identity", ""
    del act.attribute[:]
    return op


def import_onnx(model: Path, card: Path | ModelCard, out: Path) -> AttachReport:
    """An ONNX file + a card → ``out``: the same graph (logits) with the card in its metadata."""
    import onnx

    model, out = Path(model), refuse_existing_dir(out)
    if not model.is_file():
        raise InputError(f"{model}: ONNX file not found")
    card = card if isinstance(card, ModelCard) else read_card_file(card)
    warnings = check_graph_fits(card, read_onnx_header(model), str(model))
    proto = onnx.load(str(model))
    removed = _strip_activation(proto, card, str(model))
    facts = source_provenance("onnx", model, attached_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              onnx_producer=f"{proto.producer_name} {proto.producer_version}".strip())
    facts["source_framework"] = card.provenance.get("source_framework", "onnx")
    if removed:
        facts["removed_output_activation"] = removed
    card = card.replace(provenance={**card.provenance, **facts})
    write_card(proto, card)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{model}: the ONNX graph does not pass onnx.checker ({str(exc).splitlines()[0]})") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        onnx.save(proto, str(tmp), save_as_external_data=False)
    return AttachReport(out, card, out.stat().st_size, removed, tuple(warnings))
