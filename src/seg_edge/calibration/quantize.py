"""INT8 (Q/DQ, symmetric, per-channel, Conv only) and FP16 versions of an ONNX artifact.

INT8 follows what both ONNX Runtime CPU and TensorRT ≥ 10 run: Q/DQ nodes with zero point 0
on Conv inputs and weights only (ConvTranspose and the InstanceNorm subgraph stay float), after
ORT's quantization pre-processing. An accuracy budget is enforced on held-out cases: while any
region's Dice against the FP32 labels drops by more than the budget, the most sensitive Conv
(lowest SQNR of its quantized input) goes back to float. Progress goes to a ``log`` callback
(default: this module's logger); ONNX Runtime's tools run inside quantize's temporary folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seg_edge.choices import CalibrationMethod as Method, QuantizePrecision as Precision  # noqa: F401
from seg_edge.card import Tolerances
from seg_edge.artifact import load_artifact
from seg_edge.calibration.budget import DiceChange, Evaluator, conv_sensitivity
from seg_edge.calibration.sampler import PatchReader, plan_patches
from seg_edge.runtime.regions import case_folders
from seg_edge.errors import InputError
from seg_edge.export.graph import checked_instance_norm_nodes
from seg_edge.runtime.atomic import atomic_write

logger = logging.getLogger(__name__)

# The FP16 file's parity tolerance. With InstanceNorm kept FP32 end to end, the shipped model on the
# example measures max |Δp| 0.0037 with no label changed (ONNX Runtime CPU); when the norm's
# intermediates still went through FP16, 0.13 and 110 labels changed, which the former 0.25 / 0.97
# let pass. 0.02 separates the two with margin. A GPU's FP16 (TensorRT) is not measured yet.
FP16_TOLERANCES = Tolerances(max_prob_diff=0.02, min_region_dice=0.99)


@dataclass(frozen=True)
class QuantizeOptions:
    """``quantize``'s settings; checked on construction (InputError names the bad value)."""

    precision: Precision = Precision.int8
    method: Method = Method.minmax
    samples: int = 64
    budget: float = 0.01
    seed: int = 0
    threads: int | None = None
    sensitivity_samples: int = 2
    # also Q/DQ on Conv outputs: DQ → Conv → Q is the form ONNX Runtime's CPU provider can fuse into an
    # integer QLinearConv (3D included; without it every Conv runs in float behind DequantizeLinear).
    # On the edge U-Net ORT fused few of them and ran slower (docs/BENCHMARKS.md): off by default
    conv_outputs: bool = False
    eval_backend: str = "onnxruntime"  # where the budget is measured (the FP32 labels: ONNX Runtime)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "method", Method(self.method))
        if self.samples < 1 or self.sensitivity_samples < 1:
            raise InputError(f"--samples {self.samples}, sensitivity samples {self.sensitivity_samples} "
                             "(expected at least 1 each)")
        if not self.budget >= 0:
            raise InputError(f"--budget {self.budget} (expected a Dice loss >= 0)")


@dataclass
class QuantizeReport:
    path: Path
    precision: str
    change: DiceChange
    kept_float: list[str] = field(default_factory=list)
    iterations: list[dict] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    eval_cases: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _ort_scratch(folder: Path) -> Iterator[None]:
    """Run ONNX Runtime's quantization tools with ``folder`` as the working directory.

    Its symbolic shape inference saves a failed attempt to the relative path
    ``sym_shape_infer_temp.onnx`` (plus a ``<uuid>.data`` file), so the working directory is the
    only handle that keeps such files in quantize's own temporary folder. The working directory is
    process-wide: every path handed to the tools is absolute, and the previous one comes back even
    on error.
    """
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _int8(pre: Path, out: Path, reader, method: Method, exclude: list[str], cache: Path,
          conv_outputs: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calib = {Method.minmax: CalibrationMethod.MinMax, Method.entropy: CalibrationMethod.Entropy,
             Method.percentile: CalibrationMethod.Percentile}[method]
    reader.rewind()
    with _ort_scratch(out.parent):
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=calib, calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "CalibStridedMinMax": 1,
                                       # default: Q/DQ on Conv inputs only (the outputs feed float
                                       # InstanceNorm); conv_outputs: outputs too (ORT's QLinearConv)
                                       "OpTypesToExcludeOutputQuantization": [] if conv_outputs else ["Conv"]})


