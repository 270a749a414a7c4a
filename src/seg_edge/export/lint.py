"""TensorRT readiness of any ONNX graph, checked on the CPU (no TensorRT needed).

Findings name the node and what TensorRT expects: op types its ONNX parser supports, the opset
range of the target version, Q/DQ zero points of 0 (TensorRT's INT8 is symmetric), no INT8 into
ConvTranspose or InstanceNorm, weights inline (no external-data files), and FP16 graphs whose
InstanceNorm stays FP32. The seg-edge card is optional, as Polygraphy lints any graph: when the
file carries one, the card itself (types, ranges, names and channels against the graph) and the
input shapes it implies (rank 4 or 5 as its ``spatial_dims`` says, fixed spatial axes multiples of its
divisor) are checked too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.card import CARD_KEY, ModelCard

from seg_edge.onnxproto import read_onnx_header

from seg_edge.artifact import check_card_graph
from seg_edge.errors import ArtifactError, InputError
from seg_edge.export.graph import instance_norm_nodes

# TensorRT version → (min opset, max opset): TensorRT support matrices (10.x: opsets 9-20, 11.x: 9-25).
OPSET_RANGE = {10: (9, 20), 11: (9, 25)}
# Ops of the ONNX-TensorRT parser (operators.md) that U-Net exports produce or could; anything else
# is reported so that a person checks operators.md for the target version.
SUPPORTED_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
Conv ConvTranspose DequantizeLinear Div Elu Equal Erf Exp Expand Flatten Floor Gather Gemm
GlobalAveragePool GlobalMaxPool Greater GroupNormalization HardSigmoid Identity InstanceNormalization
LayerNormalization LeakyRelu Less Log MatMul Max MaxPool Mean Min Mul Neg Not Or Pad Pow PRelu
QuantizeLinear Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize
Shape Sigmoid Sign Slice Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Tile Transpose Unsqueeze Where
""".split())


@dataclass(frozen=True)
class Finding:
    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.node}: {self.message}"


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_ops(model, trt_major: int) -> list[Finding]:
    out = []
    lo, hi = OPSET_RANGE[trt_major]
    opset = _opset(model)
    if not lo <= opset <= hi:
        out.append(Finding("<model>", "opset", f"opset {opset}; TensorRT {trt_major}.x parses opsets {lo}-{hi}"))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            out.append(Finding(node.name or node.op_type, "unsupported-op",
                               f"{node.domain + '.' if node.domain else ''}{node.op_type} is not parsed by TensorRT's "
                               "ONNX parser (see onnx-tensorrt operators.md)"))
    return out


def _check_qdq(model, norms: set[str]) -> list[Finding]:
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    from onnx import numpy_helper

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None or np.any(numpy_helper.to_array(zp)):
                out.append(Finding(node.name, "asymmetric-qdq", "zero point is not the constant 0 "
                                   "(TensorRT INT8 is symmetric: quantize with ActivationSymmetric/WeightSymmetric)"))
        if node.op_type == "DequantizeLinear":
            for c in consumers.get(node.output[0], []):
                if c.op_type == "ConvTranspose" or c.name in norms:
                    kind = "InstanceNorm" if c.name in norms else "ConvTranspose"
                    out.append(Finding(c.name, "int8-unsupported", f"{kind} is fed INT8 (Q/DQ) input; "
                                       "TensorRT runs it in float: keep it out of quantization"))
    return out


def _check_fp16_norm(model, norms: set[str]) -> list[Finding]:
    import onnx

    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    casts_to_half = {n.output[0] for n in model.graph.node if n.op_type == "Cast"
                     and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)}
    out = []
    for node in model.graph.node:
        if node.name in norms and any(i in fp16 or i in casts_to_half for i in node.input):
            out.append(Finding(node.name, "fp16-instancenorm", "InstanceNorm computes in FP16; "
                               "keep it FP32 (it overflows/loses precision in half)"))
    return out


def _check_shapes(model, card: ModelCard) -> list[Finding]:
    """The input shapes the card implies: rank 2 + spatial_dims, fixed spatial axes multiples of its divisor."""
    out = []
    divisor, dims_expected = card.size_divisor, card.inputs.spatial_dims
    layout = "N, C, X, Y, Z" if dims_expected == 3 else "N, C, H, W"
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in list(enumerate(dims))[2:]:
            if dim.HasField("dim_value") and dim.dim_value % divisor:
                out.append(Finding(value.name, "shape", f"axis {axis} is fixed at {dim.dim_value}, "
                                   f"not a multiple of the size divisor {divisor}"))
        if len(dims) != dims_expected + 2:
            out.append(Finding(value.name, "shape", f"rank {len(dims)} (expected {layout}: the card's "
                               f"{dims_expected}D input)"))
    return out


@dataclass(frozen=True)
class LintReport:
    """Findings of one file; ``card`` says what was checked: 'absent' (graph only), 'valid' or 'invalid'."""

    path: Path
    trt_version: str
    card: str
    findings: list[Finding] = field(default_factory=list)


def _trt_major(trt_version: str) -> int:
    try:
        trt_major = int(str(trt_version).split(".")[0])
    except ValueError:
        trt_major = 0
    if trt_major not in OPSET_RANGE:
        raise InputError(f"--trt-version {trt_version} (expected 10.x or 11.x)")
    return trt_major


def _check_card(path: Path) -> tuple[str, ModelCard | None, list[Finding]]:
    """('absent' | 'valid' | 'invalid', the card if valid, its findings); ArtifactError if not ONNX."""
    header = read_onnx_header(path)
    if CARD_KEY not in header.metadata:
        return "absent", None, []
    try:
        card = ModelCard.from_json(header.metadata[CARD_KEY], str(path))
        check_card_graph(card, header, str(path))
    except ArtifactError as exc:
        return "invalid", None, [Finding(CARD_KEY, "card", str(exc).removeprefix(f"{path}: "))]
    return "valid", card, []


def lint_model(path: Path, trt_version: str = "10.3") -> LintReport:
    """Lint any ONNX file for TensorRT ``trt_version`` (major 10 or 11), and its seg-edge card if it has one."""
    import onnx

    path = Path(path)
    trt_major = _trt_major(trt_version)
    card_state, card, findings = _check_card(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not a stable public type
        raise ArtifactError(f"{path}: onnx cannot parse the model ({exc})") from exc
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        findings.append(Finding(external[0], "external-data", f"{len(external)} initializers live in external "
                                "files; export one self-contained file"))
    norms = set(instance_norm_nodes(model))
    findings += _check_ops(model, trt_major)
    findings += _check_qdq(model, norms)
    findings += _check_fp16_norm(model, norms)
    if card is not None:  # shapes are the card's contract: a plain graph may have any rank
        findings += _check_shapes(model, card)
    return LintReport(path, str(trt_version), card_state, findings)


def lint(path: Path, trt_version: str = "10.3") -> list[Finding]:
    """All findings for ``path`` on TensorRT ``trt_version`` (see ``lint_model``)."""
    return lint_model(path, trt_version).findings
