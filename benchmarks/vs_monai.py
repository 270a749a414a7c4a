"""seg-edge predict against the PyTorch + MONAI recipe, same case, model and threads.

Both run as fresh processes, alternately, `--repeats` times; medians are reported for the
process wall time (start → label map written) and for the pipeline inside the process
(load → write, without interpreter start and imports). Writes a section of docs/BENCHMARKS.md.
``--seg-edge-model`` runs seg-edge on another file of the same network (a tuned copy: predict uses
its profile); the MONAI recipe always runs the FP32 checkpoint. The load average before each run
and the Dice of seg-edge's labels against the MONAI recipe's and against seg-edge --reference's
(the card's configuration, FP32 ONNX Runtime) are recorded. Where the CPU has BF16 instructions
(avx512_bf16 or amx_bf16), the recipe also runs under bf16 autocast ("monai-bf16"), alternating with
the other two.

    python benchmarks/vs_monai.py --case examples/SynBraTS_3007_000 --threads 2 --repeats 5 \
        --seg-edge-model model.tuned.onnx --json docs/benchmarks_vs_monai_tuned.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.runtime.io import read_labels  # noqa: E402
from seg_edge.runtime.machine import backend_version, this_machine  # noqa: E402
from seg_edge.runtime.regions import REGIONS, dice, labels_to_regions  # noqa: E402

DEFAULT_MODEL = ROOT / "src/seg_edge/assets/seg-edge-edge.onnx"


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return wall, proc.stdout


def seg_edge_once(args, out: Path, extra=()) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "seg_edge", "predict", str(args.case), "--model", str(args.seg_edge_model),
           "--out", str(out), "--threads", str(args.threads), "--overwrite", "--json", *extra]
    load = os.getloadavg()[0]
    wall, stdout = _run(cmd)
    return wall, {**json.loads(stdout)["timings_s"], "load_avg_1min": load}


def monai_once(args, out: Path, bf16: bool = False) -> tuple[float, dict]:
    cmd = [sys.executable, str(ROOT / "benchmarks/monai_recipe.py"), "--case", str(args.case), "--model",
           str(args.model), "--checkpoint", str(args.checkpoint), "--out", str(out), "--threads", str(args.threads)]
    cmd += ["--bf16"] if bf16 else []
    load = os.getloadavg()[0]
    wall, stdout = _run(cmd)
    return wall, {**json.loads(stdout.strip().splitlines()[-1]), "load_avg_1min": load}


def cpu_flags() -> set[str]:
    try:
        return set(next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def machine() -> dict:
    import monai
    import numpy
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(),
            "flags": list(this_machine().flags), "openvino": backend_version("openvino")}


def agreement(a: Path, b: Path) -> dict:
    ra, rb = (labels_to_regions(read_labels(path, 4)[0], 4) for path in (a, b))
    return {name: round(dice(x, y), 6) for name, x, y in zip(REGIONS, ra, rb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seg-edge-model", type=Path, default=None, help="default: --model")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/benchmarks_vs_monai.json")
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or args.model.with_suffix(".pt")
    args.seg_edge_model = args.seg_edge_model or args.model
    bf16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    runs = {"seg-edge": [], "monai": []} | ({"monai-bf16": []} if bf16 else {})
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs, theirs16 = (Path(tmp) / n for n in ("seg_edge.nii.gz", "monai.nii.gz", "monai16.nii.gz"))
        for i in range(args.repeats):
            runs["seg-edge"].append(seg_edge_once(args, ours))
            runs["monai"].append(monai_once(args, theirs))
            if bf16:
                runs["monai-bf16"].append(monai_once(args, theirs16, bf16=True))
            print(f"repeat {i}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in runs.items()), file=sys.stderr)
        seg_edge_once(args, ours, ["--no-et-rule"])  # the MONAI recipe has no ET clean-up
        dice = agreement(ours, theirs)
        dice_bf16 = agreement(theirs16, theirs) if bf16 else None
        reference = Path(tmp) / "reference.nii.gz"
        seg_edge_once(args, ours)
        _run([sys.executable, "-m", "seg_edge", "predict", str(args.case), "--model", str(args.model), "--out",
              str(reference), "--threads", str(args.threads), "--overwrite", "--reference", "--backend",
              "onnxruntime"])
        dice_reference = agreement(ours, reference)
    summary = {}
    for name, rs in runs.items():
        stages = {k: statistics.median(r[1][k] for r in rs) for k in rs[0][1]}
        summary[name] = {"process_wall_s": statistics.median(r[0] for r in rs), "stages_s": stages}
    ours_stages = summary["seg-edge"]["stages_s"]
    pipe_ours = sum(ours_stages[k] for k in ("load", "preprocess", "inference", "postprocess", "write"))
    pipe_theirs = summary["monai"]["stages_s"]["pipeline"]
    result = {"case": str(args.case), "model": str(args.model), "seg_edge_model": str(args.seg_edge_model),
              "threads": args.threads, "repeats": args.repeats, "machine": machine(), "summary": summary,
              "dice_agreement": dice, "dice_vs_reference": dice_reference, "dice_monai_bf16_vs_fp32": dice_bf16,
              "load_avg_1min": {name: [round(r[1]["load_avg_1min"], 2) for r in rs] for name, rs in runs.items()},
              "ratio_process_wall": summary["monai"]["process_wall_s"] / summary["seg-edge"]["process_wall_s"],
              "ratio_pipeline": pipe_theirs / pipe_ours,
              "ratio_process_wall_bf16": (summary["monai-bf16"]["process_wall_s"]
                                          / summary["seg-edge"]["process_wall_s"] if bf16 else None),
              "seg_edge_non_network_share": 1 - ours_stages["inference"] / pipe_ours}
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
