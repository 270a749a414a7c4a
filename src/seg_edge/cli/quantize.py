"""``seg-edge quantize``: INT8 (Q/DQ, with a Dice budget) or FP16 versions of an ONNX model."""

from __future__ import annotations

from pathlib import Path

import typer

from seg_edge.choices import CalibrationMethod as Method, QuantizePrecision as Precision
from seg_edge.cli.console import err, guarded, out
from seg_edge.cli.options import JSON_OPTION, THREADS_OPTION, Backend, dumps


@guarded
def quantize(
    model: Path = typer.Argument(..., help="FP32 ONNX model with a seg-edge card."),
    calibration: Path = typer.Option(..., "--calibration", help="Folder of BraTS-format cases for calibration."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .onnx."),
    precision: Precision = typer.Option(Precision.int8, "--precision", help="int8: Q/DQ, Conv only, symmetric."),
    method: Method = typer.Option(Method.minmax, "--method", help="INT8 calibration method."),
    samples: int = typer.Option(64, "--samples", min=1, help="Calibration patches (stratified over cases)."),
    eval_dir: Path = typer.Option(None, "--eval", help="Held-out cases for the accuracy gate "
                                  "(default: the last fifth of the calibration folder)."),
    budget: float = typer.Option(0.01, "--budget", min=0.0, help="Max Dice loss per region vs FP32 labels."),
    seed: int = typer.Option(0, "--seed"),
    conv_outputs: bool = typer.Option(False, "--conv-outputs", help="INT8: also quantize Conv outputs (DQ → "
                                      "Conv → Q, the form ONNX Runtime can run as integer QLinearConv)."),
    eval_backend: Backend = typer.Option(Backend.onnxruntime, "--eval-backend", help="INT8: the backend the "
                                         "budget is measured on (OpenVINO executes Q/DQ graphs differently)."),
    threads: int = THREADS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Quantize with calibration; layers go back to float until every region is within the budget."""
    from seg_edge.calibration.quantize import QuantizeOptions, quantize as run

    report = run(model, calibration, out_path, eval_dir,
                 QuantizeOptions(precision, method, samples, budget, seed, threads,
                                 conv_outputs=conv_outputs, eval_backend=eval_backend.value),
                 log=lambda s: err.print(s, highlight=False, markup=False))
    change = report.change
    data = {"path": str(report.path), "precision": report.precision, "kept_float": report.kept_float,
            "dice_vs_fp32": change.vs_fp32, "dice_vs_truth": {"fp32": change.fp32_vs_truth,
                                                              report.precision: change.candidate_vs_truth},
            "calibration": report.calibration, "eval_cases": report.eval_cases, "iterations": report.iterations}
    if json_out:
        out.print_json(dumps(data))
        return
    out.print(f"wrote {report.path} ({report.precision}); Dice vs FP32 labels: "
              + ", ".join(f"{k} {v:.4f}" for k, v in change.vs_fp32.items()))
    if change.fp32_vs_truth:
        out.print("Dice vs ground truth, fp32 → " + report.precision + ": " + ", ".join(
            f"{k} {change.fp32_vs_truth[k]:.4f} → {change.candidate_vs_truth[k]:.4f}" for k in change.vs_fp32))
    out.print(f"Conv layers kept float: {len(report.kept_float)}" +
              (f" ({', '.join(report.kept_float)})" if report.kept_float else ""))


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
