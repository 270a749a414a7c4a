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
from seg_edge.runtime.io import load_case, read_labels  # noqa: E402
from seg_edge.runtime.regions import REGIONS, case_folders, dice, labels_to_regions  # noqa: E402
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions  # noqa: E402


def _voxels(labels) -> dict:
    return {n: int(m.sum()) for n, m in zip(REGIONS, labels_to_regions(labels, 4))}


def _components(mask) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


def _truth_voxels(folder: Path) -> dict | None:
    """Region voxels of the case's ground truth (``*_seg.nii.gz``), if it has one."""
    seg = next(iter(sorted(folder.glob("*_seg.nii*"))), None)
    if seg is None:
        return None
    labels = read_labels(seg, 4)[0]
    return _voxels(labels)


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
                         "tuned_inference_s": round(b.timings["inference"], 3),
                         "reference_voxels": _voxels(a.labels), "tuned_voxels": _voxels(b.labels),
                         "reference_et_components": _components(a.labels == 4),
                         "truth_voxels": _truth_voxels(folder)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"tuned": str(args.tuned), "profile": tuned.profile_note, "cases": rows,
              "worst": min(r["worst_region_dice"] for r in rows), "load_avg": os.getloadavg()}
    print(f"worst-region Dice over {len(rows)} cases: {result['worst']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
