"""Import NVIDIA DeepLearningExamples nnU-Net BraTS checkpoints (PyTorch/Segmentation/nnUNet).

What their code does, and so what this importer assumes (read from their ``nnunet/nn_unet.py``,
``nnunet/brats22_model.py``, ``utils/args.py``, ``data_preprocessing/preprocessor.py`` and the
BraTS21/22 notebooks):

* The file is a PyTorch Lightning checkpoint: ``state_dict`` keys prefixed ``model.``, and
  ``hyper_parameters["args"]`` the training ``argparse.Namespace`` — the one class admitted to
  weights-only loading.
* BraTS21 (``args.brats22_model`` false): MONAI ``DynUNet`` built from ``args`` (filters, res_block,
  norm; LeakyReLU 0.01; transposed-conv bias), kernels and strides from BraTS' 128³ patch at 1 mm
  isotropic spacing (every stride 2). BraTS22 (``args.brats22_model``): their own ``UNet3D``
  (pre-activation conv layers, trilinear upsampling, ReLU), rebuilt here as ``NvidiaUNet3D``.
  Both carry deep-supervision heads for training: they are dropped. Widths and kernels are read
  from the weights, so reduced-width checkpoints import too.
* Input: FLAIR, T1, T1ce, T2 (the notebooks stack the files in this order) z-scored over
  non-zero voxels, plus the one-hot mask channel (``--ohe``: 1 where every normalised channel is
  > 0), cropped to the non-zero box, transposed to Z, Y, X (axes [2, 1, 0]).
* Output: sigmoid WT, TC, ET (``LossBraTS``), thresholds 0.5, nested labels and the small-ET rule
  of their BraTS21 post-processing.
"""

from __future__ import annotations

import argparse
import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_edge.card import Channel, ETRule, Inference, Inputs, ModelCard, Outputs
from seg_edge.errors import InputError
from seg_edge.export.onnx import ExportReport, OnnxOptions, export_network
from seg_edge.importers.common import load_torch_file, load_weights_into, refuse_existing_dir, source_provenance

BRATS_PATCH = (128, 128, 128)  # data_preprocessing/configs.py, task 11 (BraTS2021_train), 3D
MODALITY_ORDER = ("flair", "t1", "t1ce", "t2")
DROPPED = ("deep_supervision_heads.",)  # training-only heads (DynUNet also links them as '.super_head.')
ARGS_KEPT = ("task", "fold", "nfolds", "dim", "depth", "min_fmap", "filters", "res_block", "norm", "deep_supervision",
             "deep_supr_num", "brats", "brats22_model", "epochs", "learning_rate", "amp", "overlap", "blend")


@dataclass(frozen=True)
class NvidiaOptions:
    """``import_nvidia``'s settings: the card's name, whether the card turns on mirroring TTA, export checks."""

    name: str | None = None
    tta: bool = False  # NVIDIA predicts BraTS with --tta: flips of every spatial axis
    onnx: OnnxOptions = field(default_factory=OnnxOptions)


@dataclass(frozen=True)
class NvidiaCheckpoint:
    """A read checkpoint: its training args, the network's weights (prefix and heads removed), what was dropped."""

    path: Path
    args: argparse.Namespace
    state: dict
    dropped: tuple[str, ...]
    meta: dict[str, Any]

    @property
    def variant(self) -> str:
        """'brats22' for their UNet3D (``--brats22_model``), else 'brats21' (DynUNet)."""
        return "brats22" if getattr(self.args, "brats22_model", False) else "brats21"


