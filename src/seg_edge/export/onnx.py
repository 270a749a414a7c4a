"""Export a DynUNet checkpoint to one self-contained ONNX file carrying its model card.

The file is written only after ONNX Runtime reproduces the torch logits on a seeded input
within tolerance; the measured error is recorded in the card.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_edge.choices import InstanceNorm
from seg_edge import __version__
from seg_edge.artifact import CARD_KEY, ModelCard
from seg_edge.errors import InputError, ParityError
from seg_edge.model.checkpoints import load_network, sha256
from seg_edge.export.graph import name_nodes_by_module
from seg_edge.export.norm import stabilise_instance_norms
from seg_edge.model.networks import card_for
from seg_edge.runtime.atomic import atomic_write

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportOptions:
    """``export_onnx``'s settings; ``instance_norm`` is checked on construction (InputError)."""

    preset: str = "edge"
    name: str | None = None
    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-3  # max |logit| difference, ORT CPU vs torch, on the check input
    check_shape: tuple[int, int, int] | None = None  # default: the card's patch size
    seed: int = 0
    instance_norm: InstanceNorm = InstanceNorm.stable
    extra_provenance: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_norm", InstanceNorm(self.instance_norm))


@dataclass(frozen=True)
class ExportReport:
    path: Path
    card: ModelCard
    max_abs_logit_error: float
    size_bytes: int


def _torch_to_onnx(net, card: ModelCard, shape: tuple[int, ...], opset: int, path: Path) -> None:
    import torch

    dummy = torch.zeros((1, card.in_channels) + tuple(shape))
    div = card.size_divisor
    # torch.export-based exporter; spatial sizes are symbolic multiples of the size divisor,
    # which the U-Net's down/up-sampling needs, so the graph states it ("16*x").
    spatial = {axis: div * torch.export.Dim(name, min=1, max=2048 // div)
               for axis, name in ((2, "x"), (3, "y"), (4, "z"))}
    chatter = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # "torchvision is not installed" lines say nothing about this model
    try:
        program = torch.onnx.export(net, (dummy,), dynamo=True, input_names=[card.input_name],
                                    output_names=[card.output_name], opset_version=opset, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256), **spatial},),
                                    optimize=True)
    finally:
        chatter.setLevel(level)
    program.save(str(path))


def _verify(net, path: Path, card: ModelCard, shape: tuple[int, ...], seed: int) -> float:
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).standard_normal((1, card.in_channels) + tuple(shape)).astype(np.float32)
    if card.mask_channel != "none":
        x[:, -1] = (x[:, :-1] > 0).all(axis=1)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([card.output_name], {card.input_name: x})[0]
    return float(np.abs(got - ref).max())


def export_onnx(checkpoint: Path, out: Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    """Checkpoint → verified ONNX with card. Nothing is written if verification fails."""
    import onnx
    import torch
    import monai

    checkpoint, out = Path(checkpoint), Path(out)
    net, filters = load_network(checkpoint, options.preset)
    reference = copy.deepcopy(net)  # verification compares against torch's own InstanceNorm
    if options.instance_norm is InstanceNorm.stable:
        stabilise_instance_norms(net)
    card = card_for(options.preset, options.name, filters)
    shape = options.check_shape or card.patch_size
    if any(s % card.size_divisor for s in shape):
        raise InputError(f"check shape {shape} (expected multiples of {card.size_divisor})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:  # nothing reaches ``out`` unless verification passes
        _torch_to_onnx(net, card, shape, options.opset, tmp)
        error = _verify(reference, tmp, card, shape, options.seed)
        if not error <= options.tolerance:
            raise ParityError(f"{out}: ONNX Runtime differs from torch by {error:.3g} in logits "
                              f"(tolerance {options.tolerance:g}); nothing written")
        provenance = {
            **card.provenance,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": sha256(checkpoint),
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"seg_edge": __version__, "torch": torch.__version__, "monai": monai.__version__,
                         "onnx": onnx.__version__},
            "opset": options.opset,
            "instance_norm": options.instance_norm.value,
            "export_check": {"input_shape": [1, card.in_channels, *shape], "seed": options.seed,
                             "max_abs_logit_error": error, "tolerance": options.tolerance},
            **(options.extra_provenance or {}),
        }
        card = card.replace(provenance=provenance)
        model = onnx.load(str(tmp))
        name_nodes_by_module(model)
        write_card(model, card)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp), save_as_external_data=False)
    return ExportReport(out, card, error, out.stat().st_size)


def write_card(model, card: ModelCard) -> None:
    """Set (replace) the card entry in an ``onnx.ModelProto``'s metadata_props."""
    keep = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    model.producer_name = "seg-edge"
    model.producer_version = __version__
