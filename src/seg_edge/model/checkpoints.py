"""Load DynUNet state dicts safely (``weights_only=True``) and recover their filter widths."""

from __future__ import annotations

from pathlib import Path

from seg_edge.artifact import file_sha256 as sha256  # noqa: F401  (export.onnx imports it from here)
from seg_edge.errors import InputError
from seg_edge.model.networks import build_network, get_preset


def load_state_dict(path: Path) -> dict:
    """A state dict from a checkpoint file (a bare state dict or a training ``last.pt``)."""
    import torch

    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles / zips
        raise InputError(f"{path}: not a loadable weights-only torch checkpoint ({exc.__class__.__name__})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"{path}: checkpoint holds no state dict")
    return state


def infer_filters(state: dict, preset: str) -> tuple[int, ...]:
    """Filter widths of a DynUNet from its weights (input block, down blocks, bottleneck)."""
    levels = len(get_preset(preset).strides)
    keys = ["input_block.conv1.conv.weight"]
    keys += [f"downsamples.{i}.conv1.conv.weight" for i in range(levels - 2)]
    keys += ["bottleneck.conv1.conv.weight"]
    missing = [k for k in keys if k not in state]
    if missing:
        raise InputError(f"checkpoint does not match preset '{preset}' ({levels} levels): "
                         f"missing {missing[0]}")
    return tuple(int(state[k].shape[0]) for k in keys)


def load_network(path: Path, preset: str):
    """Build the preset's DynUNet at the checkpoint's widths and load the weights strictly."""
    state = load_state_dict(path)
    filters = infer_filters(state, preset)
    net = build_network(preset, filters)
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        bad = (result.missing_keys or result.unexpected_keys)[0]
        raise InputError(f"{path}: weights do not fit preset '{preset}' (first mismatch: {bad})")
    return net.eval(), filters
