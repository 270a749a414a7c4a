"""Option types shared by several commands."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from seg_edge.card import MODALITIES
from seg_edge.errors import ArtifactError, InputError

if TYPE_CHECKING:  # annotations only: the CLI's options module loads no runtime
    from rich.console import Console

    from seg_edge.runtime.sessions.base import Session

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "seg-edge-edge.onnx"


class LabelScheme(str, Enum):
    """Label sets a label map is written in (card.LABEL_SETS; a test keeps the two equal)."""

    brats2021 = "brats2021"
    brats2023 = "brats2023"
    brats2024_gli_post = "brats2024-gli-post"


class Anatomy(str, Enum):
    procedural = "procedural"
    mni152 = "mni152"


class Blend(str, Enum):
    gaussian = "gaussian"
    constant = "constant"
    nnunet_gaussian = "nnunet_gaussian"


class Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    ort_cuda = "ort-cuda"
    ort_trt = "ort-trt"
    tensorrt = "tensorrt"
    triton = "triton"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class PrecisionHint(str, Enum):
    f32 = "f32"
    bf16 = "bf16"


HINT_OPTION = typer.Option(None, "--precision-hint", help="OpenVINO inference precision: f32 or bf16 "
                           "(bf16 only on CPUs that have it).")


def report_auto(session: Session, console: Console) -> None:
    """Say which backend --backend auto chose and why the faster ones were skipped, and when OpenVINO's
    kernels are capped by ONEDNN_MAX_CPU_ISA (nothing about how a backend runs goes unsaid)."""
    if session.isa_cap:
        console.print(f"openvino: oneDNN kernels capped at {session.isa_cap} (ONEDNN_MAX_CPU_ISA)", markup=False,
                      highlight=False)
    report = session.auto_report
    if report:
        chosen, skipped = report
        console.print(f"backend auto → {chosen}" + "".join(f"\n  skipped {n}: {why}" for n, why in skipped),
                      markup=False, highlight=False)


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
THREADS_OPTION = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: the backend's).")


def model_path(model: Path | None) -> Path:
    """The model to use: the one given, or the shipped artifact (with a clear error if absent)."""
    if model is not None:
        if model.is_dir():
            raise ArtifactError(f"{model}: is a folder (expected a model file: .onnx, or a TensorRT "
                                ".plan/.engine with its .json card)")
        return model
    if not DEFAULT_MODEL.is_file():
        raise InputError(f"{DEFAULT_MODEL}: no model is shipped in this build; pass --model MODEL.onnx")
    return DEFAULT_MODEL


def parse_ints(text: str, count: int, what: str, example: str, *, expected: str | None = None) -> tuple[int, ...]:
    """``count`` positive comma-separated integers, or an InputError naming the option.

    The error says ``(expected <expected>)``; by default "<count> positive integers like <example>".
    """
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 1:
        raise InputError(f"{what} '{text}' (expected {expected or f'{count} positive integers like {example}'})")
    return values


def parse_triplet(text: str, what: str) -> tuple[int, int, int]:
    return parse_ints(text, 3, what, "240,240,155")  # type: ignore[return-value]


_LAYOUT = {1: "W", 2: "H,W", 3: "X,Y,Z"}


def parse_sizes(text: str, spatial_dims: int, what: str, channels: bool = False) -> tuple[int, ...]:
    """Sizes for a model with ``spatial_dims`` spatial axes: its spatial sizes, led by C if ``channels``.

    3D models keep the 3D wording (``like 5,96,96,96`` / ``like 240,240,155``); other models are
    told the layout and their dimensionality, e.g. ``(expected 3 positive integers C,H,W for this 2D model)``.
    """
    count = spatial_dims + (1 if channels else 0)
    if spatial_dims == 3:
        return parse_ints(text, count, what, "5,96,96,96" if channels else "240,240,155")
    layout = ("C," if channels else "") + _LAYOUT.get(spatial_dims, ",".join(["N"] * spatial_dims))
    return parse_ints(text, count, what, layout,
                      expected=f"{count} positive integers {layout} for this {spatial_dims}D model")


def parse_modalities(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(v.strip().lower() for v in text.split(","))
    if len(set(names)) != len(names) or any(n not in MODALITIES for n in names):
        raise InputError(f"--modalities '{text}' (expected the volumes' order, distinct names from "
                         "flair,t1,t1ce,t2)")
    return names


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)
