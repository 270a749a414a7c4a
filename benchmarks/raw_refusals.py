"""Deliberately broken raw studies through ``seg-edge predict --raw``: each must be refused in one line, exit 2,
with nothing written. The damage is made by ``tests/preprocess/broken.py`` from two good synthetic studies
(``seg-edge synth --raw``; synthetic, never patient data): another patient's series, a series flipped
left-right or turned 180° with its header unchanged, a bottle phantom for a series, a missing series, one
slice, a localiser, a 4D series, NaNs, a field of view three times too wide.

    python benchmarks/raw_refusals.py --studies data/raw_eval --json docs/raw_refusals.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "preprocess"))

import broken  # noqa: E402

DAMAGES = [
    ("another patient's T1", lambda a, b, out: broken.wrong_patient(a, b, "t1", out)),
    ("another patient's FLAIR", lambda a, b, out: broken.wrong_patient(a, b, "flair", out)),
    ("FLAIR flipped left-right (header unchanged)", lambda a, b, out: broken.flipped_left_right(a, "flair", out)),
    ("T1 flipped left-right (header unchanged)", lambda a, b, out: broken.flipped_left_right(a, "t1", out)),
    ("T2 turned 180° (header unchanged)", lambda a, b, out: broken.rotated_180(a, "t2", out)),
    ("a bottle phantom as the FLAIR", lambda a, b, out: broken.non_brain(a, "flair", out)),
    ("T2 missing", lambda a, b, out: broken.missing(a, "t2", out)),
    ("T2 of one slice", lambda a, b, out: broken.slices(a, "t2", out, 1)),
    ("FLAIR localiser (3 slices)", lambda a, b, out: broken.slices(a, "flair", out, 3)),
    ("FLAIR as a 4D series", lambda a, b, out: broken.four_d(a, "flair", out)),
    ("T1 with NaNs", lambda a, b, out: broken.with_nans(a, "t1", out)),
    ("FLAIR field of view 3x too wide", lambda a, b, out: broken.wide_fov(a, "flair", out)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=Path, required=True, help="a folder with at least two raw studies")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    first, second = sorted(p for p in args.studies.iterdir() if (p / "truth").is_dir())[:2]
    rows = []
    with tempfile.TemporaryDirectory(prefix="seg-edge-broken-") as tmp:
        for i, (what, damage) in enumerate(DAMAGES):
            folder = Path(tmp) / f"broken{i:02d}" / first.name
            damage(first, second, folder)
            out = Path(tmp) / f"out{i:02d}"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "seg_edge", "predict", str(folder), "--raw", "--out",
                                   str(out), "--threads", "2"], capture_output=True, text=True)
            lines = done.stderr.strip().splitlines()
            rows.append({"damage": what, "exit_code": done.returncode, "stderr_lines": len(lines),
                         "message": lines[-1].replace(tmp, "<tmp>") if lines else "",
                         "anything_written": out.exists(), "seconds": round(time.perf_counter() - start, 1)})
            ok = done.returncode == 2 and len(lines) == 1 and not out.exists()
            print(f"{'refused' if ok else 'NOT REFUSED'}  {what}: {rows[-1]['message']}", flush=True)
    result = {"synthetic": True, "studies": [first.name, second.name], "cases": rows,
              "refused": sum(r["exit_code"] == 2 and r["stderr_lines"] == 1 and not r["anything_written"]
                             for r in rows)}
    print(f"{result['refused']} of {len(rows)} refused in one line, exit 2, nothing written")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
