"""Raw scanner series → labels in the scanner's space, measured against the synthetic studies' truth.

For each raw study (``seg-edge synth --raw``; synthetic, never patient data) this runs the command a user
runs, ``seg-edge predict STUDY --raw --json`` (one process per study: the end-to-end time includes start-up
and model loading), then measures from the files it wrote:

* co-registration error of every series to the reference: the written ``<case>_<series>_from_atlas.tfm``
  transforms give series_from_reference; against the truth's, the mean distance (mm) over the reference
  grid's true brain voxels;
* brain-mask Dice: ``<case>_brain.nii.gz`` against ``truth/native_brain.nii.gz``;
* segmentation Dice per region on the reference grid: ``<case>.nii.gz`` against ``truth/native_seg.nii.gz``,
  and the same model given the same study perfectly preprocessed (``truth/ideal``, segmented with
  ``--probabilities``; the probabilities taken to the reference grid through the TRUE transform, linear,
  labels decided there by the card's rule), so the difference is what the preprocessing costs.

    python benchmarks/raw_studies.py --studies data/raw_eval --json docs/raw_studies.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.runtime.machine import this_machine  # noqa: E402
from seg_edge.runtime.postprocess import to_labels  # noqa: E402
from seg_edge.runtime.regions import dice, labels_to_regions  # noqa: E402

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
REGIONS = ("WT", "TC", "ET")
DEFAULT_MODEL = ROOT / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"


def predict(args: list[str]) -> tuple[dict, float]:
    """``seg-edge predict ARGS --json``: its report and wall time; exits on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "seg_edge", "predict", *args, "--json"], capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return json.loads(done.stdout), wall


def tfm_lps(path: Path) -> np.ndarray:
    """The 4x4 LPS point map of an ITK affine .tfm (fixed point -> moving point)."""
    import SimpleITK as sitk

    t = sitk.AffineTransform(sitk.ReadTransform(str(path)))
    matrix, centre = np.array(t.GetMatrix()).reshape(3, 3), np.array(t.GetCenter())
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = matrix, np.array(t.GetTranslation()) + centre - matrix @ centre
    return out


def brain_points_lps(brain: nib.Nifti1Image) -> np.ndarray:
    """(N, 4) homogeneous LPS world points of the brain voxels of a mask image."""
    ijk = np.argwhere(np.asarray(brain.dataobj) > 0)
    ras = brain.affine @ np.c_[ijk, np.ones(len(ijk))].T
    return (FLIP @ ras).T


def coregistration_errors(study: Path, out: Path, case: str, truth: dict) -> dict[str, float]:
    """Mean error (mm) of each series' series_from_reference over the true brain, from the written .tfm files."""
    ref = truth["reference"]
    points = brain_points_lps(nib.load(study / "truth" / "native_brain.nii.gz"))
    w_ref = np.array(truth["series"][ref]["world_from_atlas_ras"])
    est_ref = tfm_lps(out / f"{case}_{ref}_from_atlas.tfm")
    errors = {}
    for m, info in truth["series"].items():
        if m == ref:
            continue
        true = FLIP @ np.array(info["world_from_atlas_ras"]) @ np.linalg.inv(w_ref) @ FLIP
        est = tfm_lps(out / f"{case}_{m}_from_atlas.tfm") @ np.linalg.inv(est_ref)
        errors[m] = float(np.linalg.norm((points @ (est - true).T)[:, :3], axis=1).mean())
    return errors


def region_dice(pred: np.ndarray, truth: np.ndarray, et: int) -> dict[str, float]:
    p, t = labels_to_regions(pred, et), labels_to_regions(truth, et)
    return {r: dice(p[i], t[i]) for i, r in enumerate(REGIONS)}


def ideal_on_reference(probs: nib.Nifti1Image, reference: nib.Nifti1Image, w_ref: np.ndarray, card, et: int
                       ) -> np.ndarray:
    """Atlas-grid probabilities (X, Y, Z, K) to the reference grid through the true transform (linear), then
    labels by the card's rule."""
    # reference voxel -> reference world (RAS) -> atlas world -> atlas voxel
    matrix = np.linalg.inv(probs.affine) @ np.linalg.inv(w_ref) @ reference.affine
    data = np.asarray(probs.dataobj, dtype=np.float32)
    moved = np.stack([ndimage.affine_transform(data[..., k], matrix[:3, :3], matrix[:3, 3],
                                               output_shape=reference.shape[:3], order=1, cval=0.0)
                      for k in range(data.shape[-1])])
    return to_labels(moved, card.outputs, et)


