"""Fixtures for the importers: format-faithful NVIDIA checkpoints, cards, helpers (all built here, tiny).

Not a conftest.py: a second conftest module would shadow ``tests/conftest.py`` under the name
``conftest`` (rootdir-relative imports), breaking ``from conftest import make_checkpoint`` elsewhere.
Test modules import the fixtures they use from here.

The NVIDIA checkpoints are written the way their training writes them (DeepLearningExamples,
PyTorch/Segmentation/nnUNet): a PyTorch Lightning checkpoint dict whose ``state_dict`` holds the
LightningModule's ``model.*`` weights — deep-supervision heads included — and whose
``hyper_parameters`` hold the training ``argparse.Namespace`` (``utils/args.py`` names and defaults,
with the BraTS recipe's flags).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

BRATS21_FILTERS = (4, 4, 8, 8, 8, 8, 8)  # the 7-level BraTS21 topology (64-96-128-192-256-384-512), narrowed
BRATS22_FILTERS = (4, 8, 8, 16)  # UNet3D's doubling widths (64-128-256-512 at depth 3), narrowed


def nvidia_args(**changes) -> argparse.Namespace:
    """Training args as NVIDIA's ``utils/args.py`` parses them for the BraTS21 notebook's command."""
    values = dict(exec_mode="train", data="/data/11_3d", results="/results", logname="logs.json", task="11", gpus=1,
                  learning_rate=0.0003, gradient_clip_val=0, negative_slope=0.01, tta=False, brats=True,
                  deep_supervision=True, invert_resampled_y=False, amp=True, benchmark=False, focal=False,
                  save_ckpt=True, nfolds=5, seed=1, skip_first_n_eval=0, ckpt_path=None, fold=0, patience=100,
                  batch_size=2, val_batch_size=4, momentum=0.99, weight_decay=0.0001, save_preds=False, dim=3,
                  resume_training=False, num_workers=8, epochs=30, warmup=5, norm="instance", nvol=4, depth=6,
                  min_fmap=2, deep_supr_num=2, res_block=False, filters=list(BRATS21_FILTERS), layout="NCDHW",
                  brats22_model=False, data2d_dim=3, oversampling=0.4, overlap=0.5, scheduler=True,
                  optimizer="adam", blend="gaussian", train_batches=0, test_batches=0)
    values.update(changes)
    return argparse.Namespace(**values)


def nvidia_dynunet(filters=BRATS21_FILTERS, seed: int = 0):
    """NVIDIA's BraTS21 network as their ``build_nnunet`` makes it (deep supervision on), affine norms perturbed."""
    import torch
    from monai.networks.nets import DynUNet

    torch.manual_seed(seed)
    levels = len(filters)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1)
    net = DynUNet(3, 5, 3, [[3, 3, 3]] * levels, strides, strides[1:], filters=list(filters),
                  norm_name=("INSTANCE", {"affine": True}),
                  act_name=("leakyrelu", {"inplace": False, "negative_slope": 0.01}),
                  deep_supervision=True, deep_supr_num=2, res_block=False, trans_bias=True)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def unet3d_state(filters=BRATS22_FILTERS, in_channels: int = 5, seed: int = 0) -> dict:
    """Weights laid out as NVIDIA's ``nnunet/brats22_model.py`` UNet3D names them (heads included), random."""
    import torch

    g = torch.Generator().manual_seed(seed)
    f = list(filters)

    def conv(cout, cin, k=3):
        return torch.randn(cout, cin, k, k, k, generator=g) * (2.0 / (cin * k ** 3)) ** 0.5

    def layer(prefix, cin, cout):  # ConvLayer: norm over its input channels, then conv (no bias), ReLU
        return {f"{prefix}.norm.weight": 1 + 0.1 * torch.randn(cin, generator=g),
                f"{prefix}.norm.bias": 0.1 * torch.randn(cin, generator=g), f"{prefix}.conv.weight": conv(cout, cin)}

    state = {"input_block.conv1.weight": conv(f[0], in_channels), "input_block.conv2.weight": conv(f[0], f[0]),
             "input_block.norm.weight": 1 + 0.1 * torch.randn(f[0], generator=g),
             "input_block.norm.bias": 0.1 * torch.randn(f[0], generator=g)}
    blocks = [(f"downsamples.{i}", f[i], f[i + 1]) for i in range(len(f) - 2)] + [("bottleneck", f[-2], f[-1])]
    blocks += [(f"upsamples.{j}.conv_block", f[i + 1] + f[i], f[i]) for j, i in enumerate(reversed(range(len(f) - 1)))]
    for prefix, cin, cout in blocks:
        state.update(layer(f"{prefix}.conv1", cin, cout))
        state.update(layer(f"{prefix}.conv2", cout, cout))
    for key, width in (("output_block", f[0]), ("deep_supervision_heads.0", f[1]), ("deep_supervision_heads.1", f[2])):
        state[f"{key}.conv.weight"] = conv(3, width, 1)
        state[f"{key}.conv.bias"] = 0.1 * torch.randn(3, generator=g)
    return state


