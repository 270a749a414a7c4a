"""Closed sets of option values, shared by the library (which checks them) and the CLI (which
offers them). A light module — only ``enum`` and ``errors`` — so that every command can import
it at start-up without pulling in numpy, onnx or torch.

An unknown value is an ``InputError`` naming the option and the values it takes.
"""

from __future__ import annotations

from enum import Enum

from seg_edge.errors import InputError


class Choice(str, Enum):
    """Base of the option enums: ``Choice("x")`` for an unknown "x" raises InputError."""

    @classmethod
    def _missing_(cls, value: object) -> Choice:
        option = getattr(cls, "__option__", cls.__name__.lower())
        raise InputError(f"{option} {value!r} (expected one of {', '.join(m.value for m in cls)})")


class QuantizePrecision(Choice):
    """What ``quantize`` makes of an FP32 model."""

    __option__ = "--precision"
    int8 = "int8"
    fp16 = "fp16"


class CalibrationMethod(Choice):
    """How INT8 calibration turns activation statistics into scales."""

    __option__ = "--method"
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class EnginePrecision(Choice):
    """What a TensorRT plan computes in; ``int8`` comes from a Q/DQ model."""

    __option__ = "--precision"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class InstanceNorm(Choice):
    """How InstanceNorm is exported: ``stable`` per-axis two-pass subgraph, or ONNX's ``native`` op."""

    __option__ = "--instance-norm"
    stable = "stable"
    native = "native"


class TrainPrecision(Choice):
    """Mixed precision of training: auto is fp16 AMP on CUDA and bf16 autocast on CPU; fp32 is none."""

    __option__ = "--precision"
    auto = "auto"
    fp32 = "fp32"


class TritonBackend(Choice):
    """Which Triton backend serves the model."""

    __option__ = "--backend"
    onnxruntime = "onnxruntime"
    tensorrt_plan = "tensorrt_plan"
    openvino = "openvino"


class TritonDevice(Choice):
    """Where the instances run (Triton's instance_group kind)."""

    __option__ = "--device"
    gpu = "gpu"
    cpu = "cpu"
