"""`seg-edge evaluate` on many full-size cases: seconds for the whole folder, per challenge, lesion-wise included.

    python benchmarks/evaluate_speed.py --work /tmp/evaluate_speed --n 100 --json docs/evaluate_speed.json

Makes ``n`` synthetic 240×240×155 cases once (kept in ``--work``, outside git; remade only when missing), in the
challenges' naming: ground truths ``truth/BraTS-GLI-NNNNN-000-seg.nii.gz`` with 1–4 lesions (each an oedema shell
around a necrotic core with enhancing rim, some with a satellite within 3 voxels), and predictions
``pred/BraTS-GLI-NNNNN-000.nii.gz`` perturbed from them (moved a voxel, rim eroded, sometimes a lesion dropped,
0–3 false-positive specks of 1–60 voxels). Then times ``evaluate_challenge`` (the library call behind the CLI,
files read included) for each challenge asked for, and prints the figures with the CPU, its flags that matter for
numpy (SSE4.2, AVX2, AVX-512) and the load average at the start (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.evaluation.challenge_eval import evaluate_challenge  # noqa: E402
from seg_edge.evaluation.challenges import get_challenge  # noqa: E402
from seg_edge.evaluation.evaluate import evaluate as legacy_evaluate  # noqa: E402

SHAPE = (240, 240, 155)


def _ball(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    lo = np.maximum(np.floor(centre - radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
    grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    return tuple(slice(a, b) for a, b in zip(lo, hi)), inside


def _lesion(labels: np.ndarray, rng: np.random.Generator, centre: np.ndarray, size: float) -> None:
    for value, scale in ((2, 1.0), (3, 0.6), (1, 0.4)):  # SNFH shell, ET rim, NETC core
        radii = size * scale * rng.uniform(0.8, 1.2, 3)
        box, inside = _ball(labels.shape, centre, radii)
        labels[box][inside] = value


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction) label maps of one synthetic multifocal case (labels 1 NETC, 2 SNFH, 3 ET)."""
    truth = np.zeros(SHAPE, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform((60, 60, 40), (180, 180, 115))
        _lesion(truth, rng, centre, float(rng.uniform(4, 18)))
        if rng.random() < 0.4:  # a satellite 2–3 voxels beyond the lesion's edge
            _lesion(truth, rng, centre + rng.choice([-1, 1], 3) * rng.uniform(8, 22, 3), float(rng.uniform(2, 4)))
    pred = np.roll(truth, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
    pred[(pred == 3) & (rng.random(SHAPE) < 0.1)] = 1  # rim eroded here and there
    if rng.random() < 0.3:  # a lesion dropped
        c = rng.uniform((60, 60, 40), (180, 180, 115))
        box, inside = _ball(SHAPE, c, np.full(3, 25.0))
        pred[box][inside] = 0
    for _ in range(int(rng.integers(0, 4))):  # false-positive specks
        c = rng.uniform((30, 30, 20), (210, 210, 135))
        box, inside = _ball(SHAPE, c, np.full(3, float(rng.uniform(0.5, 2.5))))
        pred[box][inside] = rng.choice([2, 3])
    return truth, pred


def make_cases(work: Path, n: int, seed: int) -> None:
    """Write the ``n`` cases into ``work``/truth and ``work``/pred unless they are there already."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    rng = np.random.default_rng(seed)
    for i in range(n):
        truth_file = work / "truth" / f"BraTS-GLI-{i:05d}-000-seg.nii.gz"
        pred_file = work / "pred" / f"BraTS-GLI-{i:05d}-000.nii.gz"
        truth, pred = make_case(rng)  # drawn even when cached, so case i is the same whatever n is
        if truth_file.exists() and pred_file.exists():
            continue
        truth_file.parent.mkdir(parents=True, exist_ok=True)
        pred_file.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(truth, affine), str(truth_file))
        nib.save(nib.Nifti1Image(pred, affine), str(pred_file))


def cpu() -> dict:
    """The CPU's model name, core count, the SIMD flags numpy and scipy use, and the load average."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni") if f in flags]
    return {"model": model, "cores": os.cpu_count(), "simd_flags": simd, "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/seg_edge_evaluate_speed"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--challenges", default="gli,mets,brats2023",
                        help="comma-separated; 'legacy' also times seg-edge's whole-volume table")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    make_cases(args.work, args.n, args.seed)
    made = time.perf_counter() - start
    report: dict = {"cases": args.n, "shape": list(SHAPE), "machine": cpu(), "generate_s": round(made, 1),
                    "seconds": {}, "cpu_seconds": {}, "load_average_after": {}}
    for name in args.challenges.split(","):
        t0, c0 = time.perf_counter(), time.process_time()
        if name == "legacy":
            result = legacy_evaluate(args.work / "pred", args.work / "truth", 3)
        else:
            result = evaluate_challenge(args.work / "pred", args.work / "truth", get_challenge(name))
        # wall time, and the CPU time of all this process's threads: on a shared machine the wall time grows
        # with the other processes' load, the CPU time much less
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        report["seconds"][name], report["cpu_seconds"][name] = round(seconds, 1), round(cpu_s, 1)
        report["load_average_after"][name] = round(os.getloadavg()[0], 2)
        print(f"{name}: {len(result['cases'])} cases in {seconds:.1f} s wall, {cpu_s:.1f} CPU-s "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
