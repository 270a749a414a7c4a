"""The 'tuned on this machine' section of docs/BENCHMARKS.md (issue 13), from the JSON files the
benchmarks write into docs/: tune_example.json, window_effects.json, gemm_peak.json,
benchmarks_vs_monai_tuned.json, batch_pipeline.json, profile_accuracy.json, int8_forms.json,
conv_layers.json. Missing files leave
their part out."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(name: str, folder: Path = DOCS):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(m: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}" + (f"; {versions}" if versions else "")


def _hardware(m: dict) -> tuple:
    return m["cpu"], tuple(m["flags"]), m["cores"]


def tune_part(t: dict) -> list[str]:
    counts: dict[str, int] = {}
    for trial in t["trials"]:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    ref = sum(t["reference_seconds"]) / len(t["reference_seconds"])
    out = ["### `seg-edge tune` (budget %g)" % t["budget"], "",
           f"{len(t['cases'])} synthetic tune cases, {len(t['trials'])} configurations ("
           + ", ".join(f"{n} {s}" for s, n in counts.items()) + f") in {t['wall_s'] / 60:.1f} min; the reference "
           f"(card configuration, ONNX Runtime FP32) took {ref:.2f} s per case. Front "
           "([docs/tune_front.png](tune_front.png)):", "",
           "| configuration | s on case 1 | worst-region Dice |", "|---|---|---|"]
    rows = list(t["front"])
    if t["chosen"] and all(r["configuration"] != t["chosen"]["configuration"] for r in rows):
        rows.append(t["chosen"])  # chosen by mean seconds per case, so it may be off the first case's front
    for trial in rows:
        mark = " **(chosen)**" if t["chosen"] and trial["configuration"] == t["chosen"]["configuration"] else ""
        out.append(f"| {trial['configuration']}{mark} | {trial['seconds'][0]:.2f} | "
                   f"{min(trial['worst_region_dice']):.4f} |")
    if "accept_at_dice" in t:
        out += ["", f"A configuration was accepted only at worst-region Dice ≥ {t['accept_at_dice']:g} on every tune "
                "case: half the budget is kept for cases tune has not seen."]
    c = t["chosen"]
    if c:
        mean = sum(c["seconds"]) / len(c["seconds"])
        out += ["", f"Chosen: {c['configuration']}: {mean:.2f} s per case (preprocess + network + postprocess, "
                f"model loaded) vs {ref:.2f} s for the reference ({ref / mean:.2f}×), worst-region Dice "
                f"{min(c['worst_region_dice']):.4f} over the tune cases."]
    return out


def effects_part(e: dict) -> list[str]:
    load = e.get("load_avg")
    out = [f"### Window-planning levers, one at a time ({e['backend']}, {e['threads']} threads, medians of "
           f"{e['repeats']}" + (f"; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}" if load else "")
           + ")", "", "| case | variant | windows (empty) | network s | worst-region Dice |",
           "|---|---|---|---|---|"]
    for case, rows in e["cases"].items():
        for name, r in rows.items():
            out.append(f"| {case} | {name} | {r['windows']} ({r['empty']}) | {r['network_s']:.2f} | "
                       f"{r['worst_region_dice']:.4f} |")
    return out


def gemm_part(g: dict) -> list[str]:
    load = g.get("load_avg")
    out = [f"### Network throughput against the FP32 GEMM peak ({g['threads']} threads"
           + (f"; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}" if load else "") + ")", "",
           f"Measured FP32 GEMM peak: **{g['gemm']['peak_gflops']} GFLOP/s** ({g['gemm']['peak_by']}; all sizes: "
           + ", ".join(f"{k} {v}" for k, v in g["gemm"]["gflops"].items()) + ").", "",
           "| backend | window | batch | streams | GFLOP per call | median s | GFLOP/s | % of GEMM peak |",
           "|---|---|---|---|---|---|---|---|"]
    for r in g["network"]:
        out.append(f"| {r['backend']} | {'×'.join(map(str, r['window']))} | {r['batch']} | {r.get('streams', 1)} | "
                   f"{r['gflop_per_call']} | "
                   f"{r['median_s']:.3f} | {r['gflops']} | {r['percent_of_peak']} % |")
    return out


def layers_part(c: dict) -> list[str]:
    """Convolution time by output-channel width (benchmarks/conv_layers.py)."""
    peak = c.get("gemm_peak_gflops")
    out = [f"### Why the network stays below the GEMM peak: convolutions by width (OpenVINO FP32, "
           f"{c['window']}³ window, {c['threads']} threads, `PERF_COUNT`; load average at the end "
           f"{c['load_avg'][0]:.1f})", "",
           "| output channels | share of the FLOPs | ms | GFLOP/s | % of GEMM peak |", "|---|---|---|---|---|"]
    for r in c["by_width"]:
        pct = f"{100 * r['gflops'] / peak:.0f} %" if peak and r["gflops"] else ""
        out.append(f"| {r['out_channels']} | {100 * r['flop_share']:.1f} % | {1e3 * r['seconds']:.1f} | "
                   f"{r['gflops']} | {pct} |")
    narrow = sum(r["flop_share"] for r in c["by_width"] if r["out_channels"] < c["float32_lanes"])
    types = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in list(c["by_node_type_s"].items())[:6])
    out += ["", f"All convolutions: {c['conv_gflops']} GFLOP/s; the whole window {c['network_gflops']} GFLOP/s. "
            f"This CPU's vectors hold {c['float32_lanes']} float32 lanes; convolutions with fewer output channels "
            f"than that carry {100 * narrow:.0f} % of the FLOPs. Time by node type: {types}."]
    return out


def monai_part(v: dict) -> list[str]:
    ours, theirs = v["summary"]["seg-edge"], v["summary"]["monai"]
    so, st = ours["stages_s"], theirs["stages_s"]
    stages = " / ".join(f"{k} {so[k]:.2f}" for k in ("load", "preprocess", "inference", "postprocess", "write"))
    return ["### Process to process against the PyTorch + MONAI recipe, tuned profile", "",
            f"`{Path(v['case']).name}`, seg-edge running `{Path(v['seg_edge_model']).name}` (its profile), the "
            f"recipe the FP32 checkpoint, {v['threads']} threads each, {v['repeats']} alternating fresh processes "
            "(medians).", "",
            "| | seg-edge (tuned) | PyTorch + MONAI FP32 | ratio |", "|---|---|---|---|",
            f"| process wall (start → label map) | {ours['process_wall_s']:.2f} s | {theirs['process_wall_s']:.2f} s "
            f"| **{v['ratio_process_wall']:.2f}×** |",
            f"| network | {so['inference']:.2f} s | {st['inference']:.2f} s | "
            f"{st['inference'] / so['inference']:.2f}× |",
            "", f"seg-edge stages (s): {stages}; non-network share of its pipeline "
            f"{100 * v['seg_edge_non_network_share']:.1f} %. Dice of seg-edge's labels vs the recipe's (ET rule off): "
            + ", ".join(f"{k} {x:.4f}" for k, x in v["dice_agreement"].items()) + "; vs `--reference`: "
            + ", ".join(f"{k} {x:.4f}" for k, x in v["dice_vs_reference"].items()) + ". 1-min load average before "
            f"each run: seg-edge {v['load_avg_1min']['seg-edge']}, MONAI {v['load_avg_1min']['monai']}."] + _bf16(v)


def _bf16(v: dict) -> list[str]:
    """The recipe under bf16 autocast, where the CPU has BF16 (vs_monai.py runs it then)."""
    arm = v["summary"].get("monai-bf16")
    if not arm:
        return ["", "The CPU has no BF16 instructions: the recipe's bf16 autocast was not run."]
    dice = ", ".join(f"{k} {x:.4f}" for k, x in (v.get("dice_monai_bf16_vs_fp32") or {}).items())
    return ["", f"PyTorch + MONAI under bf16 autocast (this CPU has BF16): process wall {arm['process_wall_s']:.2f} s, "
            f"network {arm['stages_s']['inference']:.2f} s; seg-edge (tuned) is "
            f"**{v['ratio_process_wall_bf16']:.2f}×** faster process to process. Dice of the bf16 recipe's labels vs "
            f"its FP32 labels: {dice}."]


def batch_part(b: dict) -> list[str]:
    p = b["process"]
    out = ["### A batch of cases (`seg-edge predict FOLDER`, tuned profile)", "",
           f"{p['cases']} synthetic cases: {p['wall_per_case_s']:.2f} s per case end to end against "
           f"{p['network_per_case_s']:.2f} s of network per case (**{p['ratio_wall_to_network']:.2f}×**), peak RSS "
           f"**{p['peak_rss_mb']:.0f} MB** (1-min load average before: {p['load_avg_1min_before']}); stages per "
           "case (s, overlapped): "
           + ", ".join(f"{k} {x}" for k, x in p["stages_per_case_s"].items()) + "."]
    rows = b.get("in_process") or {}
    if rows:
        out += ["", "In one process on the same loaded model (wall / network):", ""]
        for name, runs in rows.items():
            out.append(f"- {name}: " + "; ".join(f"{r['wall_s']:.1f} s / {r['network_s']:.1f} s = {r['ratio']:.3f}×"
                                                 for r in runs))
    return out


def accuracy_part(a: dict) -> list[str]:
    load = a.get("load_avg")
    out = [f"### The profile on other synthetic cases ({len(a['cases'])} cases, not used by tune"
           + (f"; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}" if load else "") + ")", "",
           "| case | worst-region Dice vs reference | WT | TC | ET | reference network s | tuned network s |",
           "|---|---|---|---|---|---|---|"]
    for r in a["cases"]:
        d = r["dice"]
        out.append(f"| {r['case']} | {r['worst_region_dice']:.4f} | {d['WT']:.4f} | {d['TC']:.4f} | {d['ET']:.4f} | "
                   f"{r['reference_inference_s']:.2f} | {r['tuned_inference_s']:.2f} |")
    budget = (_load("tune_example.json") or {}).get("budget", 0.01)
    for r in a["cases"]:
        if r["worst_region_dice"] >= 1 - budget or "reference_voxels" not in r:
            continue
        region = min(r["dice"], key=r["dice"].get)
        truth = r.get("truth_voxels")
        extra = (f" in {r['reference_et_components']} connected components" if region == "ET" else "")
        out += ["", f"{r['case']}: {region} Dice {r['dice'][region]:.4f}. The reference labels {region} in "
                f"{r['reference_voxels'][region]} voxels{extra}, the tuned profile in {r['tuned_voxels'][region]}"
                + (f"; the ground truth has {truth[region]} {region} voxels." if truth else ".")]
    return out


def int8_part(d: dict) -> list[str]:
    out = [f"### INT8 on this CPU ({d['threads']} threads, medians of {d['repeats']})", "",
           "An isolated 3D convolution (32→32 channels, 48³) on ONNX Runtime: which nodes its optimizer leaves "
           "and the time.", "", "| form | ORT nodes after optimization | ms |", "|---|---|---|"]
    for r in d["isolated_conv"]:
        out.append(f"| {r['form']} | {' '.join(r['ort_nodes'])} | {r['median_ms']} |")
    out += ["", "The model per 96³ window (seconds):", "",
            "| model | backend | streams | s per window | QLinearConv nodes (ORT) |", "|---|---|---|---|---|"]
    for r in d["model_forms"]:
        fused = "" if r["ort_qlinearconv_nodes"] is None else r["ort_qlinearconv_nodes"]
        out.append(f"| {r['model']} | {r['backend']} | {r['streams']} | {r['seconds_per_window']:.3f} | {fused} |")
    tuned = _load("tune_with_int8.json")
    dropped = None
    if tuned:
        int8 = [t for t in tuned["trials"] if "int8" in t["configuration"] and t["worst_region_dice"]]
        best = max(int8, key=lambda t: min(t["worst_region_dice"]), default=None)
        accept = tuned.get("accept_at_dice", 1 - tuned["budget"])
        if best:
            dropped = min(best["worst_region_dice"]) < accept
            out += ["", f"`seg-edge tune --variant seg-edge-edge-int8.onnx` ran {len(int8)} INT8 configurations on "
                    f"the tune cases; the most accurate, {best['configuration']}, reached worst-region Dice "
                    f"{min(best['worst_region_dice']):.4f} against the reference (accepted at ≥ {accept:g}): INT8 is "
                    + ("dropped by the budget here" if dropped else "within the budget here")
                    + " (docs/tune_with_int8.json, [front](tune_front_with_int8.png))."]
    return out + ["", "Verdict: " + _int8_verdict(d, dropped)]


def _per_window(d: dict, model: str, backend: str) -> float | None:
    rows = [r["seconds_per_window"] for r in d["model_forms"] if r["model"] == model and r["backend"] == backend]
    return min(rows) if rows else None


def _int8_verdict(d: dict, dropped: bool | None) -> str:
    """What the measurements say about INT8 on each backend (worded from the numbers, not typed in)."""
    iso = {r["form"]: r for r in d["isolated_conv"]}
    flt = iso.get("float Conv")
    qconv = [r for f, r in iso.items() if "QLinearConv" in r["ort_nodes"]]
    best_iso = min(qconv, key=lambda r: r["median_ms"], default=None)
    forms = sorted({r["model"] for r in d["model_forms"] if r["model"] != "FP32"})
    fused = {m: max((r["ort_qlinearconv_nodes"] or 0) for r in d["model_forms"] if r["model"] == m) for m in forms}
    fp32_ort, fp32_ov = _per_window(d, "FP32", "onnxruntime"), _per_window(d, "FP32", "openvino")
    parts = []
    if best_iso and flt:
        parts.append(f"ONNX Runtime's CPU provider has an integer 3D convolution (QLinearConv, run in NHWC between "
                     f"Transposes): an isolated DQ → Conv → Q group becomes one, {best_iso['median_ms']} ms against "
                     f"{flt['median_ms']} ms in float")
    ort_rows = ", ".join(f"{m}: {fused[m]} QLinearConv, {_per_window(d, m, 'onnxruntime'):.3f} s" for m in forms)
    parts.append(f"in the edge U-Net, whose Convs feed float InstanceNorm subgraphs, its optimizer fused "
                 f"({ort_rows} per window against {fp32_ort:.3f} s FP32), so INT8 does not pay on ONNX Runtime for "
                 "this model")
    ov = [(m, _per_window(d, m, "openvino")) for m in forms]
    ov_best = min(ov, key=lambda kv: kv[1] or 1e9)
    if fp32_ov and ov_best[1]:
        parts.append(f"OpenVINO runs the Q/DQ file with integer kernels: {ov_best[1]:.3f} s per window "
                     f"({ov_best[0]}) against {fp32_ov:.3f} s FP32 ({fp32_ov / ov_best[1]:.2f}×)"
                     + ({True: ", but its labels leave the budget, so tune drops it",
                         False: ", and its labels stay within the budget", None: ""}[dropped]))
    return ("; ".join(parts) + ". NNCF's `quantize_with_accuracy_control` was not used: it works on and returns "
            "OpenVINO IR models, which are not a seg-edge artifact (ONNX + card), and nncf is not a dependency; "
            "`seg-edge quantize --eval-backend openvino` runs the same accuracy control (the most sensitive Conv "
            "back to float until within budget) measured on OpenVINO.")


def acceptance_lines(folder: Path = DOCS) -> list[str]:
    """Issue 13's acceptance figures side by side, from the JSON files in ``folder`` (absent ones are left out)."""
    out = []
    t, a = _load("tune_example.json", folder), _load("profile_accuracy.json", folder)
    v, g, b = _load("benchmarks_vs_monai_tuned.json", folder), _load("gemm_peak.json", folder), \
        _load("batch_pipeline.json", folder)
    if v:
        out.append(f"- Process to process on `{Path(v['case']).name}` with the tuned profile: "
                   f"**{v['ratio_process_wall']:.2f}×** faster than the PyTorch + MONAI FP32 recipe (target ≥ 5×).")
    if t and t["chosen"] and a:
        ok = sum(r["worst_region_dice"] >= 1 - t["budget"] for r in a["cases"])
        out.append(f"- Worst-region Dice vs the reference: {min(t['chosen']['worst_region_dice']):.4f} on the "
                   f"{len(t['cases'])} tune cases; ≥ {1 - t['budget']:g} on {ok} of {len(a['cases'])} other cases "
                   f"(lowest {min(r['worst_region_dice'] for r in a['cases']):.4f}; table below).")
    if g:
        best = max(g["network"], key=lambda r: r["gflops"])
        out.append(f"- Best FP32 network throughput {best['gflops']} GFLOP/s ({best['backend']}, "
                   f"{'×'.join(map(str, best['window']))}, batch {best['batch']}, {best.get('streams', 1)} streams) = "
                   f"**{best['percent_of_peak']} %** of the measured {g['gemm']['peak_gflops']} GFLOP/s FP32 GEMM "
                   "peak (target ≥ 60 %).")
    if b:
        p = b["process"]
        out.append(f"- Batch of {p['cases']}: end to end **{p['ratio_wall_to_network']:.2f}×** the network time per "
                   f"case (target ≤ 1.1×), peak RSS **{p['peak_rss_mb']:.0f} MB** (target ≤ 1.5 GB).")
    if t:
        out.append(f"- `seg-edge tune` on {len(t['cases'])} cases: **{t['wall_s'] / 60:.1f} min** (target ≤ 15 min).")
    return (["### Issue 13's targets on this machine", ""] + out) if out else []


