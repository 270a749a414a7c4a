"""Render docs/BENCHMARKS.md from the measured JSON files in docs/ (nothing here is typed in by hand).

    python benchmarks/write_report.py      # after `seg-edge bench ... --json > docs/bench_cpu.json`
                                           # and `python benchmarks/vs_monai.py`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuned_report import tuned_sections  # noqa: E402


def _load(name: str):
    path = DOCS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _label(entry: dict) -> str:
    return f"{Path(entry['model']).name} / {entry['backend']}"


def _gflop(model: str, shape: tuple[int, ...]) -> float | None:
    from seg_edge.evaluation.bench import graph_gflop

    path = Path(model) if Path(model).is_absolute() else DOCS.parent / model
    return graph_gflop(path, shape) if path.suffix == ".onnx" and path.is_file() else None


def recommendation(bench: dict) -> list[str]:
    """Which backend to use where, from the ratios measured in this run."""
    net = {(Path(r["model"]).name, r["backend"]): r["mean_s"] for r in bench["network"]}
    e2e = {(Path(r["model"]).name, r["backend"]): r["stages_s"]["total"] for r in bench["pipeline"]}
    fp32, int8 = "seg-edge-edge.onnx", "seg-edge-edge-int8.onnx"
    base_n, base_e = net.get((fp32, "onnxruntime")), e2e.get((fp32, "onnxruntime"))
    if not base_n or not base_e:
        return []
    def ratio(table, key, base):
        return f"{base / table[key]:.2f}×" if key in table else "n/a"
    return [
        "## Which backend where", "",
        f"- **x86 CPU without an NVIDIA GPU**: OpenVINO. On this machine, against ONNX Runtime FP32 on the same "
        f"file: OpenVINO f32 {ratio(net, (fp32, 'openvino'), base_n)} per window "
        f"({ratio(e2e, (fp32, 'openvino'), base_e)} end to end), OpenVINO bf16 hint "
        f"{ratio(net, (fp32, 'openvino-bf16'), base_n)} ({ratio(e2e, (fp32, 'openvino-bf16'), base_e)}), "
        f"the INT8 Q/DQ file on OpenVINO {ratio(net, (int8, 'openvino'), base_n)} "
        f"({ratio(e2e, (int8, 'openvino'), base_e)}). Accuracy: see the parity tolerances below and the model "
        "card's INT8 Dice change; bf16 needs a CPU with BF16 (AVX-512 BF16 / AMX), otherwise use f32 or INT8.",
        f"- **ONNX Runtime CPU** is the reference runtime (exact to 1e-4 in probabilities) but gains nothing from "
        f"the INT8 file ({ratio(net, (int8, 'onnxruntime'), base_n)} per window): its profile shows the 3D Convs "
        "still run in float behind DequantizeLinear (no QLinearConv fusion for these Q/DQ Conv3d nodes), so INT8 "
        "adds DequantizeLinear time instead of removing Conv time.",
        "- **NVIDIA GPU / Jetson**: TensorRT (docs/JETSON.md) — not measured here.",
        "",
        "Parity tolerances for OpenVINO on an FP32 artifact (measured on the example case): f32 max |Δp| ≤ 2e-2 "
        "and region Dice ≥ 0.999; bf16 max |Δp| ≤ 0.25 and Dice ≥ 0.99 (docs/parity_example.json).",
        "",
    ] + _int8_parity_lines()


def _int8_parity_lines() -> list[str]:
    data = _load("parity_example_int8.json")
    if not data:
        return []
    # worded from the measurement: whether OpenVINO, which executes Q/DQ graphs its own way, stays within the
    # Dice budget `seg-edge quantize` certified on ONNX Runtime (the card's min region Dice)
    from seg_edge.artifact import load_artifact

    budget = load_artifact(DOCS.parent / "src/seg_edge/assets/seg-edge-edge-int8.onnx").card.provenance[
        "quantization"]["budget"]
    worst = min((min(r["dice"].values()) for r in data["results"] if r["backend"].startswith("openvino")),
                default=None)
    if worst is None:
        verdict = "OpenVINO was not measured"
    elif worst >= 1 - budget:
        verdict = (f"OpenVINO, which executes Q/DQ graphs its own way, stays within the {budget} budget that "
                   "`seg-edge quantize` certified on ONNX Runtime on this case")
    else:
        verdict = (f"the two runtimes execute it differently, and OpenVINO loses more than the {budget} budget "
                   "that `seg-edge quantize` certified on ONNX Runtime")
    rows = ["The INT8 Q/DQ file against the FP32 PyTorch reference on the example (`seg-edge parity`, "
            f"docs/parity_example_int8.json): {verdict}:", "",
            "| backend | voxels changed | Dice WT | TC | ET |", "|---|---|---|---|---|"]
    for r in data["results"]:
        rows.append(f"| {r['backend']} | {r['labels_changed']} | " + " | ".join(f"{r['dice'][k]:.4f}"
                                                                         for k in ("WT", "TC", "ET")) + " |")
    return rows + [""]


def network_section(bench: dict) -> list[str]:
    rows = bench["network"]
    base = rows[0]["mean_s"]
    out = [f"### Network only: one window {tuple(rows[0]['shape'])}, {len(rows[0]['latencies_s'])} timed calls",
           "", "| model / backend | mean s | p50 s | p90 s | min s | max s | windows/s | GFLOP/s | speed-up vs first |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gflop = _gflop(r["model"], tuple(r["shape"]))  # a property of the graph, counted here
        gflops = f"{gflop / r['mean_s']:.1f}" if gflop else "n/a"
        out.append(f"| {_label(r)} | {r['mean_s']:.3f} | {r['p50_s']:.3f} | {r['p90_s']:.3f} | {r['min_s']:.3f} | "
                   f"{r['max_s']:.3f} | {r['windows_per_s']:.2f} | {gflops} | {base / r['mean_s']:.2f}× |")
    return out


def pipeline_section(bench: dict) -> list[str]:
    rows = bench["pipeline"]
    if not rows:
        return []
    base = rows[0]["stages_s"]["total"]
    out = [f"### End to end on `{rows[0]['case']}` (median of {len(rows[0]['runs'])} runs, model loaded once)",
           "", "| model / backend | load | preprocess | inference | postprocess | write | total s | non-network | "
           "cold start s | peak RSS MB | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["stages_s"]
        share = 100 * (1 - s["inference"] / s["total"])
        out.append(f"| {_label(r)} | {s['load']:.2f} | {s['preprocess']:.2f} | {s['inference']:.2f} | "
                   f"{s['postprocess']:.2f} | {s['write']:.2f} | {s['total']:.2f} | {share:.1f} % | "
                   f"{r['cold_start_s']:.2f} | {r['peak_rss_mb']:.0f} | {base / s['total']:.2f}× |")
    return out


def monai_section(vs: dict) -> list[str]:
    ours, theirs = vs["summary"]["seg-edge"], vs["summary"]["monai"]
    so, st = ours["stages_s"], theirs["stages_s"]
    ours_pipe = sum(so[k] for k in ("load", "preprocess", "inference", "postprocess", "write"))
    m = vs["machine"]
    return [
        "## seg-edge predict vs the PyTorch + MONAI recipe",
        "",
        f"Same case (`{Path(vs['case']).name}`), same model ({Path(vs['model']).name} and its checkpoint), "
        f"{vs['threads']} threads each, {vs['repeats']} alternating runs as fresh processes (medians).",
        "",
        "| | seg-edge (ONNX Runtime) | PyTorch + MONAI | ratio |",
        "|---|---|---|---|",
        f"| process wall time (start → label map written) | {ours['process_wall_s']:.2f} s | "
        f"{theirs['process_wall_s']:.2f} s | {vs['ratio_process_wall']:.2f}× |",
        f"| pipeline inside the process (load → write) | {ours_pipe:.2f} s | {st['pipeline']:.2f} s | "
        f"{vs['ratio_pipeline']:.2f}× |",
        f"| network (sliding window) | {so['inference']:.2f} s | {st['inference']:.2f} s | "
        f"{st['inference'] / so['inference']:.2f}× |",
        f"| preprocess | {so['preprocess']:.2f} s | {st['preprocess']:.2f} s | |",
        f"| imports + interpreter (PyTorch side) | | {st['imports']:.2f} s | |",
        "",
        f"Non-network share of seg-edge's pipeline: {100 * vs['seg_edge_non_network_share']:.1f} %. "
        "Label agreement (Dice between the two label maps, ET rule off on both sides): "
        + ", ".join(f"{k} {v:.4f}" for k, v in vs["dice_agreement"].items()) + ".",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, Python {m['python']}, torch {m['torch']}, "
        f"MONAI {m['monai']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}.",
    ]


def _dice_table(name: str, data: dict) -> list[str]:
    out = [f"**{name}** ({len(data['cases'])} cases): mean ± std", "",
           "| region | Dice | HD95 (mm) | sensitivity | precision |", "|---|---|---|---|---|"]
    for region in ("WT", "TC", "ET"):
        s = data["summary"][region]
        out.append(f"| {region} | {s['dice']['mean']:.4f} ± {s['dice']['std']:.4f} | "
                   f"{s['hd95']['mean']:.2f} ± {s['hd95']['std']:.2f} | {s['sensitivity']['mean']:.4f} | "
                   f"{s['precision']['mean']:.4f} |")
    return out + [""]


def _example_parity_line(precision: str) -> list[str]:
    """The file against the PyTorch reference on the example, on ONNX Runtime (`make reduced-precision`)."""
    data = _load(f"parity_example_{precision}.json")
    rows = [r for r in (data or {}).get("results", []) if r["backend"] == "onnxruntime"]
    if not rows:
        return []
    r = rows[0]
    return [f"On the example case against the PyTorch reference (`seg-edge parity`, ONNX Runtime, "
            f"docs/parity_example_{precision}.json): max |Δp| {r['max_abs']:.2g}, {r['labels_changed']} labels "
            "changed, Dice " + ", ".join(f"{k} {r['dice'][k]:.4f}" for k in ("WT", "TC", "ET")) + ".", ""]


def model_card() -> list[str]:
    prov = _load("model_provenance.json")
    if not prov:
        return []
    t = prov["training"]
    lines = ["# Model card: seg-edge-edge", "",
             "**A demonstration model.** Trained and evaluated only on synthetic BraTS-like cases generated by "
             "`seg-edge synth`; it has never seen patient data, has not been validated on it, and is not a medical "
             "device. Its figures say how well the deployment pipeline preserves a model, not how well it would "
             "segment real gliomas.", "",
             "## What it is", "",
             "MONAI `DynUNet`, preset `edge`: 5 levels, filters 8-16-32-64-128, kernels 3³, InstanceNorm (affine), "
             "LeakyReLU 0.01, transposed-convolution upsampling; 5 input channels (FLAIR, T1, T1ce, T2 z-scored on "
             "non-zero voxels + NVIDIA's mask channel), 3 sigmoid outputs (WT, TC, ET); sliding window 96³, overlap "
             "0.5, gaussian blending; labels NCR=1, ED=2, ET=4 (or 3 with `--label-scheme brats2023`). Files: "
             "`src/seg_edge/assets/seg-edge-edge.onnx` (FP32, card in its metadata; `seg-edge info`), "
             "`seg-edge-edge-int8.onnx`, `seg-edge-edge-fp16.onnx`, and the torch state dict `seg-edge-edge.pt` "
             "(for parity).", "",
             "## Training", "",
             f"- Data: {t['data']}.",
             f"- Split by case: {t['split_cases']['train']} train / {t['split_cases']['val']} validation / "
             f"{t['split_cases']['test']} test.",
             f"- Recipe: {t['loss']}; " + ", ".join(f"{k} {v}" for k, v in t["recipe"].items()) + ".",
             f"- Ran {t['epochs_run']} epochs; best validation epoch {t['best_epoch']} with Dice "
             + ", ".join(f"{k} {v:.4f}" for k, v in t["validation_dice"].items()) + ".", "",
             "## Evaluation (seg-edge predict with ONNX Runtime, scored by seg-edge evaluate)", ""]
    for name, file in (("Held-out test split of the training run", "eval_test_split.json"),
                       ("New synthetic cases, MNI152 anatomy, seed 2000 (never used in training)",
                        "eval_synthetic_mni152.json"),
                       ("New synthetic cases, procedural anatomy, seed 2100 (never used in training)",
                        "eval_synthetic_procedural.json")):
        data = _load(file)
        if data:
            lines += _dice_table(name, data)
    for precision in ("int8", "fp16"):
        q = _load(f"quantize_{precision}.json")
        if q:
            lines += [f"## {precision.upper()} version", "",
                      f"Dice of its label maps against the FP32 model's on {len(q['eval_cases'])} "
                      "held-out synthetic cases (seeds 5000/5100): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in q["dice_vs_fp32"].items())
                      + f"; Conv layers kept float: {len(q['kept_float'])}. Dice against ground truth, FP32 → "
                      f"{precision.upper()}: " + ", ".join(
                          f"{k} {q['dice_vs_truth']['fp32'][k]:.4f} → {q['dice_vs_truth'][precision][k]:.4f}"
                          for k in ("WT", "TC", "ET")) + ".", ""]
            lines += _example_parity_line(precision)
    lines += ["## Limits", "",
              "- Synthetic anatomy (a procedural brain, or the MNI152 template under small random similarity "
              "transforms) and synthetic tumours; real scanners, protocols, post-operative cavities, "
              "multifocal disease and registration errors are not represented.",
              "- Inputs must be skull-stripped and co-registered at the model's spacing; seg-edge refuses other "
              "spacings and resamples only when asked (`--resample`).", ""]
    return lines


def main() -> None:
    bench, vs = _load("bench_cpu.json"), _load("benchmarks_vs_monai.json")
    lines = ["# Benchmarks", "",
             "All figures below were measured by the commands named, on synthetic data (see the data notice in "
             "the README), and are regenerated by `python benchmarks/write_report.py` from the JSON files in "
             "`docs/`. Only ratios measured side by side in one run are compared. GPU backends have not been "
             "measured (docs/JETSON.md).", ""]
    if bench:
        lines += ["## CPU backends and precisions (`seg-edge bench ... --compare --json > docs/bench_cpu.json`)", ""]
        lines += network_section(bench) + [""] + pipeline_section(bench) + [""] + recommendation(bench)
    if vs:
        lines += monai_section(vs) + [""]
    lines += tuned_sections()
    (DOCS / "BENCHMARKS.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'BENCHMARKS.md'}")
    card = model_card()
    if card:
        (DOCS / "MODEL_CARD.md").write_text("\n".join(card))
        print(f"wrote {DOCS / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
