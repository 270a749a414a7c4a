"""Torch network + model card → one self-contained, verified ONNX file carrying the card.

``export_network`` is the one path every source takes (the presets' ``export_onnx`` and each
importer in ``seg_edge.importers``): the network is exported with symbolic spatial sizes that are
multiples of the card's size divisor, InstanceNorm is rewritten into a numerically stable
subgraph, and the file is written only after ONNX Runtime reproduces the torch logits on a seeded
input within tolerance; the measured error is recorded in the card's provenance.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_edge import __version__
from seg_edge.card import CARD_KEY, ModelCard
from seg_edge.choices import InstanceNorm
from seg_edge.errors import ArtifactError, InputError, ParityError
from seg_edge.export.graph import name_nodes_by_module
from seg_edge.export.norm import stabilise_instance_norms
from seg_edge.model.checkpoints import load_network, sha256
from seg_edge.model.networks import card_for
from seg_edge.runtime.atomic import atomic_write

DEFAULT_OPSET = 18
_AXIS_NAMES = ("x", "y", "z")


@dataclass(frozen=True)
class OnnxOptions:
    """``export_network``'s settings; ``instance_norm`` is checked on construction (InputError)."""

    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-3  # max |logit| difference, ORT CPU vs torch, on the check input, x logit_scale
    check_shape: tuple[int, ...] | None = None  # spatial sizes of the check input; default: the card's patch
    seed: int = 0
    instance_norm: InstanceNorm = InstanceNorm.stable

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_norm", InstanceNorm(self.instance_norm))


@dataclass(frozen=True)
class ExportOptions:
    """``export_onnx``'s settings (a preset checkpoint); ``instance_norm`` is checked on construction."""

    preset: str = "edge"
    name: str | None = None
    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-3
    check_shape: tuple[int, ...] | None = None
    seed: int = 0
    instance_norm: InstanceNorm = InstanceNorm.stable
    extra_provenance: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_norm", InstanceNorm(self.instance_norm))

    @property
    def onnx(self) -> OnnxOptions:
        """The export settings proper, as ``export_network`` takes them."""
        return OnnxOptions(self.opset, self.tolerance, self.check_shape, self.seed, self.instance_norm)


@dataclass(frozen=True)
class ExportReport:
    """What was written: the file, its card (with provenance), the measured error and the size."""

    path: Path
    card: ModelCard
    max_abs_logit_error: float
    size_bytes: int
    removed_activation: str | None = None  # the network's final softmax/sigmoid module, exported without it