def one_study(study: Path, model: Path, work: Path, threads: int, card) -> dict:
    truth = json.loads((study / "truth" / "truth.json").read_text())
    case, et = study.name, 4 if truth["label_scheme"] == "brats2021" else 3
    out = work / case
    try:
        report, wall = predict([str(study), "--raw", "--model", str(model), "--out", str(out), "--threads",
                                str(threads)])
    except RuntimeError as exc:  # a good study refused: counted, and the others still run
        return {"case_id": case, "refused": str(exc)}
    native_truth = np.asarray(nib.load(study / "truth" / "native_seg.nii.gz").dataobj)
    pred = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
    brain = np.asarray(nib.load(out / f"{case}_brain.nii.gz").dataobj) > 0
    true_brain = np.asarray(nib.load(study / "truth" / "native_brain.nii.gz").dataobj) > 0
    ideal_out = work / f"{case}_ideal"
    predict([str(study / "truth" / "ideal"), "--model", str(model), "--out", str(ideal_out), "--probabilities",
             "--threads", str(threads)])
    reference = nib.load(study / f"{case}_{truth['reference']}.nii.gz")
    ideal = ideal_on_reference(nib.load(ideal_out / "ideal_probabilities.nii.gz"), reference,
                               np.array(truth["series"][truth["reference"]]["world_from_atlas_ras"]), card, et)
    return {"case_id": case, "wall_s": round(wall, 2), "timings_s": report["timings_s"],
            "coregistration_error_mm": coregistration_errors(study, out, case, truth),
            "brain_dice": dice(brain, true_brain),
            "dice_raw": region_dice(pred, native_truth, et), "dice_ideal": region_dice(ideal, native_truth, et),
            "volumes_ml": report["volumes_ml"]}


def summary(rows: list[dict]) -> dict:
    refused = [r["case_id"] for r in rows if "refused" in r]
    rows = [r for r in rows if "refused" not in r]
    errors = [e for r in rows for e in r["coregistration_error_mm"].values()]
    out = {"studies": len(rows) + len(refused), "refused": refused,
           "coregistration_error_mm": {"mean": float(np.mean(errors)), "max": float(np.max(errors))},
           "brain_dice": {"mean": float(np.mean([r["brain_dice"] for r in rows])),
                          "min": float(np.min([r["brain_dice"] for r in rows]))},
           "wall_s": {"mean": float(np.mean([r["wall_s"] for r in rows])),
                      "max": float(np.max([r["wall_s"] for r in rows]))}}
    for name in ("dice_raw", "dice_ideal"):
        out[name] = {g: float(np.mean([r[name][g] for r in rows])) for g in REGIONS}
    out["dice_ideal_minus_raw"] = {g: out["dice_ideal"][g] - out["dice_raw"][g] for g in REGIONS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=Path, required=True, help="folder of raw studies (seg-edge synth --raw)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    card = load_artifact(args.model).card
    studies = sorted(p for p in args.studies.iterdir() if (p / "truth" / "truth.json").is_file())
    rows = []
    with tempfile.TemporaryDirectory(prefix="seg-edge-raw-") as tmp:
        for study in studies:
            rows.append(one_study(study, args.model, Path(tmp), args.threads, card))
            r = rows[-1]
            if "refused" in r:
                print(f"{r['case_id']}: REFUSED {r['refused']}", flush=True)
                continue
            print(f"{r['case_id']}: {r['wall_s']:.1f} s, co-registration "
                  f"{max(r['coregistration_error_mm'].values()):.2f} mm max, brain Dice {r['brain_dice']:.3f}, "
                  f"raw {r['dice_raw']}, ideal {r['dice_ideal']}", flush=True)
    m = this_machine()
    machine = {"cpu": m.cpu, "flags": list(m.flags), "cores": m.cores, "versions": m.versions}
    result = {"synthetic": True, "machine": machine, "model": str(args.model), "threads": args.threads,
              "summary": summary(rows), "studies": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