def other_machines() -> list[str]:
    """Issue 13's targets as measured earlier on other machines (docs/machines/<name>/, the same JSON files
    kept from those runs): the same code meets different hardware."""
    lines = []
    for folder in sorted(p for p in (DOCS / "machines").glob("*") if p.is_dir()):
        found = acceptance_lines(folder)
        machine = next((d["machine"] for name in ("tune_example.json", "gemm_peak.json")
                        if (d := _load(name, folder)) and "cores" in d.get("machine", {})), None)
        if found and machine:
            found = [line.replace("table below", f"docs/machines/{folder.name}/profile_accuracy.json")
                     for line in found[2:]]
            lines += [f"### Issue 13's targets on an earlier machine: {machine['cpu']} (docs/machines/{folder.name}/)",
                      "", f"Machine: {_machine(machine)}.", ""] + found + [""]
    return lines


def tuned_sections() -> list[str]:
    """The section's lines, or [] when no tuned measurement is in docs/."""
    parts = [("tune_example.json", tune_part), ("profile_accuracy.json", accuracy_part),
             ("benchmarks_vs_monai_tuned.json", monai_part), ("gemm_peak.json", gemm_part),
             ("conv_layers.json", layers_part),
             ("batch_pipeline.json", batch_part), ("window_effects.json", effects_part),
             ("int8_forms.json", int8_part)]
    found = [(name, fn, data) for name, fn in parts if (data := _load(name))]
    if not found:
        return []
    machine = next((d["machine"] for _, _, d in found if "cores" in d.get("machine", {})), None)
    lines = ["## Tuned on this machine (`seg-edge tune`, issue 13)", ""]
    if machine:
        lines += [f"Machine: {_machine(machine)}. Synthetic cases only.", ""]
    acceptance = acceptance_lines()
    lines += acceptance + ([""] if acceptance else []) + other_machines()
    for _, fn, data in found:
        part = fn(data)
        other = data.get("machine")
        if machine and other and "cores" in other and _hardware(other) != _hardware(machine) and part:
            part = part[:1] + ["", f"*Measured on another machine: {_machine(other)}.*"] + part[1:]
        lines += part + [""]
    return lines
