"""Value rules of the model card (schema 2): every name one the runtime implements, every
number in range, the parts consistent with each other. Types are checked by ``card._build``."""

from __future__ import annotations

from seg_edge.card import (BACKS, BLENDS, CROPS, DERIVED, INTERPOLATIONS, KINDS, LABEL_SCHEMES, LABEL_SETS, LABELS,
                           LAYOUTS, MODALITIES, NORMALIZATIONS, PRECISION_HINTS, PRECISIONS, PROFILE_BACKENDS, SPACES,
                           REGIONS, RULES, STEPS, Inputs, ModelCard, Outputs, SliceSpec, show)
from seg_edge.errors import ArtifactError


def _choice(where: str, value: object, allowed: tuple[object, ...]) -> list[str]:
    return [] if value in allowed else [f"{where} {show(value)} (expected one of {list(allowed)})"]


def _slice_problems(sl: SliceSpec) -> list[str]:
    problems = _choice("inputs.slice.axis", sl.axis, (0, 1, 2))
    if len(sl.size) != 2 or min(sl.size, default=0) < 1:
        problems.append(f"inputs.slice.size {list(sl.size)} (expected 2 sizes >= 1)")
    problems += _choice("inputs.slice.interpolation", sl.interpolation, INTERPOLATIONS)
    problems += _choice("inputs.slice.back", sl.back, BACKS)
    problems += _choice("inputs.slice.back_interpolation", sl.back_interpolation, INTERPOLATIONS)
    if sl.back == "labels" and sl.back_interpolation != "nearest":
        problems.append(f"inputs.slice.back_interpolation {show(sl.back_interpolation)} with back \"labels\" "
                        "(expected \"nearest\": labels cannot be interpolated)")
    if sl.range is not None and (len(sl.range) != 2 or not 0 <= sl.range[0] < sl.range[1]):
        problems.append(f"inputs.slice.range {list(sl.range)} (expected null or [start, stop] with "
                        "0 <= start < stop)")
    return problems


def _input_problems(inputs: Inputs) -> list[str]:
    problems = []
    names = [c.name for c in inputs.channels]
    if not names or len(set(names)) != len(names):
        problems.append(f"inputs.channels {names} (expected one or more distinct channels)")
    for i, c in enumerate(inputs.channels):
        where = f"inputs.channels[{i}]"
        if c.derived is None:
            problems += _choice(f"{where}.name", c.name, MODALITIES)
            problems += _choice(f"{where}.normalization", c.normalization, NORMALIZATIONS)
        else:
            problems += _choice(f"{where}.derived", c.derived, DERIVED)
    if not any(c.derived is None for c in inputs.channels):
        problems.append("inputs.channels has no modality (expected at least one of flair, t1, t1ce, t2)")
    problems += _choice("inputs.crop", inputs.crop, CROPS)
    if sorted(inputs.axes) != [0, 1, 2]:
        problems.append(f"inputs.axes {list(inputs.axes)} (expected a permutation of [0, 1, 2])")
    problems += _choice("inputs.spatial_dims", inputs.spatial_dims, (2, 3))
    if inputs.spatial_dims == 2:
        sl = inputs.slice
        if sl is None:
            problems.append("inputs.slice is null (expected {axis, size, interpolation} for a 2D model)")
        else:
            problems += _slice_problems(sl)
    elif inputs.slice is not None:
        problems.append("inputs.slice is set for a 3D model (expected null)")
    problems += _choice("inputs.layout", inputs.layout, LAYOUTS)
    problems += _choice("inputs.space", inputs.space, SPACES)
    if not inputs.tensor:
        problems.append("inputs.tensor is empty (expected the graph input's name)")
    if inputs.spacing is not None and (len(inputs.spacing) != 3 or not all(0 < s < 100 for s in inputs.spacing)):
        problems.append(f"inputs.spacing {list(inputs.spacing)} (expected 3 voxel sizes in mm, each in (0, 100))")
    codes = inputs.orientation
    axes_of = sorted(codes.translate(str.maketrans("LPI", "RAS"))) if codes is not None else []
    if codes is not None and (len(codes) != 3 or axes_of != ["A", "R", "S"]):
        problems.append(f"inputs.orientation {show(codes)} (expected 3 axis codes, one of R/L, A/P, S/I each, "
                        "like \"RAS\")")
    return problems


def _output_problems(outputs: Outputs, scheme: str) -> list[str]:
    problems = _choice("outputs.kind", outputs.kind, KINDS)
    names = list(outputs.channels)
    # the label names of the card's set (an unknown scheme is reported on its own: the 2021 names meanwhile)
    labels = tuple(LABEL_SETS[scheme]) if scheme in LABEL_SETS else LABELS
    classes = ("background",) + labels
    allowed = REGIONS if outputs.kind == "sigmoid" else classes
    if not names or len(set(names)) != len(names) or any(n not in allowed for n in names):
        problems.append(f"outputs.channels {names} (expected distinct names from {list(allowed)})")
    if outputs.kind == "sigmoid":
        if len(outputs.thresholds) != len(names) or not all(0 < t < 1 for t in outputs.thresholds):
            problems.append(f"outputs.thresholds {list(outputs.thresholds)} (expected one per channel, each in (0, 1))")
        problems += _choice("outputs.rule", outputs.rule, RULES)
        for i, pair in enumerate(outputs.order):
            if len(pair) != 2 or pair[0] not in names or pair[1] not in labels:
                problems.append(f"outputs.order[{i}] {list(pair)} (expected [region of outputs.channels, "
                                f"one of {list(labels)}])")
        if not outputs.order:
            problems.append("outputs.order is empty (expected [[region, label], ...])")
    for key, value in outputs.source_labels.items():
        if value not in classes:
            problems.append(f"outputs.source_labels[{show(key)}] {show(value)} (expected one of {list(classes)})")
    problems += _choice("outputs.layout", outputs.layout, LAYOUTS)
    if not outputs.tensor:
        problems.append("outputs.tensor is empty (expected the graph output's name)")
    return problems