def _check_shape(card: ModelCard, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = tuple(shape or card.patch_size)
    dims, div = card.inputs.spatial_dims, card.size_divisor
    if len(shape) != dims or min(shape) < 1 or any(s % div for s in shape):
        raise InputError(f"check shape {list(shape)} (expected {dims} sizes, each a multiple of the card's "
                         f"size_divisor {div})")
    return shape


def check_input(card: ModelCard, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The seeded verification input: standard normal modality channels, derived channels as the runtime makes them."""
    x = np.random.default_rng(seed).standard_normal((1, card.in_channels) + tuple(shape)).astype(np.float32)
    modal = [i for i, c in enumerate(card.inputs.channels) if c.derived is None]
    for i, channel in enumerate(card.inputs.channels):
        if channel.derived == "nvidia_mask":  # the network only ever sees 0/1 there
            x[:, i] = (x[:, modal] > 0).all(axis=1)
    return x


def _torch_reference(net, x: np.ndarray, card: ModelCard):
    """(the network's output on ``x``, the final activation that made it or None, its logits); InputError if it
    refuses the card's input or gives the wrong shape."""
    import torch

    from seg_edge.export.activation import run_recording

    try:
        with torch.no_grad():
            out, final, logits = run_recording(net, torch.from_numpy(x))
    except Exception as exc:  # a user's network can raise anything on a wrong input
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"network refuses the card's input {list(x.shape)} ({type(exc).__name__}: {first})") from exc
    if not isinstance(out, torch.Tensor):
        raise InputError(f"network returns {type(out).__name__} (expected one logits tensor; in eval mode, "
                         "deep-supervision heads must not be returned)")
    expected = (1, card.out_channels) + x.shape[2:]
    if tuple(out.shape) != expected:
        raise InputError(f"network output has shape {list(out.shape)} for input {list(x.shape)} (expected "
                         f"{list(expected)}: outputs.channels {list(card.outputs.channels)} at the input's size)")
    return out.float().numpy(), final, logits.float().numpy()


def _logits_network(net, x: np.ndarray, card: ModelCard):
    """(a network that gives logits, its logits on ``x``, the final activation removed or None).

    A network whose output is already its softmax/sigmoid would be activated twice by the runtime: a
    final activation module is replaced by Identity (said in the report); one called inside forward()
    cannot be removed and is refused, as is an output that is probabilities by its values.
    """
    from seg_edge.export.activation import looks_like_probabilities, without_final_module

    out, final, logits = _torch_reference(net, x, card)
    if final is None:
        if looks_like_probabilities(out, card.out_channels):
            raise InputError(f"network output on the check input is in [0, 1] and sums to 1 over its "
                             f"{card.out_channels} channels: probabilities, not the logits the card promises "
                             "(give --network a network that returns the values before its softmax)")
        return net, out, None
    what = final.describe()
    if final.kind != card.outputs.kind:
        raise ArtifactError(f"network ends in {what} but the card's outputs.kind is '{card.outputs.kind}' "
                            f"(expected a {final.kind} card, or a network that returns logits)")
    if final.kind == "softmax" and final.dim != 1:
        raise ArtifactError(f"network ends in {what} over axis {final.dim} (expected a softmax over the "
                            "channels, axis 1)")
    if final.module is None:
        raise InputError(f"network ends in {what}, called inside its forward(), which seg-edge cannot remove "
                         "(the card's activation is applied by the runtime): give --network a network that "
                         "returns the values before it")
    return without_final_module(net, final), logits, what


def _torch_to_onnx(net, card: ModelCard, opset: int, path: Path) -> None:
    import torch

    div = card.size_divisor
    # Traced with fake tensors, so size costs nothing; at least 2 x the divisor per axis, or the
    # deepest level is 1 voxel wide and InstanceNorm's size check pins that axis to one value.
    shape = tuple(max(p, 2 * div) for p in card.patch_size)
    dummy = torch.zeros((1, card.in_channels) + shape)
    # torch.export-based exporter; spatial sizes are symbolic multiples of the size divisor,
    # which a U-Net's down/up-sampling needs, so the graph states it ("16*x").
    spatial = {axis + 2: div * torch.export.Dim(_AXIS_NAMES[axis], min=1, max=2048 // div)
               for axis in range(len(shape))}
    chatter = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # "torchvision is not installed" lines say nothing about this model
    try:
        with warnings.catch_warnings():
            # torch's own deepcopy of the program's call graph warns that torch's pytree API is deprecated
            # (torch 2.13): a note to torch, not to the user, who saw it on every import
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            program = torch.onnx.export(net, (dummy,), dynamo=True, input_names=[card.input_name],
                                        output_names=[card.output_name], opset_version=opset, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256), **spatial},),
                                        optimize=True)
    except Exception as exc:  # the exporter raises many types for graphs it cannot trace
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"torch.onnx.export cannot export this network with spatial sizes that are multiples "
                            f"of {div} ({type(exc).__name__}: {first})") from exc
    finally:
        chatter.setLevel(level)
    if program is None:  # torch returns None only for its legacy TorchScript path, which dynamo=True never takes
        raise ArtifactError("torch.onnx.export returned no program (expected one from the dynamo exporter)")
    program.save(str(path))


