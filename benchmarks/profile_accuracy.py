"""Worst-region Dice of a tuned model's profile against the reference configuration on cases it was not
tuned on (the card's window/overlap/blend, FP32 ONNX Runtime, every window run), with seconds per case.

    python benchmarks/profile_accuracy.py --tuned model.tuned.onnx --model model.onnx --cases data/holdout \\
        --json docs/profile_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.evaluation.tune import worst_region_dice  # noqa: E402
from seg_edge.runtime.io import load_case  # noqa: E402
from seg_edge.runtime.regions import REGIONS, case_folders, dice, labels_to_regions  # noqa: E402
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="the FP32 model the reference runs")
    parser.add_argument("--cases", type=Path, nargs="+", required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with Segmenter.open(args.model, "onnxruntime", options=SegmenterOptions(skip_empty=False)) as ref, \
            Segmenter.open_profiled(args.tuned) as tuned:
        print(tuned.profile_note, file=sys.stderr)
        for folder in [c for root in args.cases for c in case_folders(root)]:
            case = load_case(folder, ref.card.modalities)
            a, b = ref.predict(case), tuned.predict(case)
            regions = {n: round(dice(x, y), 5) for n, x, y in zip(REGIONS, labels_to_regions(b.labels, 4),
                                                                    labels_to_regions(a.labels, 4))}
            rows.append({"case": folder.name, "worst_region_dice": round(worst_region_dice(b.labels, a.labels, 4), 5),
                         "dice": regions, "reference_inference_s": round(a.timings["inference"], 3),
                         "tuned_inference_s": round(b.timings["inference"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"tuned": str(args.tuned), "profile": tuned.profile_note, "cases": rows,
              "worst": min(r["worst_region_dice"] for r in rows), "load_avg": os.getloadavg()}
    print(f"worst-region Dice over {len(rows)} cases: {result['worst']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
