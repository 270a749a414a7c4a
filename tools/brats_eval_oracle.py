"""The official BraTS evaluation on a folder of predictions, as a test oracle for ``seg-edge evaluate --challenge``.

Run with the python of ``.venv-brats-eval`` (``make install-brats-eval``: ``brats-evaluation`` from PyPI, built on
panoptica; AGPL, pins numpy<2.3 and rich<14 — which is why it has a venv of its own and seg-edge never imports it):

    .venv-brats-eval/bin/python tools/brats_eval_oracle.py --challenge gli PRED_DIR TRUTH_DIR --json s.json --csv s.csv

It runs the package's own two steps exactly as its console scripts do (``brats-evaluate --config C`` then
``brats-parse-metrics seg`` or, for metastases, ``brats-parse-metrics mets`` with the package's default volume and
overlap thresholds) and prints the package's CSV to stdout; the package's progress lines go to stderr. Files follow
the challenge's naming: truths ``TRUTH_DIR/BraTS-GLI-00000-000-seg.nii.gz``, predictions
``PRED_DIR/BraTS-GLI-00000-000.nii.gz`` (the package pairs them by the 5+3-digit subject id). A subject the package
could not evaluate (its ``evaluate_single_exam`` catches the exception and the parser skips the subject) makes the
run exit 1 naming it, so that a comparison never runs on fewer cases than it was given.

``--physical-spacing``: the package hands panoptica file paths, which panoptica 2.1.7 reads with SimpleITK as
(z, y, x) arrays yet pairs with SimpleITK's (x, y, z) spacing, so on anisotropic voxels its per-lesion HD95 and
NSD use the wrong axes' spacing. With this flag each pair is read with nibabel as (x, y, z) and evaluated with
its header's spacing on those axes (``Panoptica_Evaluator.evaluate(pred, ref, voxelspacing=...)``, the package's
evaluator and config otherwise unchanged): the figures the package's definitions give with the spacing right.
On 1 mm isotropic grids (BraTS's own) both modes give the same figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

# seg-edge's challenge names → the package's bundled config and the parser it documents for that config
CHALLENGES = {
    "gli": ("gli", "seg"),
    "mets": ("mets", "mets"),
    "ped": ("ped", "seg"),
    "men": ("MenPre", "seg"),
    "men-rt": ("MenRT", "seg"),
    "goat": ("GoAT", "seg"),
}


def _run_main(main, argv: list[str]) -> None:
    """Call a package console-script ``main`` with ``argv``, its prints sent to stderr (stdout is the CSV)."""
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(sys.stderr):
            main()
    finally:
        sys.argv = saved


def _evaluate_with_nibabel_spacing(prediction_filepath: str, reference_filepath: str, subject_identifier: str,
                                   evaluator) -> dict:
    """``evaluation.evaluate_single_exam`` with (x, y, z) arrays and their spacing (see ``--physical-spacing``);
    exceptions propagate (the package's version turns them into an ``error`` entry)."""
    import nibabel as nib
    import numpy as np

    pred, ref = nib.load(prediction_filepath), nib.load(reference_filepath)
    spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    results = evaluator.evaluate(np.asarray(pred.dataobj), np.asarray(ref.dataobj), voxelspacing=spacing)
    out = {k: r.to_dict(True) for k, r in results.items()}
    out["subject_name"] = subject_identifier
    return out


def run(challenge: str, pred: Path, truth: Path, summary_json: Path, csv_path: Path, *,
        physical_spacing: bool = False) -> None:
    """The package's evaluation then its parser; raises SystemExit naming any subject it failed on."""
    from brats_evaluation import evaluation, metrics_parser

    if physical_spacing:
        evaluation.evaluate_single_exam = _evaluate_with_nibabel_spacing  # main() looks it up at call time
    config, parser = CHALLENGES[challenge]
    _run_main(evaluation.main, ["brats-evaluate", "--config", config, "--ref_path", str(truth),
                                "--pred_path", str(pred), "--summary_json", str(summary_json)])
    if not summary_json.is_file():
        raise SystemExit(f"brats-evaluate wrote no {summary_json} (see its messages above)")
    summary = json.loads(summary_json.read_text())
    failed = [f"{m.get('subject_name')}: {m['error']}" for m in summary["metrics"] if "error" in m]
    if failed:
        raise SystemExit(f"brats-evaluate failed on {len(failed)} subject(s): {'; '.join(failed[:3])}")
    if not summary["metrics"] and not summary["missings"]:
        raise SystemExit(f"{truth}: no reference files *.nii.gz (expected BraTS-XXX-00000-000-seg.nii.gz)")
    _run_main(metrics_parser.main, ["brats-parse-metrics", parser, "--json_path", str(summary_json),
                                    "--output_csv_path", str(csv_path)])
    if not csv_path.is_file():
        raise SystemExit(f"brats-parse-metrics wrote no {csv_path} (see its messages above)")


def main() -> None:
    """Parse arguments, run the package, print its CSV."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--challenge", required=True, choices=sorted(CHALLENGES))
    ap.add_argument("pred", type=Path, help="folder of predictions BraTS-XXX-00000-000.nii.gz")
    ap.add_argument("truth", type=Path, help="folder of truths BraTS-XXX-00000-000-seg.nii.gz")
    ap.add_argument("--json", type=Path, help="also keep the package's summary JSON here")
    ap.add_argument("--csv", type=Path, help="also keep the package's CSV here")
    ap.add_argument("--physical-spacing", action="store_true",
                    help="read with nibabel and pass the header's spacing on the array's own axes (see above)")
    args = ap.parse_args()
    for folder in (args.pred, args.truth):
        if not folder.is_dir():
            raise SystemExit(f"{folder}: not a folder (expected a folder of NIfTI files)")
    with tempfile.TemporaryDirectory() as tmp:
        summary_json = args.json or Path(tmp) / "summary.json"
        csv_path = args.csv or Path(tmp) / "metrics.csv"
        run(args.challenge, args.pred, args.truth, summary_json, csv_path, physical_spacing=args.physical_spacing)
        sys.stdout.write(csv_path.read_text())


if __name__ == "__main__":
    main()