def unet3d_reference(state: dict, x, levels: int):
    """NVIDIA's UNet3D forward (inference), written from their module with torch.nn.functional on the raw weights."""
    import torch
    from torch.nn import functional as F

    def layer(prefix, x, stride):
        x = F.instance_norm(x, weight=state[f"{prefix}.norm.weight"], bias=state[f"{prefix}.norm.bias"])
        return F.relu(F.conv3d(x, state[f"{prefix}.conv.weight"], stride=stride, padding=1))

    def block(prefix, x, stride):
        return layer(f"{prefix}.conv2", layer(f"{prefix}.conv1", x, stride), 1)

    x = F.conv3d(x, state["input_block.conv1.weight"], padding=1)
    x = F.relu(F.instance_norm(x, weight=state["input_block.norm.weight"], bias=state["input_block.norm.bias"]))
    x = F.relu(F.conv3d(x, state["input_block.conv2.weight"], padding=1))
    skips = [x]
    for i in range(levels - 2):
        x = block(f"downsamples.{i}", x, 2)
        skips.append(x)
    x = block("bottleneck", x, 2)
    for j, skip in enumerate(reversed(skips)):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        x = block(f"upsamples.{j}.conv_block", torch.cat((x, skip), dim=1), 1)
    return F.conv3d(x, state["output_block.conv.weight"], state["output_block.conv.bias"])


def write_lightning_checkpoint(path: Path, model_state: dict, args: argparse.Namespace, **extra) -> Path:
    """A PyTorch Lightning checkpoint as NVIDIA's training saves it (ModelCheckpoint on 'dice')."""
    import torch

    ckpt = {
        "epoch": 29, "global_step": 18750, "pytorch-lightning_version": "1.7.7",
        "state_dict": {f"model.{k}": v for k, v in model_state.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 30, "completed": 29}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'dice', 'mode': 'max'}": {
            "monitor": "dice", "best_model_score": torch.tensor(88.31), "best_model_path":
            "/results/checkpoints/epoch=29-dice=88.31.ckpt", "current_score": torch.tensor(88.31),
            "dirpath": "/results/checkpoints", "best_k_models": {}, "kth_best_model_path": "", "kth_value":
            torch.tensor(float("inf")), "last_model_path": ""}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.0003, "betas": (0.9, 0.999), "eps": 1e-8,
                                                             "weight_decay": 0.0001, "params": [0, 1]}]}],
        "lr_schedulers": [{"T_0": 4096, "T_i": 4096, "T_mult": 1, "eta_min": 8e-5, "last_epoch": 18750}],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0},
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": args, "triton": False, "data_dir": None},
        **extra,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def brats21_ckpt(tmp_path_factory) -> tuple[Path, object]:
    """(checkpoint path, the DynUNet it holds) — a reduced-width 7-level BraTS21 network."""
    net = nvidia_dynunet()
    path = tmp_path_factory.mktemp("nvidia") / "epoch=29-dice=88.31.ckpt"
    return write_lightning_checkpoint(path, net.state_dict(), nvidia_args()), net


