"""Rigid co-registration libraries compared on synthetic raw studies (issue 22): accuracy, time, install size.

    .venv/bin/python benchmarks/registration_libraries.py --studies DIR [--out docs/registration_libraries.json]

DIR holds raw studies written by ``seg-edge synth --raw`` (``seg_edge.synth.raw.write_raw_study``); the
script writes them there first if the folder is empty (``--seed``, ``--n``). Each pair is the study's T1ce
(fixed: axial 3D, 0.94×0.94×1 mm, head with skull) and its FLAIR (moving: tilted axial 2D, 0.9×0.9×5 mm), the
two moved independently (up to 6° and 8 mm each). The truth is the study's own:
``flair_from_t1ce = W_flair @ inv(W_t1ce)`` (RAS; ``truth/truth.json``). The error of a registration is the
distance between where it and the truth send each brain voxel of the T1ce (``truth/native_brain.nii.gz``),
mean and max over those voxels, in mm.

Runs: SimpleITK (``seg_edge.preprocess.registration.register_rigid``) with the given RigidOptions settings,
and picsl-greedy (``greedy -a -dof 6 -m NMI``, image-centre start), each at 1 and 2 threads. Wall time is
measured around the call, with the images already in memory. Install size is ``du`` of each library's files
in this environment (its own, not its dependencies': greedy needs SimpleITK as well).

picsl-greedy is NOT a seg-edge dependency: install it by hand to run its part
(``.venv/bin/pip install -c constraints.txt picsl-greedy``); without it that part is skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from seg_edge.preprocess.registration import LPS_TO_RAS, RigidOptions, Volume, box_averaged, register_rigid

SETTINGS = {
    # the RigidOptions defaults as committed before this benchmark
    "sitk-default": dict(shrink_factors=(4, 2, 1), smoothing_sigmas=(2.0, 1.0, 0.0), iterations=200,
                         sampling_percentage=0.25, histogram_bins=50, learning_rate=1.0, min_step=1e-4),
    # both volumes box-averaged to ~2 mm first (RigidOptions.working_mm), levels at 8, 4 and 2 mm, fewer samples
    "sitk-2mm": dict(working_mm=2.0, shrink_factors=(4, 2, 1), smoothing_sigmas=(1.0, 0.5, 0.0), iterations=100,
                     sampling_percentage=0.2, histogram_bins=32, learning_rate=2.0, min_step=1e-3),
}
# the same, with the roles swapped: the FLAIR fixed (its thick slices are sampled where they were acquired, not
# interpolated across 5 mm) and the T1ce moving; the transform found is inverted to give flair_from_t1ce
SETTINGS["sitk-2mm-swapped"] = SETTINGS["sitk-2mm"]
SWAPPED = {"sitk-2mm-swapped"}
GREEDY_ITERATIONS = "100x50x10"  # greedy's own default is 100x100 at 4x and 2x; three levels as SimpleITK's


def _write_studies(folder: Path, seed: int, count: int) -> None:
    from seg_edge.synth.raw import write_raw_study

    for index in range(count):
        write_raw_study(folder, seed, index)


def _pairs(folder: Path, series: str = "flair") -> list[dict]:
    pairs = []
    for study in sorted(p for p in folder.iterdir() if (p / "truth" / "truth.json").is_file()):
        truth = json.loads((study / "truth" / "truth.json").read_text())
        w = {m: np.asarray(truth["series"][m]["world_from_atlas_ras"], dtype=np.float64) for m in ("t1ce", series)}
        brain = sitk.ReadImage(str(study / "truth" / "native_brain.nii.gz"))
        index = np.argwhere(sitk.GetArrayFromImage(brain) > 0)[:, ::-1].astype(np.float64)
        direction = np.asarray(brain.GetDirection()).reshape(3, 3) * np.asarray(brain.GetSpacing())
        points_lps = index @ direction.T + np.asarray(brain.GetOrigin())  # voxel index → LPS mm
        pairs.append({
            "study": study.name,
            "fixed": Volume.read(study / f"{study.name}_t1ce.nii.gz"),
            "series": series,
            "moving": Volume.read(study / f"{study.name}_{series}.nii.gz"),
            "truth_lps": LPS_TO_RAS @ w[series] @ np.linalg.inv(w["t1ce"]) @ LPS_TO_RAS,  # t1ce point → series
            "points_lps": np.c_[points_lps, np.ones(len(points_lps))],
            "motion_deg": _angle(w[series] @ np.linalg.inv(w["t1ce"])),
        })
    return pairs


def _angle(matrix: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1))))


def _errors(found_lps: np.ndarray, pair: dict) -> tuple[float, float]:
    distance = np.linalg.norm((pair["points_lps"] @ (found_lps - pair["truth_lps"]).T)[:, :3], axis=1)
    return float(distance.mean()), float(distance.max())


def _sitk_run(pair: dict, name: str, threads: int) -> tuple[np.ndarray, float]:
    options = RigidOptions(threads=threads, **SETTINGS[name])
    start = time.perf_counter()
    if name in SWAPPED:
        found = np.linalg.inv(register_rigid(pair["moving"], pair["fixed"], options=options).matrix_lps)
    else:
        found = register_rigid(pair["fixed"], pair["moving"], options=options).matrix_lps
    return found, time.perf_counter() - start


def _greedy_run(pair: dict, threads: int, working_mm: float | None = None) -> tuple[np.ndarray, float]:
    from picsl_greedy import Greedy3D

    greedy = Greedy3D()
    quiet = open(os.devnull, "w")  # noqa: SIM115  (greedy prints every iteration)
    fixed = sitk.Cast(pair["fixed"].image, sitk.sitkFloat32)
    moving = sitk.Cast(pair["moving"].image, sitk.sitkFloat32)
    start = time.perf_counter()
    if working_mm is not None:  # the same ~2 mm box averaging as SimpleITK's working_mm, inside the timing
        fixed, moving = box_averaged(fixed, working_mm), box_averaged(moving, working_mm)
    greedy.execute(f"-d 3 -threads {threads} -a -dof 6 -m NMI -ia-image-centers -n {GREEDY_ITERATIONS} "
                   f"-i fixed moving -o rigid", fixed=fixed, moving=moving, rigid=None, out=quiet, err=quiet)
    seconds = time.perf_counter() - start
    # greedy's matrix is RAS, fixed point → moving point (ITK-SNAP's convention)
    return LPS_TO_RAS @ np.asarray(greedy["rigid"], dtype=np.float64) @ LPS_TO_RAS, seconds


def _installed_mb(distribution: str) -> float | None:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    total = 0
    for file in files:
        path = Path(file.locate())
        if path.is_file():
            total += path.stat().st_size
    return round(total / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=901)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--series", nargs="+", default=["flair"], choices=["flair", "t2", "t1"],
                        help="the moving series (the T1ce is the reference): flair (0.9x0.9x5 mm, tilted), t2 "
                             "(0.9x0.9x4 mm), t1 (sagittal 1 mm)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tools", nargs="+", default=[*SETTINGS, "greedy", "greedy-2mm"],
                        help="which runs (sitk-default takes minutes per pair at 1 thread on a 2-core machine)")
    parser.add_argument("--out", type=Path, default=Path("docs/registration_libraries.json"))
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --out (other tools) and add these")
    args = parser.parse_args()
    args.studies.mkdir(parents=True, exist_ok=True)
    if not any(args.studies.iterdir()):
        _write_studies(args.studies, args.seed, args.n)
    pairs = [pair for series in args.series for pair in _pairs(args.studies, series)[:args.n]]
    try:
        import picsl_greedy  # noqa: F401
        runners = {name: (lambda p, t, n=name: _sitk_run(p, n, t)) for name in SETTINGS}
        runners["greedy"] = _greedy_run
        runners["greedy-2mm"] = lambda p, t: _greedy_run(p, t, working_mm=2.0)
        skipped = None
    except ImportError:
        runners = {name: (lambda p, t, n=name: _sitk_run(p, n, t)) for name in SETTINGS}
        skipped = "picsl-greedy is not installed: its rows are missing"
    runners = {name: run for name, run in runners.items() if name in args.tools}
    rows = []
    for pair in pairs:
        for name, run in runners.items():
            for threads in args.threads:
                matrix, seconds = run(pair, threads)
                mean, worst = _errors(matrix, pair)
                rows.append({"study": pair["study"], "series": pair["series"], "tool": name, "threads": threads,
                             "seconds": round(seconds, 2),
                             "error_mean_mm": round(mean, 3), "error_max_mm": round(worst, 3),
                             "true_motion_deg": round(pair["motion_deg"], 2)})
                print(json.dumps(rows[-1]), flush=True)
    if args.append and args.out.is_file():
        done = {(r["tool"], r["series"]) for r in rows}
        kept = [dict(r, series=r.get("series", "flair")) for r in json.loads(args.out.read_text())["runs"]]
        rows = [r for r in kept if (r["tool"], r["series"]) not in done] + rows
    summary = {}
    for name, series in dict.fromkeys((r["tool"], r["series"]) for r in rows):
        for threads in sorted({r["threads"] for r in rows if r["tool"] == name and r["series"] == series}):
            mine = [r for r in rows if r["tool"] == name and r["threads"] == threads and r["series"] == series]
            label = f"{name}@{threads}" if series == "flair" else f"{name}/{series}@{threads}"
            summary[label] = {
                "error_mean_mm": round(float(np.mean([r["error_mean_mm"] for r in mine])), 3),
                "error_max_mm": round(float(np.max([r["error_max_mm"] for r in mine])), 3),
                "seconds_mean": round(float(np.mean([r["seconds"] for r in mine])), 2),
                "seconds_max": round(float(np.max([r["seconds"] for r in mine])), 2)}
    report = {
        "what": "rigid co-registration, fixed t1ce (0.94x0.94x1 mm, head with skull) <- moving flair "
                "(0.9x0.9x5 mm, tilted; or the run's 'series'), synthetic raw studies, error over the t1ce's "
                "true brain voxels",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                    "note": "a shared 2-core machine: other work ran beside this, so times vary by about 2x"},
        "versions": {d: _version(d) for d in ("SimpleITK", "picsl-greedy", "numpy")},
        "installed_mb": {"SimpleITK": _installed_mb("SimpleITK"), "picsl-greedy": _installed_mb("picsl-greedy")},
        "settings": {k: {f: list(v) if isinstance(v, tuple) else v for f, v in s.items()}
                     for k, s in SETTINGS.items()} | {
            "greedy": f"-a -dof 6 -m NMI -ia-image-centers -n {GREEDY_ITERATIONS}",
            "greedy-2mm": "the same on both volumes box-averaged to ~2 mm (as sitk's working_mm)"},
        "skipped": skipped,
        "summary": summary,
        "runs": rows,
    }
    if args.append and args.out.is_file():  # notes added to the file by hand (aborted runs, determinism) stay
        report = json.loads(args.out.read_text()) | report
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
