"""seg-edge predict on an imported model against the framework's own predictor, process to process.

nnU-Net: ``nnUNetv2_predict_from_modelfolder`` on the same cases (given to it in nnU-Net's raw
layout, CASE_0000.nii.gz …, links to the same files), the same folds, step size and mirroring,
CPU. MONAI bundle: the bundle's own instantiated inference objects in a fresh process
(benchmarks/bundle_run.py; ``python -m monai.bundle run`` needs pytorch-ignite).
Every command runs as a fresh process, the tools alternating, ``--repeats`` times; the median
wall time (start → every label map written) is reported with the CPU it ran on.

    python benchmarks/vs_sources.py nnunet MODEL.onnx MODEL_FOLDER CASE... --threads 2 --repeats 3
    python benchmarks/vs_sources.py monai-bundle MODEL.onnx BUNDLE_DIR CASE... --threads 2 --repeats 3
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

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.runtime.io import find_modalities  # noqa: E402


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(wanted)})"


def seg_edge_cmd(args, cases: list[Path], out: Path, backend: str) -> list[str]:
    tta = ["--tta"] if args.tta else ["--no-tta"]
    batch = cases[0] if len(cases) == 1 else cases[0].parent
    return [sys.executable, "-m", "seg_edge", "predict", str(batch), "--model", str(args.model), "--out",
            str(out) + "/", "--threads", str(args.threads), "--backend", backend, "--overwrite", *tta]


def nnunet_inputs(cases: list[Path], modalities: tuple[str, ...], folder: Path) -> Path:
    """The cases in nnU-Net's raw layout (links to the same files), channels in the model's order."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        files = find_modalities(case, modalities)
        for i, name in enumerate(modalities):
            link = folder / f"{case.name}_{i:04d}.nii.gz"
            if not link.exists():
                link.symlink_to(files[name].resolve())
    return folder


def nnunet_cmd(args, prov: dict, inputs: Path, out: Path) -> list[str]:
    exe = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    cmd = [str(exe), "-i", str(inputs), "-o", str(out), "-m", str(args.source), "-f",
           *[str(f) for f in prov["folds"]], "-chk", prov.get("checkpoint", "checkpoint_final.pth"),
           "-step_size", "0.5", "-device", "cpu", "-npp", "1", "-nps", "1"]
    return cmd + ([] if args.tta else ["--disable_tta"])


def bundle_cmd(args, cases: list[Path], out: Path) -> list[str]:
    """The bundle's own objects in a fresh process (benchmarks/bundle_run.py says why not monai.bundle run)."""
    return [sys.executable, str(ROOT / "benchmarks/bundle_run.py"), str(args.model), str(args.source), str(out),
            *map(str, cases), "--threads", str(args.threads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("nnunet", "monai-bundle"))
    parser.add_argument("model", type=Path, help="the imported .onnx")
    parser.add_argument("source", type=Path, help="nnU-Net model folder or bundle folder it was imported from")
    parser.add_argument("cases", type=Path, nargs="+", help="case folders (one parent folder holds them all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    card = load_artifact(args.model).card
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "nnUNet_raw": "/nonexistent", "nnUNet_preprocessed": "/nonexistent", "nnUNet_results": "/nonexistent"}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = nnunet_inputs(args.cases, card.modalities, tmp / "in") if args.kind == "nnunet" else None
        for repeat in range(args.repeats):
            for backend in args.backends.split(","):
                times.setdefault(f"seg-edge {backend}", []).append(
                    _run(seg_edge_cmd(args, args.cases, tmp / f"se-{backend}-{repeat}", backend), env))
            label = "nnUNetv2_predict_from_modelfolder" if args.kind == "nnunet" else "bundle's objects"
            cmd = nnunet_cmd(args, card.provenance, inputs, tmp / f"src-{repeat}") if args.kind == "nnunet" \
                else bundle_cmd(args, args.cases, tmp / f"src-{repeat}")
            times.setdefault(label, []).append(_run(cmd, env))
            print(f"round {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    report = {"cpu": cpu_flags(), "threads": args.threads, "cases": [c.name for c in args.cases],
              "tta": args.tta, "repeats": args.repeats, "median_wall_s": {k: statistics.median(v) for k, v in
                                                                           times.items()}, "runs_s": times}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