@pytest.fixture(scope="module")
def brats22_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    """(checkpoint path, its UNet3D weights) — a reduced-width 4-level BraTS22 network."""
    state = unet3d_state()
    args = nvidia_args(brats22_model=True, depth=3, min_fmap=4, deep_supervision=False, filters=None)
    path = tmp_path_factory.mktemp("nvidia22") / "brats22-fold0.ckpt"
    return write_lightning_checkpoint(path, state, args), state


def card_json(path: Path, **sections) -> Path:
    """Write a schema-2 card: the defaults below with ``sections`` replacing whole top-level entries."""
    card = {"schema": 2, "name": "test-model", "preset": "custom",
            "inputs": {"tensor": "image", "channels": [{"name": m, "normalization": "zscore_nonzero"}
                                                       for m in ("flair", "t1", "t1ce", "t2")],
                       "crop": "nonzero", "axes": [0, 1, 2], "spatial_dims": 3, "slice": None},
            "outputs": {"tensor": "logits", "kind": "sigmoid", "channels": ["WT", "TC", "ET"],
                        "thresholds": [0.5, 0.5, 0.5], "rule": "nested",
                        "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]},
            "inference": {"patch_size": [64, 64, 64], "size_divisor": 2}}
    card.update(sections)
    path.write_text(json.dumps(card, indent=2))
    return path


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_ok(*args) -> object:
    """``seg-edge ARGS`` through the Typer app; exit 0 or the output in the failure."""
    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# MONAI's BraTS bundle network (SegResNet blocks 1,2,2,4 / 1,1,1) at init_filters 4 for speed
MONAI_KWARGS = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 4, "in_channels": 4,
                "out_channels": 3, "norm": ["GROUP", {"num_groups": 2}]}


def import_monai_bundle_like(root: Path, seed: int = 1) -> tuple[Path, Path]:
    """A SegResNet described as MONAI's BraTS bundle does — channels t1ce, t1, t2, flair, no mask, no crop,
    outputs TC, WT, ET, 'ET → 4, else TC → 1, else WT → 2' — imported with ``import torch``: (model, weights)."""
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(seed)
    weights = root / "model.pt"
    torch.save(SegResNet(**MONAI_KWARGS).eval().state_dict(), weights)
    card = card_json(root / "monai.json", name="monai-brats", preset="monai-bundle",
                     inputs={"tensor": "image", "crop": "none",
                             "channels": [{"name": m} for m in ("t1ce", "t1", "t2", "flair")]},
                     outputs={"tensor": "logits", "kind": "sigmoid", "channels": ["TC", "WT", "ET"],
                              "thresholds": [0.5, 0.5, 0.5], "rule": "sequential",
                              "order": [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]},
                     inference={"patch_size": [32, 32, 32], "size_divisor": 8, "et_rule": {"enabled": False}})
    model = root / "monai.onnx"
    run_ok("import", "torch", "--network", "monai.networks.nets:SegResNet", "--network-kwargs",
           json.dumps(MONAI_KWARGS), "--weights", weights, "--card", card, "--out", model, "--check-shape", "32,32,32")
    return model, weights


def import_2d_seed(root: Path) -> Path:
    """The seed's 2D softmax U-Net (FLAIR + T1ce, 128×128 slices) exported to ONNX and attached with
    ``import onnx``: the imported model's path."""
    import torch

    from test_onnx import TinyUNet2D, _export, seed_card  # (test_onnx imports this module: import late)

    torch.manual_seed(0)
    source = _export(TinyUNet2D().eval(), root / "unet2d.onnx", 2)
    model = root / "seed2d.onnx"
    run_ok("import", "onnx", source, "--card", seed_card(root / "c.json"), "--out", model)
    return model
