"""``seg-edge build-engine``: a TensorRT plan at the precision the user asks for (TensorRT 10.x / 11.x API).

INT8 comes from a Q/DQ ONNX built as a strongly typed network (TensorRT >= 10.1 deprecates
calibrators, 11 removes them). FP16: on TensorRT 10 the FP16 builder flag with every
InstanceNorm layer pinned to FP32; on TensorRT 11 (always strongly typed, no precision flags)
the FP16 ONNX from ``seg-edge quantize --precision fp16``. The plan cache, the sidecar, the
GPU/TensorRT compatibility rules and the build itself live in ``seg_edge.runtime.sessions.plans``
(the TensorRT session needs them); this module adds the precision rules and the FP16-flag path.
No GPU is needed to import this module: ``tensorrt`` and ``cuda`` load inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg_edge.card import ModelCard

from seg_edge.artifact import load_artifact
from seg_edge.choices import EnginePrecision
from seg_edge.errors import ArtifactError, InputError
from seg_edge.runtime.sessions.plans import (BuildSpec, Profile, build_plan, import_tensorrt,
                                             make_profile, native_precision, trt_major)

logger = logging.getLogger(__name__)


def build_precision(card: ModelCard, requested: EnginePrecision | str, major: int) -> tuple[EnginePrecision, bool]:
    """(precision, strongly_typed) for this ONNX on this TensorRT major version; InputError if impossible."""
    requested = EnginePrecision(requested)
    native, strongly_typed = native_precision(card, major)
    if requested is EnginePrecision.int8:
        if native is not EnginePrecision.int8:
            raise InputError("INT8 engines are built from a Q/DQ model: run 'seg-edge quantize --precision int8' "
                             f"first (this model's precision is {card.precision})")
        return native, strongly_typed
    if native is EnginePrecision.int8:
        raise InputError(f"a Q/DQ (int8) model builds only as --precision int8, not {requested.value}")
    if native is EnginePrecision.fp16 or requested is EnginePrecision.fp32:
        return native, strongly_typed  # an FP16 ONNX computes in FP16 whatever is asked for
    if major >= 11:
        raise InputError("TensorRT 11 has no FP16 builder flag: build from the FP16 ONNX of "
                         "'seg-edge quantize --precision fp16'")
    return EnginePrecision.fp16, False  # FP16 flag, InstanceNorm pinned to FP32


@dataclass(frozen=True)
class BuildOptions:
    """What ``build_engine`` builds; ``precision`` is checked on construction (InputError)."""

    precision: EnginePrecision = EnginePrecision.fp32
    workspace_gb: float = 2.0
    profile: Profile | None = None  # default: make_profile(card)
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", EnginePrecision(self.precision))


def _pin_instance_norm_fp32(trt, network, norm_names: set[str]) -> set[str]:
    """TensorRT 10 FP16 builds: keep every layer parsed from an InstanceNorm node in FP32.

    Exported node names are '<module path>/<op>_<k>'; TensorRT names a node's layers after the
    node (unique suffixes for helper layers), so a layer belongs to a norm when its name starts
    with a norm's module path or equals a node's name. Returns the names of the pinned layers.
    """
    prefixes = tuple(sorted({n.split("/")[0] + "/" for n in norm_names if "/" in n}))
    exact = {n for n in norm_names if "/" not in n}
    pinned = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if (prefixes and layer.name.startswith(prefixes)) or layer.name in exact:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            pinned.add(layer.name)
    return pinned


def _fp16_flag_with_norms_fp32(onnx_path: Path, log: Callable[[str], None]):
    """The ``configure`` step of a TensorRT 10 FP16-flag build; fails unless every norm node is pinned."""
    import onnx

    from seg_edge.export.graph import checked_instance_norm_nodes, instance_norm_patterns

    model = onnx.load(str(onnx_path), load_external_data=False)
    norms = set(checked_instance_norm_nodes(model, str(onnx_path)))
    required = {node.name for nodes in instance_norm_patterns(model) for node in nodes}

    def configure(trt, network, config) -> None:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_instance_norm_fp32(trt, network, norms)
        unpinned = sorted(required - pinned)
        if unpinned:
            raise ArtifactError(f"{onnx_path}: {len(unpinned)} InstanceNorm node(s) have no TensorRT layer of "
                                f"their name to pin to FP32 (e.g. {', '.join(unpinned[:3])}); they would run in FP16")
        log(f"FP16 flag; {len(pinned)} InstanceNorm layers pinned to FP32")

    return configure


def build_engine(onnx_path: Path, out: Path, options: BuildOptions = BuildOptions(),
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build and write ``out`` + sidecar; returns the sidecar dict. Needs TensorRT and a GPU.

    ``log`` receives progress lines (default: this module's logger, at INFO).
    """
    onnx_path, out = Path(onnx_path), Path(out)
    artifact = load_artifact(onnx_path)
    if artifact.kind != "onnx":
        raise InputError(f"{onnx_path}: build-engine needs an ONNX model")
    trt = import_tensorrt()
    precision, strongly_typed = build_precision(artifact.card, options.precision, trt_major(trt))
    configure = None
    if precision is EnginePrecision.fp16 and not strongly_typed:
        configure = _fp16_flag_with_norms_fp32(onnx_path, log or logger.info)
    spec = BuildSpec(precision, strongly_typed, options.profile or make_profile(artifact.card),
                     options.workspace_gb, options.timing_cache)
    return build_plan(onnx_path, out, spec, configure)