def _inference_problems(card: ModelCard) -> list[str]:
    inf, dims = card.inference, card.inputs.spatial_dims
    problems = []
    div = inf.size_divisor
    if div < 1:
        problems.append(f"inference.size_divisor {div} (expected an integer >= 1)")
    patch = list(inf.patch_size)
    if len(patch) != dims or min(patch, default=0) < 1 or (div >= 1 and any(p % div for p in patch)):
        problems.append(f"inference.patch_size {patch} (expected {dims} sizes >= 1, each a multiple of "
                        f"size_divisor {div})")
    sl = card.inputs.slice
    if dims == 2 and sl is not None and tuple(patch) != tuple(sl.size):
        problems.append(f"inference.patch_size {patch} (expected the 2D network's input size, inputs.slice.size "
                        f"{list(sl.size)})")
    if not 0 <= inf.overlap < 1:
        problems.append(f"inference.overlap {inf.overlap} (expected 0 <= overlap < 1)")
    problems += _choice("inference.blend", inf.blend, BLENDS)
    problems += _choice("inference.steps", inf.steps, STEPS)
    if len(set(inf.tta_axes)) != len(inf.tta_axes) or any(a not in range(dims) for a in inf.tta_axes):
        problems.append(f"inference.tta_axes {list(inf.tta_axes)} (expected distinct network axes in 0..{dims - 1})")
    if inf.ensemble < 1:
        problems.append(f"inference.ensemble {inf.ensemble} (expected an integer >= 1)")
    rule = inf.et_rule
    for key in ("component_max_voxels", "total_max_voxels"):
        if getattr(rule, key) < 0:
            problems.append(f"inference.et_rule.{key} {getattr(rule, key)} (expected an integer >= 0)")
    if not 0 <= rule.max_mean_prob <= 1:
        problems.append(f"inference.et_rule.max_mean_prob {rule.max_mean_prob} (expected a number in [0, 1])")
    if rule.enabled and "ET" not in card.outputs.channels:
        problems.append("inference.et_rule is enabled but no output channel is ET (expected enabled: false)")
    return problems


def _profile_problems(card: ModelCard) -> list[str]:
    prof = card.profile
    if prof is None:
        return []
    problems = _choice("profile.backend", prof.backend, PROFILE_BACKENDS)
    if prof.precision_hint is not None:
        problems += _choice("profile.precision_hint", prof.precision_hint, PRECISION_HINTS)
    if prof.threads is not None and prof.threads < 1:
        problems.append(f"profile.threads {prof.threads} (expected an integer >= 1, or null)")
    patch, div, window = card.inference.patch_size, card.inference.size_divisor, list(prof.window)
    if window and (len(window) != len(patch) or card.inputs.spatial_dims != 3
                   or any(w < p or (div >= 1 and w % div) for w, p in zip(window, patch))):
        problems.append(f"profile.window {window} (expected [] or, for a 3D model, {len(patch)} sizes >= the patch "
                        f"{list(patch)}, each a multiple of size_divisor {div})")
    if not 0 <= prof.overlap < 1:
        problems.append(f"profile.overlap {prof.overlap} (expected 0 <= overlap < 1)")
    problems += _choice("profile.blend", prof.blend, BLENDS) + _choice("profile.steps", prof.steps, STEPS)
    if prof.batch_size < 1:
        problems.append(f"profile.batch_size {prof.batch_size} (expected an integer >= 1)")
    if prof.streams < 1:
        problems.append(f"profile.streams {prof.streams} (expected an integer >= 1)")
    if not 0 <= prof.budget <= 1:
        problems.append(f"profile.budget {prof.budget} (expected a number in [0, 1])")
    if not prof.machine.cpu or prof.machine.cores < 1:
        problems.append(f"profile.machine cpu {show(prof.machine.cpu)}, cores {prof.machine.cores} "
                        "(expected a CPU name and cores >= 1)")
    return problems


def validate_card(card: ModelCard, source: str = "card") -> None:
    """ArtifactError naming ``source`` unless every value of a well-typed card is in range."""
    problems = [] if card.name else ["name is empty (expected a non-empty string)"]
    problems += _input_problems(card.inputs) + _output_problems(card.outputs, card.label_scheme)
    problems += _inference_problems(card)
    problems += _profile_problems(card)
    problems += _choice("label_scheme", card.label_scheme, LABEL_SCHEMES)
    problems += _choice("precision", card.precision, PRECISIONS)
    for key in ("max_prob_diff", "min_region_dice"):
        value = getattr(card.tolerances, key)
        if not 0 <= value <= 1:  # also refuses NaN
            problems.append(f"tolerances.{key} {value} (expected a number in [0, 1])")
    if problems:
        raise ArtifactError(f"{source}: invalid model card: " + "; ".join(problems))