def to_fp16(model_path: Path, out: Path) -> int:
    """FP16 weights and compute; graph I/O and every InstanceNorm node stay FP32. Returns nodes kept.

    ArtifactError if the graph computes an InstanceNorm that the node finder does not name.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(model_path))
    keep = checked_instance_norm_nodes(model, str(model_path))
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    _drop_fp16_round_trips(converted.graph, set(keep))
    _topological_sort(converted.graph)  # the converter appends its input casts at the end
    onnx.save(converted, str(out))
    return len(keep)


def _cast_to(node) -> int | None:
    """The element type a Cast node converts to (None for no node, or another op)."""
    if node is None or node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_fp16_round_trips(graph, fp32_nodes: set[str]) -> int:
    """Connect FP32 nodes directly where the converter routes one's output to the next through FP16.

    The converter casts every output of a blocked node to FP16, and back to FP32 for a blocked
    consumer, so an InstanceNorm's mean, centred values and variance were rounded to FP16 between
    its nodes. Measured on the shipped model, one 96³ window of the example case, ORT CPU, max |Δp|
    against FP32: 0.107 with the round trips, 0.0029 without. Returns the inputs reconnected.
    """
    import onnx

    producers = {out: node for node in graph.node for out in node.output}
    reconnected = 0
    for node in graph.node:
        for k, name in enumerate(node.input):
            up = producers.get(name)
            down = producers.get(up.input[0]) if up is not None and _cast_to(up) == onnx.TensorProto.FLOAT else None
            origin = (producers.get(down.input[0]) if down is not None and _cast_to(down) == onnx.TensorProto.FLOAT16
                      else None)
            if down is not None and origin is not None and origin.name in fp32_nodes:
                node.input[k] = down.input[0]
                reconnected += 1
    while True:  # casts that nothing reads any more
        read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if node.op_type == "Cast" and node.output[0] not in read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    written = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    kept_info = [v for v in graph.value_info if v.name in written]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return reconnected


def _topological_sort(graph) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise InputError("FP16 graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def _finish(src: Path, dst: Path, model: Path, **card_changes) -> None:
    import onnx

    from seg_edge.export.onnx import write_card

    card = load_artifact(model).card
    provenance = {**card.provenance, **card_changes.pop("provenance", {})}
    proto = onnx.load(str(src))
    write_card(proto, card.replace(provenance=provenance, **card_changes))
    onnx.checker.check_model(proto)
    with atomic_write(dst) as tmp:
        onnx.save(proto, str(tmp))


def quantize(model: Path, calibration: Path, out: Path, eval_dir: Path | None = None,
             options: QuantizeOptions = QuantizeOptions(),
             log: Callable[[str], None] | None = None) -> QuantizeReport:
    """Write ``out``: the INT8 or FP16 version of ``model`` with its card updated and measured.

    ``log`` receives one line per budget iteration (default: this module's logger, at INFO).
    """
    # absolute: ONNX Runtime's tools run with the temporary folder as working directory
    model, out = Path(model).absolute(), Path(out).absolute()
    card = load_artifact(model).card
    if card.precision != "fp32":
        raise InputError(f"{model}: precision {card.precision} (expected an fp32 model to quantize)")
    cal_cases = [c.absolute() for c in case_folders(calibration)]
    eval_cases = [c.absolute() for c in case_folders(eval_dir)] if eval_dir else []
    if not eval_cases:  # default: hold out the last fifth of the calibration folder
        cut = max(1, len(cal_cases) // 5)
        if len(cal_cases) < 2:
            raise InputError(f"{calibration}: need >= 2 cases to hold some out for evaluation (or pass --eval)")
        cal_cases, eval_cases = cal_cases[:-cut], cal_cases[-cut:]
    overlap = {c.name for c in cal_cases} & {c.name for c in eval_cases}
    if overlap:
        raise InputError(f"{eval_dir}: eval cases also used for calibration: {sorted(overlap)[:3]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seg-edge-quantize-") as folder:
        tmp = Path(folder).absolute()
        if options.precision is Precision.fp16:
            return _fp16(model, out, tmp, eval_cases, options)
        return _int8_with_budget(model, out, tmp, (cal_cases, eval_cases), options, log or logger.info)


def _fp16(model: Path, out: Path, tmp: Path, eval_cases: list[Path], options: QuantizeOptions) -> QuantizeReport:
    to_fp16(model, tmp / "fp16.onnx")  # first: it refuses a graph whose norms it cannot keep FP32
    _finish(tmp / "fp16.onnx", tmp / "cand.onnx", model)
    change = Evaluator(model, eval_cases, options.threads).change(tmp / "cand.onnx")
    report = QuantizeReport(out, Precision.fp16.value, change=change, eval_cases=[c.name for c in eval_cases])
    _finish(tmp / "fp16.onnx", out, model, precision=Precision.fp16.value,
            tolerances=FP16_TOLERANCES,
            provenance={"quantization": _record(report, options, [], eval_cases)})
    return report


def _int8_with_budget(model: Path, out: Path, tmp: Path, cases: tuple[list[Path], list[Path]],
                      options: QuantizeOptions, log: Callable[[str], None]) -> QuantizeReport:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cal_cases, eval_cases = cases
    card = load_artifact(model).card
    evaluator = Evaluator(model, eval_cases, options.threads, options.eval_backend)
    pre = tmp / "pre.onnx"
    with _ort_scratch(tmp):
        # symbolic shape inference cannot follow the exporter's "16*x" dims; ONNX shape inference can
        quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    plans = plan_patches(cal_cases, card, options.samples, options.seed)
    reader = PatchReader(plans, card)
    cache = tmp / "calibration.json"
    excluded: list[str] = []
    ranking: list[tuple[str, float]] | None = None
    iterations: list[dict] = []
    while True:
        _int8(pre, tmp / "int8.onnx", reader, options.method, excluded, cache, options.conv_outputs)
        _finish(tmp / "int8.onnx", tmp / "cand.onnx", model, precision=Precision.int8.value)
        change = evaluator.change(tmp / "cand.onnx")
        iterations.append({"kept_float": list(excluded), "dice_vs_fp32": change.vs_fp32})
        log(f"INT8 with {len(excluded)} Conv kept float: Dice on {options.eval_backend} vs FP32 "
            + ", ".join(f"{k} {v:.4f}" for k, v in change.vs_fp32.items()))
        if change.worst_loss <= options.budget:
            break
        if ranking is None:
            few = PatchReader(plans[: options.sensitivity_samples], card)
            with _ort_scratch(tmp):
                ranking = conv_sensitivity(pre, tmp / "int8.onnx", few)
        remaining = [name for name, _ in ranking if name not in excluded]
        if not remaining:
            log("every Conv is back in float; budget still exceeded")
            break
        excluded.append(remaining[0])
    report = QuantizeReport(out, Precision.int8.value, change, kept_float=excluded, iterations=iterations,
                            eval_cases=[c.name for c in eval_cases])
    report.calibration = {"cases": [c.name for c in cal_cases], "samples": len(plans),
                          "method": options.method.value,
                          "strata": {s: sum(p.stratum == s for p in plans) for s in ("tumour", "healthy", "border")}}
    _finish(tmp / "int8.onnx", out, model, precision=Precision.int8.value,
            tolerances=Tolerances(max_prob_diff=1.0, min_region_dice=1.0 - options.budget),
            provenance={"quantization": _record(report, options, excluded, eval_cases)})
    return report


def _record(report: QuantizeReport, options: QuantizeOptions, excluded: list[str], eval_cases) -> dict:
    change = report.change
    return {"precision": report.precision, "calibration": report.calibration, "budget": options.budget,
            "kept_float": excluded, "eval_cases": [c.name for c in eval_cases], "conv_outputs": options.conv_outputs,
            "eval_backend": options.eval_backend,
            "dice_vs_fp32": change.vs_fp32 if change else None,
            "dice_vs_truth": {"fp32": change.fp32_vs_truth, report.precision: change.candidate_vs_truth}
            if change and change.fp32_vs_truth else None}
