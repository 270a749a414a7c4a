"""Older model cards read as schema 2.2 with the behaviour they had (docs/CARD.md, "Schema versions").

Schema 1 (flat fields, seg-edge 0.1) becomes a schema-2.0 dict, a 2.0 dict (no ``schema_minor``)
a 2.1 one, and a 2.1 dict a 2.2 one. A defect is a ValueError whose message ``card.card_from_dict``
puts after the source's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seg_edge.card import CARD_SCHEMA, CARD_SCHEMA_MINOR, MODALITIES, REGIONS, _is_int, show
from seg_edge.errors import ArtifactError


def to_current(raw: dict[str, Any], schema: int, source: str) -> dict[str, Any]:
    """``raw`` (of major ``schema``, already checked) as a 2.2 dict, step by step; ArtifactError naming
    ``source`` for a defect or a newer minor version."""
    steps: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = []
    if schema == 1:
        steps.append(("1", migrate_schema1))
    minor = raw.get("schema_minor")
    if schema != 1 and minor is not None:
        if not _is_int(minor) or minor < 0:
            raise ArtifactError(f"{source}: invalid model card: schema_minor is {show(minor)} (expected an integer "
                                f"0..{CARD_SCHEMA_MINOR})")
        if minor > CARD_SCHEMA_MINOR:
            raise ArtifactError(f"{source}: model card schema {schema}.{minor} is newer than "
                                f"{CARD_SCHEMA}.{CARD_SCHEMA_MINOR}; upgrade seg-edge to read it")
    if schema == 1 or not minor:  # no schema_minor (or 0): a 2.0 card
        steps.append(("2.0", lambda r: migrate_schema2_0({k: v for k, v in r.items() if k != "schema_minor"})))
    if schema == 1 or not minor or minor == 1:
        steps.append(("2.1", migrate_schema2_1))
    for version, step in steps:
        try:
            raw = step(raw)
        except ValueError as exc:
            raise ArtifactError(f"{source}: invalid model card (schema {version}): {exc}") from None
    return raw


def migrate_schema1(raw: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 card (flat fields) as the schema-2 dict with identical behaviour."""
    raw = dict(raw)
    known = {"name", "preset", "modalities", "mask_channel", "regions", "activation", "thresholds",
             "label_scheme", "patch_size", "size_divisor", "normalization", "axis_order", "et_rule",
             "precision", "input_name", "output_name", "tolerances", "provenance", "schema"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"has unknown schema-1 fields {unknown}")
    for key, kind, python_type in (("axis_order", "a string", str), ("mask_channel", "a string", str),
                                   ("activation", "a string", str), ("modalities", "a list", list)):
        if key in raw and not isinstance(raw[key], python_type):
            raise ValueError(f"{key} is {show(raw[key])} (expected {kind})")
    norm = raw.get("normalization", "zscore_nonzero")
    channels = [{"name": m, "normalization": norm} for m in raw.get("modalities", MODALITIES)]
    if raw.get("mask_channel", "nvidia") == "nvidia":
        channels.append({"name": "mask", "normalization": "none", "derived": "nvidia_mask"})
    elif raw.get("mask_channel") != "none":
        raise ValueError(f"mask_channel {show(raw.get('mask_channel'))} (expected 'nvidia' or 'none')")
    if raw.get("activation", "sigmoid") != "sigmoid":
        raise ValueError(f"activation {show(raw.get('activation'))} (expected 'sigmoid')")
    axes = {"xyz": [0, 1, 2], "zyx": [2, 1, 0]}.get(raw.get("axis_order", "xyz"))
    if axes is None:
        raise ValueError(f"axis_order {show(raw.get('axis_order'))} (expected 'xyz' or 'zyx')")
    kept = ("name", "preset", "label_scheme", "precision", "tolerances", "provenance")
    out: dict[str, Any] = {k: raw[k] for k in kept if k in raw}
    out["inputs"] = {"tensor": raw.get("input_name", "image"), "channels": channels, "crop": "nonzero", "axes": axes}
    out["outputs"] = {"tensor": raw.get("output_name", "logits"), "kind": "sigmoid",
                      "channels": raw.get("regions", list(REGIONS)), "thresholds": raw.get("thresholds", [0.5] * 3),
                      "rule": "nested", "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]}
    out["inference"] = {k: raw[k] for k in ("patch_size", "size_divisor", "et_rule") if k in raw}
    out["schema"] = CARD_SCHEMA
    return out


def migrate_schema2_0(raw: dict[str, Any]) -> dict[str, Any]:
    """A schema-2.0 card (no ``schema_minor``) as the 2.1 dict with identical behaviour: its one
    2D ``slice.interpolation`` resized both ways, the logits back; every slice was run."""
    raw = dict(raw)
    inputs = raw.get("inputs")
    if isinstance(inputs, dict) and isinstance(inputs.get("slice"), dict):
        spec = dict(inputs["slice"])
        for key in ("back", "back_interpolation", "range"):
            if key in spec:
                raise ValueError(f"inputs.slice.{key} is a schema-2.1 field (expected \"schema_minor\": 1 with it)")
        spec.update(back="logits", back_interpolation=spec.get("interpolation", "linear"), range=None)
        raw["inputs"] = {**inputs, "slice": spec}
    raw["schema_minor"] = 1
    return raw


def migrate_schema2_1(raw: dict[str, Any]) -> dict[str, Any]:
    """A schema-2.1 card as the 2.2 dict with identical behaviour: ``inputs.space`` "atlas" (the default;
    seg-edge took every input as BraTS-preprocessed, and ran nothing else)."""
    inputs = raw.get("inputs")
    if isinstance(inputs, dict) and "space" in inputs:
        raise ValueError("inputs.space is a schema-2.2 field (expected \"schema_minor\": 2 with it)")
    return {**raw, "schema_minor": CARD_SCHEMA_MINOR}
