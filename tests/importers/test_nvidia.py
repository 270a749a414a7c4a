"""``seg-edge import nvidia``: DeepLearningExamples nnU-Net BraTS21 Lightning checkpoints → verified ONNX; refusals.

BraTS22 (their UNet3D) is in test_nvidia22.py: each export of a deep U-Net takes the exporter ~20-30 s here.
"""

from __future__ import annotations

import argparse
import pathlib
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from importer_fixtures import (brats21_ckpt, files_in, nvidia_args, nvidia_dynunet, ort_run,  # noqa: F401
                               write_lightning_checkpoint)
from seg_edge.artifact import file_sha256, load_artifact
from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.importers.nvidia import read_checkpoint

runner = CliRunner()


def test_brats21_checkpoint_imports_with_nvidias_card(brats21_ckpt, tmp_path):
    path, net = brats21_ckpt
    out = tmp_path / "nvidia21.onnx"
    result = runner.invoke(app, ["import", "nvidia", str(path), "--out", str(out), "--check-shape", "64,64,128",
                                 "--tta"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in (f"wrote {out}", "max |logit| error", "flair (zscore_nonzero)", "mask (nvidia_mask)",
                 "nested: WT→ED, TC→NCR, ET→ET", "axes [2, 1, 0]", "nvidia-dle-nnunet"):
        assert text in result.stdout, text
    card = load_artifact(out).card
    assert 0 <= card.provenance["export_check"]["max_abs_logit_error"] <= 1e-3
    assert [(c.name, c.normalization, c.derived) for c in card.inputs.channels] == [
        ("flair", "zscore_nonzero", None), ("t1", "zscore_nonzero", None), ("t1ce", "zscore_nonzero", None),
        ("t2", "zscore_nonzero", None), ("mask", "none", "nvidia_mask")]
    assert card.inputs.axes == (2, 1, 0) and card.inputs.crop == "nonzero" and card.inputs.spatial_dims == 3
    assert card.outputs.kind == "sigmoid" and card.outputs.channels == ("WT", "TC", "ET")
    assert card.outputs.rule == "nested" and card.outputs.order == (("WT", "ED"), ("TC", "NCR"), ("ET", "ET"))
    assert card.patch_size == (128, 128, 128) and card.size_divisor == 64  # 7 levels: six stride-2 steps
    assert card.inference.tta_axes == (0, 1, 2) and card.et_rule.enabled
    prov = card.provenance
    assert prov["source_framework"] == "nvidia-dle-nnunet" and prov["source_sha256"] == file_sha256(path)
    assert prov["variant"] == "brats21" and prov["network"]["filters"] == [4, 4, 8, 8, 8, 8, 8]
    assert prov["dropped_keys"] == 8  # two heads (weight, bias), also linked as the skip layers' super_head
    assert prov["args"]["depth"] == 6 and prov["epoch"] == 29
    # independent reference: NVIDIA's own DynUNet (deep supervision on, eval mode) on a fresh input
    x = np.random.default_rng(7).standard_normal((1, 5, 64, 128, 64)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(out, x) - ref).max() < 1e-3


def test_only_the_namespace_is_admitted_and_only_while_loading(brats21_ckpt, tmp_path):
    path, net = brats21_ckpt
    ckpt = read_checkpoint(path)
    assert ckpt.args.brats and not any(k.startswith(("model.", "deep_supervision_heads")) for k in ckpt.state)
    assert not any(g is argparse.Namespace for g in torch.serialization.get_safe_globals())
    bad = write_lightning_checkpoint(tmp_path / "posix.ckpt", net.state_dict(), nvidia_args(),
                                     loggers={"dir": pathlib.PurePosixPath("/results")})
    with pytest.raises(InputError, match=r"posix.ckpt: refused by weights-only loading \(it needs pathlib"):
        read_checkpoint(bad)


def _bad_checkpoints(folder, net) -> dict:
    state = net.state_dict()
    folder.mkdir()
    bare = folder / "bare.pt"
    torch.save(state, bare)
    no_args = folder / "noargs.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "hyper_parameters": {}}, no_args)
    cut = {k: v for k, v in state.items() if not k.startswith("bottleneck.conv2")}
    wide = {k: (torch.cat([v, v]) if k == "output_block.conv.conv.bias" else v) for k, v in state.items()}
    junk = folder / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    return {
        "missing.ckpt": (folder / "missing.ckpt", "file not found"),
        "junk.ckpt": (junk, "not a loadable torch file"),
        "bare.pt": (bare, "not a PyTorch Lightning checkpoint"),
        "noargs.ckpt": (no_args, "without hyper_parameters"),
        "softmax.ckpt": (write_lightning_checkpoint(folder / "softmax.ckpt", state, nvidia_args(brats=False)),
                         "args.brats is false"),
        "2d.ckpt": (write_lightning_checkpoint(folder / "2d.ckpt", state, nvidia_args(dim=2)), "args.dim is 2"),
        "depth.ckpt": (write_lightning_checkpoint(folder / "depth.ckpt", state, nvidia_args(depth=5)),
                       "the weights have 7 levels but args depth 5"),
        "cut.ckpt": (write_lightning_checkpoint(folder / "cut.ckpt", cut, nvidia_args()), "lacks|missing"),
        "wide.ckpt": (write_lightning_checkpoint(folder / "wide.ckpt", wide, nvidia_args()), "do not fit"),
        "group.ckpt": (write_lightning_checkpoint(folder / "group.ckpt", state, nvidia_args(norm="group")),
                       "args.norm 'group'"),
    }


def test_bad_checkpoints_are_one_line_errors_and_write_nothing(tmp_path):
    net = nvidia_dynunet(filters=(4, 4, 4, 4, 4, 4, 4), seed=1)
    cases = _bad_checkpoints(tmp_path / "in", net)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (path, expected) in cases.items():
        result = runner.invoke(app, ["import", "nvidia", str(path), "--out", str(out_dir / "m.onnx")])
        assert result.exit_code == 2, (name, result.output)
        line = result.stderr.strip()
        assert line.startswith("input error:") and len(line.splitlines()) == 1, (name, line)
        assert re.search(expected, line), (name, line)
    assert files_in(out_dir) == []