def read_checkpoint(path: Path) -> NvidiaCheckpoint:
    """Load a DLE nnU-Net Lightning checkpoint weights-only (admitting argparse.Namespace only)."""
    path = Path(path)
    data = load_torch_file(path, admit=(argparse.Namespace,))
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise InputError(f"{path}: not a PyTorch Lightning checkpoint (no 'state_dict' entry); "
                         "'seg-edge import torch' takes a bare state dict")
    hparams = data.get("hyper_parameters")
    args = hparams.get("args") if isinstance(hparams, dict) else None
    if not isinstance(args, argparse.Namespace):
        raise InputError(f"{path}: Lightning checkpoint without hyper_parameters['args'] (expected the "
                         "argparse.Namespace NVIDIA's nnU-Net saves)")
    model = {k[len("model."):]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
    if not model:
        raise InputError(f"{path}: state_dict has no 'model.' keys (expected NVIDIA's NNUnet LightningModule)")
    dropped = tuple(k for k in model if k.startswith(DROPPED) or ".super_head." in k)
    state = {k: v for k, v in model.items() if k not in dropped and not k.startswith("skip_layers.")}
    meta = {k: data[k] for k in ("epoch", "global_step", "pytorch-lightning_version")
            if isinstance(data.get(k), (int, str))}
    return NvidiaCheckpoint(path, args, state, dropped, meta)


def _check_args(ckpt: NvidiaCheckpoint) -> None:
    args, path = ckpt.args, ckpt.path
    if not getattr(args, "brats", False):
        raise InputError(f"{path}: args.brats is false (expected a BraTS checkpoint with WT, TC, ET sigmoid "
                         "outputs, trained with --brats)")
    if getattr(args, "dim", 3) != 3:
        raise InputError(f"{path}: args.dim is {getattr(args, 'dim', None)} (expected 3: 2D NVIDIA models are "
                         "not supported)")


def _weight(ckpt: NvidiaCheckpoint, key: str):
    if key not in ckpt.state:
        raise InputError(f"{ckpt.path}: weights lack '{key}' (expected NVIDIA's {ckpt.variant} network)")
    return ckpt.state[key]


def _topology(ckpt: NvidiaCheckpoint, conv: str) -> dict[str, Any]:
    """Levels, widths, kernels, strides and channel counts, read from the weights and checked against args.

    ``conv`` is the suffix of a block's first convolution weight ('conv1.conv.weight' in DynUNet).
    """
    downs = sorted({int(k.split(".")[1]) for k in ckpt.state if k.startswith("downsamples.")})
    first = "input_block.conv1.weight" if ckpt.variant == "brats22" else "input_block." + conv
    convs = [_weight(ckpt, first)] + [_weight(ckpt, f"downsamples.{i}.{conv}") for i in downs]
    convs.append(_weight(ckpt, "bottleneck." + conv))
    levels = len(convs)
    expected = _brats_levels(ckpt.args)
    if expected is not None and expected != levels:
        raise InputError(f"{ckpt.path}: the weights have {levels} levels but args depth {ckpt.args.depth} and "
                         f"min_fmap {ckpt.args.min_fmap} give {expected} for BraTS' 128³ patch")
    return {"levels": levels, "filters": [int(w.shape[0]) for w in convs],
            "kernels": [[int(k) for k in w.shape[2:]] for w in convs],
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1), "in_channels": int(convs[0].shape[1])}


def _brats_levels(args: argparse.Namespace) -> int | None:
    """Levels NVIDIA's ``get_unet_params`` builds for BraTS (128³, isotropic: every stride 2), or None without args."""
    depth, min_fmap = getattr(args, "depth", None), getattr(args, "min_fmap", None)
    if not isinstance(depth, int) or not isinstance(min_fmap, int) or min_fmap < 1:
        return None
    size, strides = BRATS_PATCH[0], 0
    while size >= 2 * min_fmap:  # a stride of 2 while the map stays >= min_fmap
        size, strides = size // 2, strides + 1
        if strides == depth:
            break
    return strides + 1


