"""Shared fixtures: tiny seeded models and small synthetic cases (built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_edge.synth import write_case

SMALL_SHAPE = (64, 72, 48)
TINY_FILTERS = {"edge": (4, 8, 8, 16, 16), "nvidia-brats21": (4, 4, 8, 8, 8, 8, 8)}


def make_checkpoint(path: Path, preset: str, seed: int = 0) -> Path:
    """Save the state dict of a seeded tiny DynUNet of ``preset``."""
    import torch

    from seg_edge.model.networks import build_network

    torch.manual_seed(seed)
    net = build_network(preset, TINY_FILTERS[preset])
    # random-init InstanceNorm affine params are (1, 0); perturb them so that they matter
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def cases_dir(tmp_path_factory) -> Path:
    """Three small synthetic BraTS-format cases (seed 11) on a 64×72×48 grid."""
    root = tmp_path_factory.mktemp("cases")
    for i in range(3):
        write_case(root, 11, i, SMALL_SHAPE)
    return root


@pytest.fixture(scope="session")
def case_dir(cases_dir) -> Path:
    return sorted(p for p in cases_dir.iterdir() if p.is_dir())[0]


@pytest.fixture(scope="session")
def edge_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "edge_tiny.pt", "edge")


@pytest.fixture(scope="session")
def edge_onnx(tmp_path_factory, edge_checkpoint) -> Path:
    """The tiny edge model exported through the library (the CLI is tested separately)."""
    from seg_edge.export.onnx import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("onnx") / "edge_tiny.onnx"
    export_onnx(edge_checkpoint, out, ExportOptions(preset="edge", check_shape=(32, 32, 32)))
    return out


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


RAW_SCALE = 0.5  # raw studies at half scale: 2 mm phantom, the same physical head and fields of view, 8-10 mm slices
RAW_SEED = 2207  # not a seed the acceptance figures use


@pytest.fixture(scope="session")
def raw_studies(tmp_path_factory) -> list[Path]:
    """Two small synthetic raw studies (``seg-edge synth --raw``) of two synthetic patients (index 0 and 1 of
    one seed), written once per session. (Here, not in tests/preprocess/conftest.py: a second conftest module
    would shadow this one for the tests that import helpers from it.)"""
    pytest.importorskip("SimpleITK")
    from seg_edge.synth.raw import write_raw_study

    out = tmp_path_factory.mktemp("raw")
    return [write_raw_study(out, RAW_SEED, index, scale=RAW_SCALE) for index in (0, 1)]
