"""The shipped model on the shipped example: parity with PyTorch + MONAI, lint, quantized variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.cli.app import app
from seg_edge.export.lint import lint

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src/seg_edge/assets"
MODEL = ASSETS / "seg-edge-edge.onnx"
EXAMPLE = ROOT / "examples/SynBraTS_3007_000"
VARIANTS = {"fp32": MODEL, "int8": ASSETS / "seg-edge-edge-int8.onnx", "fp16": ASSETS / "seg-edge-edge-fp16.onnx"}


def _assert_fp32_parity(case: Path) -> None:
    """`seg-edge parity` on the shipped ONNX, against the shipped .pt found beside it by default."""
    result = CliRunner().invoke(app, ["parity", str(MODEL), str(case), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (r,) = data["results"]
    assert data["passed"] and r["max_abs"] <= 1e-4 and min(r["dice"].values()) >= 0.999


@pytest.mark.slow  # 240×240×155: 27 windows of 96³ through the model and through PyTorch + MONAI
def test_shipped_model_passes_fp32_parity_on_the_example():
    _assert_fp32_parity(EXAMPLE)


def test_shipped_model_passes_fp32_parity_on_a_small_case(case_dir):
    """The same check on the small synthetic case of the default run (one 96³ window)."""
    _assert_fp32_parity(case_dir)


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_shipped_artifacts_are_tensorrt_ready_and_carry_their_precision(kind):
    assert lint(VARIANTS[kind], "10.3") == []
    card = load_artifact(VARIANTS[kind]).card
    assert card.precision == kind and card.provenance["training"]["data"].startswith("synthetic")


def test_shipped_int8_keeps_its_measured_budget():
    q = load_artifact(VARIANTS["int8"]).card.provenance["quantization"]
    assert len(q["eval_cases"]) >= 10 and set(q["eval_cases"]).isdisjoint(q["calibration"]["cases"])
    assert min(q["dice_vs_fp32"].values()) >= 1 - q["budget"]