def build_dynunet(ckpt: NvidiaCheckpoint):
    """The BraTS21 network: MONAI DynUNet as NVIDIA builds it, without deep supervision, weights loaded."""
    from monai.networks.nets import DynUNet

    topo = _topology(ckpt, "conv1.conv.weight")
    norm = str(getattr(ckpt.args, "norm", "instance")).lower()
    norms = {"instance": "INSTANCE", "instance_nvfuser": "INSTANCE", "batch": "BATCH"}  # nvfuser: same weights
    if norm not in norms:
        raise InputError(f"{ckpt.path}: args.norm '{norm}' (expected one of {', '.join(norms)})")
    out_channels = int(_weight(ckpt, "output_block.conv.conv.weight").shape[0])
    net = DynUNet(3, topo["in_channels"], out_channels, topo["kernels"], topo["strides"], topo["strides"][1:],
                  filters=topo["filters"], norm_name=(norms[norm], {"affine": True}),
                  act_name=("leakyrelu", {"inplace": False, "negative_slope": 0.01}), deep_supervision=False,
                  res_block=bool(getattr(ckpt.args, "res_block", False)), trans_bias=True)
    load_weights_into(net, ckpt.state, ckpt.path, "NVIDIA's BraTS21 DynUNet", aliases="skip_layers.")
    return net, {**topo, "out_channels": out_channels, "norm": norm,
                 "res_block": bool(getattr(ckpt.args, "res_block", False))}


def build_unet3d(ckpt: NvidiaCheckpoint):
    """The BraTS22 network (NVIDIA's UNet3D) without its deep-supervision heads, weights loaded."""
    topo = _topology(ckpt, "conv1.conv.weight")
    out_channels = int(_weight(ckpt, "output_block.conv.weight").shape[0])
    net = _unet3d_class()(topo["in_channels"], topo["filters"], topo["kernels"], out_channels)
    load_weights_into(net, ckpt.state, ckpt.path, "NVIDIA's BraTS22 UNet3D")
    return net, {**topo, "out_channels": out_channels, "norm": "instance", "res_block": False}