def _ort_logits(path: Path, card: ModelCard, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([card.output_name], {card.input_name: x})[0]


def logit_scale(logits: np.ndarray) -> float:
    """What the verification tolerance is relative to: the largest |logit|, at least 1.

    float32 rounds relative to magnitude, so a deep network whose logits reach ±200 differs from
    torch by more in absolute terms than one whose logits stay within ±2, with the same precision;
    at ≤ 1 the tolerance is the absolute one (logits near 0 decide labels).
    """
    return max(1.0, float(np.abs(logits).max()))


def _provenance(card: ModelCard, options: OnnxOptions, shape: tuple[int, ...], measured: tuple[float, float]) -> dict:
    import monai
    import onnx
    import torch

    return {
        **card.provenance,
        "importer": f"seg-edge {__version__}",
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"seg_edge": __version__, "torch": torch.__version__, "monai": monai.__version__,
                     "onnx": onnx.__version__},
        "opset": options.opset,
        "instance_norm": options.instance_norm.value,
        "export_check": {"input_shape": [1, card.in_channels, *shape], "seed": options.seed,
                         "max_abs_logit_error": measured[0], "logit_scale": measured[1],
                         "tolerance": options.tolerance},
    }


def export_network(net, card: ModelCard, out: Path, options: OnnxOptions = OnnxOptions()) -> ExportReport:
    """Torch ``net`` described by ``card`` → verified ONNX at ``out``. Nothing is written if any check fails.

    The card is validated first (ArtifactError), the network is run on the seeded check input
    (InputError if it does not take the card's channels or give its output channels), and the
    ONNX graph must reproduce the logits within ``options.tolerance`` times ``logit_scale`` (ParityError).
    A final softmax/sigmoid module is removed (``ExportReport.removed_activation``); one called inside
    forward(), or an output that is probabilities by its values, is refused.
    """
    import onnx

    out = Path(out)
    card = ModelCard.from_json(card.to_json(), "model card")  # what is written must load
    shape = _check_shape(card, options.check_shape)
    net = net.eval()
    x = check_input(card, shape, options.seed)
    net, reference, removed = _logits_network(net, x, card)  # against torch's own InstanceNorm
    if removed:
        card = card.replace(provenance={**card.provenance, "removed_output_activation": removed})
    net = copy.deepcopy(net)
    if options.instance_norm is InstanceNorm.stable:
        stabilise_instance_norms(net, card.inputs.spatial_dims + 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:  # nothing reaches ``out`` unless verification passes
        _torch_to_onnx(net, card, options.opset, tmp)
        error = float(np.abs(_ort_logits(tmp, card, x) - reference).max())
        scale = logit_scale(reference)
        if not error <= options.tolerance * scale:
            raise ParityError(f"{out}: ONNX Runtime differs from torch by {error:.3g} in logits (tolerance "
                              f"{options.tolerance:g} x the logits' scale {scale:.3g}); nothing written")
        card = card.replace(provenance=_provenance(card, options, shape, (error, scale)))
        model = onnx.load(str(tmp))
        name_nodes_by_module(model)
        write_card(model, card)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp), save_as_external_data=False)
    return ExportReport(out, card, error, out.stat().st_size, removed)


def export_onnx(checkpoint: Path, out: Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    """A preset checkpoint → verified ONNX with card (the preset shortcut of ``export_network``)."""
    checkpoint = Path(checkpoint)
    net, filters = load_network(checkpoint, options.preset)
    card = card_for(options.preset, options.name, filters)
    digest = sha256(checkpoint)
    provenance = {**card.provenance, "source_file": checkpoint.name, "source_sha256": digest,
                  "checkpoint": checkpoint.name, "checkpoint_sha256": digest, **(options.extra_provenance or {})}
    return export_network(net, card.replace(provenance=provenance), out, options.onnx)


def write_card(model, card: ModelCard) -> None:
    """Set (replace) the card entry in an ``onnx.ModelProto``'s metadata_props."""
    keep = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    model.producer_name = "seg-edge"
    model.producer_version = __version__
