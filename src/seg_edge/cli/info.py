"""``seg-edge info``: a model's card (checked against its graph) in words, and the graph's inputs/outputs.

The words are meant to be checked against the source's own documentation: channel order and
normalisation, crop, axis order, slicing, what each output means and how outputs become labels,
the window, TTA, the ensemble, the ET rule and where the model came from (docs/CARD.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from seg_edge.card import CARD_KEY, ModelCard
from seg_edge.cli.console import guarded, out
from seg_edge.cli.options import JSON_OPTION, dumps, model_path

if TYPE_CHECKING:
    from seg_edge.artifact import Artifact
    from seg_edge.onnxproto import OnnxHeader, TensorInfo

ARRAY_AXES = "XYZ"  # the loaded array's axes, as nibabel gives them
NORMALIZATION_WORDS = {
    "zscore_nonzero": "z-score over its non-zero voxels (zeros stay 0)",
    "zscore": "z-score over all voxels",
    "max": "divided by its maximum",
    "none": "as loaded (not normalised)",
}
LAYOUT_WORDS = {"channels_first": "N, C, spatial", "channels_last": "N, spatial, C (channels last)"}
DERIVED_WORDS = {"nvidia_mask": "1 where every normalised modality channel is > 0 (NVIDIA BraTS21 mask)"}
CROP_WORDS = {"nonzero": "to the box where any modality is > 0 (pasted back after)", "none": "none (the whole volume)"}
BLEND_WORDS = {"gaussian": "gaussian blend (σ = 0.125 × window)", "constant": "constant blend"}
# provenance keys shown as their own rows, with the schema-1 exporter's names as fallbacks
SOURCE_KEYS = (("source framework", ("source_framework",)), ("source file", ("source_file", "checkpoint")),
               ("source sha256", ("source_sha256", "checkpoint_sha256")), ("importer", ("importer",)))


def _label_values(card: ModelCard) -> dict[str, int]:
    from seg_edge.runtime.regions import label_map

    return label_map(card.label_scheme, card.label_scheme)


def _array_axes(card: ModelCard, network_axes) -> str:
    return ", ".join(ARRAY_AXES[card.inputs.axes[a]] for a in network_axes)


def channel_words(card: ModelCard) -> str:
    """One line per input channel, in order."""
    lines = []
    for i, channel in enumerate(card.inputs.channels):
        if channel.derived is None:
            how = NORMALIZATION_WORDS.get(channel.normalization, channel.normalization)
        else:
            how = "derived: " + DERIVED_WORDS.get(channel.derived, channel.derived)
        lines.append(f"{i}: {channel.name} — {how}")
    return "\n".join(lines)


def rule_words(card: ModelCard) -> str:
    """How outputs become labels: 'ET → ET (4), else TC → NCR (1), else WT → ED (2)' (sequential)."""
    values, outputs = _label_values(card), card.outputs
    if outputs.kind == "softmax":
        return "arg-max class: " + ", ".join(f"{name} → {values.get(name, '?')}" for name in outputs.channels)
    first = outputs.order[0][0] if outputs.order else ""
    steps = []
    for i, (region, label) in reversed(list(enumerate(outputs.order))):  # later entries overwrite earlier ones
        inside = f" inside {first}" if outputs.rule == "nested" and i and region != first else ""
        steps.append(f"{region}{inside} → {label} ({values.get(label, '?')})")
    words = ", else ".join(steps) + ", else background (0)"
    others = [r for r, _ in outputs.order[1:] if r != first]
    if outputs.rule == "nested" and others:
        words += f"; nested: {', '.join(others)} outside {first} ignored"
    return words


def output_words(card: ModelCard) -> str:
    """What each output channel is."""
    outputs = card.outputs
    if outputs.kind == "softmax":
        return "softmax over classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(outputs.channels))
    return "sigmoid regions: " + ", ".join(f"{i} {name} (p > {t:g})" for i, (name, t)
                                           in enumerate(zip(outputs.channels, outputs.thresholds)))


def source_label_words(card: ModelCard) -> str:
    labels = card.outputs.source_labels
    if not labels:
        return "not stated"
    keys = sorted(labels, key=lambda k: (len(k), k))  # "2" before "10"
    return "the model's label " + ", ".join(f"{k} = {labels[k]}" for k in keys)


def slice_words(card: ModelCard) -> str:
    """Which slices a 2D network sees, how they are resized, and the way back."""
    spec = card.inputs.slice
    if card.inputs.spatial_dims == 3 or spec is None:
        return "none (3D network)"
    which = "all of them" if spec.range is None else \
        f"those at indices {spec.range[0]}..{spec.range[1] - 1} (the others background)"
    back = (f"the logits resized back to the slice ({spec.back_interpolation}) and labelled there"
            if spec.back == "logits" else "labelled at that size, then labels and probabilities resized back to "
            f"the slice ({spec.back_interpolation})")
    return (f"2D network: slices along network axis {spec.axis} (array {_array_axes(card, (spec.axis,))}), {which}, "
            f"each resized to {'×'.join(map(str, spec.size))} ({spec.interpolation}); {back}")


def window_words(card: ModelCard) -> str:
    inf = card.inference
    return (f"patch {'×'.join(map(str, inf.patch_size))}, size divisor {inf.size_divisor}, overlap {inf.overlap:g}, "
            + BLEND_WORDS.get(inf.blend, inf.blend))


def tta_words(card: ModelCard) -> str:
    axes = card.inference.tta_axes
    if not axes:
        return "off"
    return (f"mirroring along network axes {', '.join(map(str, axes))} (array {_array_axes(card, axes)}): "
            f"{2 ** len(axes)} passes averaged")


def et_rule_words(card: ModelCard) -> str:
    rule = card.et_rule
    if not rule.enabled:
        return "off"
    return (f"on: ET components of 2..{rule.component_max_voxels - 1} voxels with mean ET probability "
            f"< {rule.max_mean_prob:g} become NCR; then all ET becomes NCR if it has < {rule.total_max_voxels} "
            f"voxels with mean probability < {rule.max_mean_prob:g}")


def profile_words(card: ModelCard) -> str:
    """The tuned profile in words: what it runs, where it was measured, what tune measured."""
    from seg_edge.runtime.segmenter import describe_profile

    p = card.profile
    if p is None:
        return "none (seg-edge tune writes one)"
    m = p.machine
    measured = ", ".join(f"{k} {v}" for k, v in p.measured.items() if k != "stages")
    return (f"{describe_profile(p)}; budget {p.budget:g} worst-region Dice; measured on {m.cpu} "
            f"({' '.join(m.flags) or 'no flags recorded'}), {m.cores} cores, "
            f"{', '.join(f'{k} {v}' for k, v in m.versions.items())}" + (f"; {measured}" if measured else ""))


SPACE_WORDS = {
    "atlas": "atlas: co-registered, skull-stripped, 1 mm on an atlas grid (BraTS preprocessing; predict --raw makes "
             "it from scanner series)",
    "native": "native: the series as scanned, co-registered onto one of them (predict --raw is refused)",
}


def describe_card(card: ModelCard, stored_schema: int | str | None = None) -> list[tuple[str, str]]:
    """The card as (field, words) rows, provenance last; ``stored_schema``: the version the file holds
    (``stored_version``: "1", "2.0", "2.1", "2.2")."""
    inputs, inf, values = card.inputs, card.inference, _label_values(card)
    identity = tuple(inputs.axes) == (0, 1, 2)
    version = f"{card.schema}.{card.schema_minor}"
    migrated = stored_schema is not None and str(stored_schema) != version
    rows = [
        ("model", f"{card.name} (preset {card.preset})"),
        ("card", f"schema {stored_schema}, read as schema {version}" if migrated else f"schema {version}"),
        (f"input '{inputs.tensor}'", channel_words(card)),
        ("tensor layout", f"input {LAYOUT_WORDS.get(inputs.layout, inputs.layout)}, output "
                          f"{LAYOUT_WORDS.get(card.outputs.layout, card.outputs.layout)}"),
        ("input space", SPACE_WORDS.get(inputs.space, inputs.space)),
        ("crop", CROP_WORDS.get(inputs.crop, inputs.crop)),
        ("axes", f"network axes = array {_array_axes(card, range(3))}" + (" (as loaded)" if identity else "")),
        ("2D slicing", slice_words(card)),
        (f"output '{card.outputs.tensor}'", output_words(card)),
        ("labels", rule_words(card)),
        ("source labels", source_label_words(card)),
        ("window", window_words(card)),
        ("TTA", tta_words(card)),
        ("ensemble", "1 network" if inf.ensemble == 1 else f"{inf.ensemble} networks averaged in logit space"),
        ("ET rule", et_rule_words(card)),
        ("label scheme", f"{card.label_scheme}: " + ", ".join(f"{k} = {v}" for k, v in values.items() if v)),
        ("precision", card.precision),
        ("tolerances", f"max probability difference {card.tolerances.max_prob_diff:g}, min region Dice "
                       f"{card.tolerances.min_region_dice:g} (against the framework reference)"),
        ("tuned profile", profile_words(card)),
    ]
    provenance = dict(card.provenance)
    for label, keys in SOURCE_KEYS:
        key = next((k for k in keys if k in provenance), None)
        rows.append((label, _text(provenance.pop(key)) if key else "not stated"))
    rows += [(f"provenance.{key}", _text(value)) for key, value in provenance.items()]
    return rows


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stored_version(artifact: Artifact) -> str | None:
    """The card version the file stores ("1", "2.0": migrated on load; "2.1"), or None if it cannot be read again."""
    raw = _stored_card(artifact)
    if raw is None:
        return None
    schema = raw.get("schema", 1)
    return str(schema) if schema == 1 else f"{schema}.{raw.get('schema_minor', 0)}"


def stored_schema(artifact: Artifact) -> int | None:
    """The schema number the file stores (1: migrated on load), or None if it cannot be read again."""
    raw = _stored_card(artifact)
    return None if raw is None else raw.get("schema", 1)


def _stored_card(artifact: Artifact) -> dict | None:
    from seg_edge.artifact import sidecar_path
    from seg_edge.onnxproto import read_onnx_metadata

    try:
        if artifact.kind == "onnx":
            raw = json.loads(read_onnx_metadata(artifact.path)[CARD_KEY])
        else:
            raw = json.loads(sidecar_path(artifact.path).read_text())["card"]
        return raw if isinstance(raw, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


@guarded
def info(model: Path = typer.Argument(None, help="ONNX model or TensorRT plan (default: the shipped model)."),
         json_out: bool = JSON_OPTION) -> None:
    """Show what a model expects and produces (its seg-edge card), in words."""
    from seg_edge.artifact import load_artifact

    path = model_path(model)
    header = _cardless_onnx(path)
    if header is not None:
        _show_cardless(path, header, json_out)
        return
    artifact = load_artifact(path)
    stored = stored_schema(artifact)
    graph = {"inputs": [dataclasses.asdict(t) for t in artifact.inputs],
             "outputs": [dataclasses.asdict(t) for t in artifact.outputs]}
    if json_out:
        out.print_json(dumps({"path": str(artifact.path), "kind": artifact.kind,
                              "size_bytes": artifact.path.stat().st_size, "stored_schema": stored,
                              "card": json.loads(artifact.card.to_json()),  # as files store it
                              **({"graph": graph} if artifact.kind == "onnx" else {})}))
        return
    table = Table(title=f"{artifact.path} ({artifact.kind}, {artifact.path.stat().st_size / 1e6:.1f} MB)",
                  title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = describe_card(artifact.card, stored_version(artifact))
    graph_rows = [("graph input", t.describe()) for t in artifact.inputs]
    graph_rows += [("graph output", t.describe()) for t in artifact.outputs]
    if artifact.kind != "onnx":
        graph_rows = [("graph", "a TensorRT plan: inputs and outputs are the card's")]
    at = next(i for i, (key, _) in enumerate(rows) if key == "source framework")
    for key, value in rows[:at] + graph_rows + rows[at:]:
        table.add_row(escape(key), escape(value))
    out.print(table)


CARDLESS_NOTE = ("no seg-edge card: write one for these inputs and outputs (docs/CARD.md) and attach it with "
                 "seg-edge import onnx MODEL --card CARD --out OUT")


def _cardless_onnx(path: Path) -> OnnxHeader | None:
    """The header of an ONNX file that has no seg-edge card; None for anything load_artifact should judge."""
    from seg_edge.onnxproto import read_onnx_header

    if not path.is_file() or path.suffix in (".plan", ".engine"):
        return None
    header = read_onnx_header(path)
    return None if CARD_KEY in header.metadata else header


def _show_cardless(path: Path, header: OnnxHeader, json_out: bool) -> None:
    """What a card is written from: each graph input and output's name, element type and shape (symbolic
    dimensions by name)."""
    from seg_edge.onnxproto import ELEM_TYPES

    def tensor(t: TensorInfo) -> dict[str, Any]:  # the keys of a carded model's "graph", plus the type's name
        return {**dataclasses.asdict(t), "type": ELEM_TYPES.get(t.elem_type, f"type {t.elem_type}")}

    size = path.stat().st_size
    if json_out:
        out.print_json(dumps({"path": str(path), "kind": "onnx", "size_bytes": size, "card": None,
                              "note": CARDLESS_NOTE, "graph": {"inputs": [tensor(t) for t in header.inputs],
                                                               "outputs": [tensor(t) for t in header.outputs]}}))
        return
    table = Table(title=f"{path} (onnx, {size / 1e6:.1f} MB)", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("card", escape(CARDLESS_NOTE))
    for key, tensors in (("graph input", header.inputs), ("graph output", header.outputs)):
        for t in tensors:
            table.add_row(key, escape(t.describe()))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