def _conv(nn, cin: int, cout: int, kernel, stride: int, bias: bool = False):
    kernel = tuple(kernel) if isinstance(kernel, (list, tuple)) else (kernel,) * 3
    padding = tuple((k - stride + 1) // 2 for k in kernel)  # 'same' for stride 1, halving for stride 2
    return nn.Conv3d(cin, cout, kernel, stride, padding, bias=bias)


def _conv_block(nn, cin: int, cout: int, kernel, stride: int):
    """Two pre-activation layers (norm → conv → ReLU), the first with ``stride``."""
    def layer(a: int, b: int, s: int):
        return nn.Sequential(OrderedDict(norm=nn.InstanceNorm3d(a, affine=True), conv=_conv(nn, a, b, kernel, s),
                                         relu=nn.ReLU()))
    return nn.Sequential(OrderedDict(conv1=layer(cin, cout, stride), conv2=layer(cout, cout, 1)))


@functools.lru_cache(maxsize=None)
def _unet3d_class():
    import torch
    from torch import nn

    class NvidiaUNet3D(nn.Module):
        """NVIDIA's BraTS22 U-Net in inference form; module names match their checkpoints' keys."""

        def __init__(self, in_channels: int, filters: list[int], kernels: list, out_channels: int = 3):
            super().__init__()
            f = list(filters)
            self.input_block = nn.Sequential(OrderedDict(
                conv1=_conv(nn, in_channels, f[0], 3, 1), norm=nn.InstanceNorm3d(f[0], affine=True), relu1=nn.ReLU(),
                conv2=_conv(nn, f[0], f[0], 3, 1), relu2=nn.ReLU()))
            self.downsamples = nn.ModuleList(_conv_block(nn, f[i], f[i + 1], kernels[i + 1], 2)
                                             for i in range(len(f) - 2))
            self.bottleneck = _conv_block(nn, f[-2], f[-1], kernels[-1], 2)
            self.upsamples = nn.ModuleList(
                nn.ModuleDict({"conv_block": _conv_block(nn, f[i + 1] + f[i], f[i], kernels[i + 1], 1)})
                for i in reversed(range(len(f) - 1)))
            self.output_block = nn.Sequential(OrderedDict(conv=_conv(nn, f[0], out_channels, 1, 1, bias=True)))

        def forward(self, x):
            out = self.input_block(x)
            skips = [out]
            for down in self.downsamples:
                out = down(out)
                skips.append(out)
            out = self.bottleneck(out)
            for up, skip in zip(self.upsamples, reversed(skips)):
                out = nn.functional.interpolate(out, scale_factor=2, mode="trilinear", align_corners=True)
                out = up["conv_block"](torch.cat((out, skip), dim=1))
            return self.output_block(out)

    return NvidiaUNet3D


def nvidia_card(ckpt: NvidiaCheckpoint, topo: dict[str, Any], options: NvidiaOptions) -> ModelCard:
    """The card of an NVIDIA BraTS network: their preprocessing, outputs and post-processing, in data."""
    if topo["out_channels"] != 3:
        raise InputError(f"{ckpt.path}: the network has {topo['out_channels']} outputs (expected 3: WT, TC, ET)")
    channels = tuple(Channel(m, "zscore_nonzero") for m in MODALITY_ORDER)
    if topo["in_channels"] == 5:
        channels += (Channel("mask", "none", "nvidia_mask"),)
    elif topo["in_channels"] != 4:
        raise InputError(f"{ckpt.path}: the network takes {topo['in_channels']} channels (expected 5: FLAIR, T1, "
                         "T1ce, T2 and the mask; or 4 without --ohe)")
    args = ckpt.args
    overlap = getattr(args, "overlap", 0.5)
    blend = getattr(args, "blend", "gaussian")
    inference = Inference(patch_size=BRATS_PATCH, size_divisor=2 ** (topo["levels"] - 1),
                          overlap=overlap if isinstance(overlap, float) and 0 <= overlap < 1 else 0.5,
                          blend=blend if blend in ("gaussian", "constant") else "gaussian",
                          tta_axes=(0, 1, 2) if options.tta else (), et_rule=ETRule())
    kept = {k: getattr(args, k) for k in ARGS_KEPT
            if isinstance(getattr(args, k, None), (bool, int, float, str, list))}
    provenance = source_provenance(
        "nvidia-dle-nnunet", ckpt.path, variant=ckpt.variant, **ckpt.meta, args=kept,
        network={k: topo[k] for k in ("filters", "kernels", "strides", "norm", "res_block")},
        dropped_keys=len(ckpt.dropped))
    return ModelCard(
        name=options.name or f"nvidia-{ckpt.variant}", preset=f"nvidia-dle-{ckpt.variant}",
        inputs=Inputs(channels=channels, tensor="image", crop="nonzero", axes=(2, 1, 0)),
        outputs=Outputs(kind="sigmoid", channels=("WT", "TC", "ET"), thresholds=(0.5, 0.5, 0.5), rule="nested",
                        order=(("WT", "ED"), ("TC", "NCR"), ("ET", "ET")), tensor="logits",
                        source_labels={"0": "background", "1": "NCR", "2": "ED", "3": "ET"}),
        inference=inference, label_scheme="brats2021", provenance=provenance)


def load_nvidia(checkpoint: Path, options: NvidiaOptions = NvidiaOptions()):
    """(torch network in eval mode, its card) for a DLE nnU-Net BraTS checkpoint — also parity's reference."""
    ckpt = read_checkpoint(checkpoint)
    _check_args(ckpt)
    net, topo = build_unet3d(ckpt) if ckpt.variant == "brats22" else build_dynunet(ckpt)
    return net.eval(), nvidia_card(ckpt, topo, options)


def import_nvidia(checkpoint: Path, out: Path, options: NvidiaOptions = NvidiaOptions()) -> ExportReport:
    """NVIDIA DLE nnU-Net BraTS21/22 Lightning checkpoint → verified ONNX artifact with its card."""
    out = refuse_existing_dir(out)
    net, card = load_nvidia(checkpoint, options)
    return export_network(net, card, out, options.onnx)
