"""The effect of each window-planning lever alone, on one loaded model: network seconds and worst-region
Dice against the reference labels (the card's configuration on ONNX Runtime FP32, every window run).

Levers: skipping all-zero windows (on/off), windows per call (1/2), window positions (MONAI's rule,
last window flush, vs nnU-Net's, spread evenly), overlap; each on every case given, medians of
``--repeats`` alternating runs.

    python benchmarks/window_effects.py --cases examples --backend openvino --threads 2 \\
        --json docs/window_effects.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.evaluation.tune import worst_region_dice  # noqa: E402
from seg_edge.runtime.io import load_case  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.regions import case_folders  # noqa: E402
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions  # noqa: E402
from seg_edge.runtime.window import window_slices  # noqa: E402

DEFAULT_MODEL = ROOT / "src/seg_edge/assets/seg-edge-edge.onnx"
VARIANTS = {
    "card (overlap 0.5, batch 1, skip on)": {},
    "skip off": {"skip_empty": False},
    "batch 2": {"batch_size": 2},
    "nnunet steps": {"steps": "nnunet"},
    "overlap 0.375": {"overlap": 0.375},
    "overlap 0.375, nnunet steps": {"overlap": 0.375, "steps": "nnunet"},
    "overlap 0.25": {"overlap": 0.25},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = {}
    with Segmenter.open(args.model, "onnxruntime", args.threads, SegmenterOptions(skip_empty=False)) as ref:
        cases = [load_case(p, ref.card.modalities) for p in case_folders(args.cases)]
        references = [ref.predict(c).labels for c in cases]
    segs = {name: Segmenter.open(args.model, args.backend, args.threads, SegmenterOptions(**opts))
            for name, opts in VARIANTS.items()}
    try:
        for case, reference in zip(cases, references):
            times = {name: [] for name in VARIANTS}
            dice, windows = {}, {}
            for _ in range(args.repeats):
                for name, seg in segs.items():
                    result = seg.predict(case)
                    times[name].append(result.timings["inference"])
                    dice[name] = worst_region_dice(result.labels, reference, seg.et)
            for name, seg in segs.items():
                tensor = seg.preprocess(case.images).tensor
                plan = seg.plan
                slices = window_slices(tensor.shape[1:], seg.card.patch_size, plan.overlap, plan.steps)
                windows[name] = {"windows": len(slices), "empty": sum(not tensor[(slice(None),) + s].any()
                                                                       for s in slices)}
            rows[case.case_id] = {name: {"network_s": round(statistics.median(times[name]), 3),
                                         "worst_region_dice": round(dice[name], 5), **windows[name]}
                                  for name in VARIANTS}
            print(json.dumps({case.case_id: rows[case.case_id]}), flush=True)
    finally:
        for seg in segs.values():
            seg.close()
    m = this_machine((args.backend,))
    result = {"machine": {"cpu": m.cpu, "flags": list(m.flags), "cores": m.cores, "versions": m.versions},
              "backend": args.backend, "threads": args.threads, "repeats": args.repeats, "cases": rows,
              "load_avg": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
