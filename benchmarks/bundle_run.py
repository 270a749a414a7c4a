"""The MONAI bundle's own inference on cases, in a fresh process, for benchmarks/vs_sources.py.

``python -m monai.bundle run`` needs pytorch-ignite for the bundle's evaluator; this runs the same
instantiated objects (the bundle's preprocessing, network, inferer and postprocessing, through
seg-edge's BundleSource, as `seg-edge parity --reference monai-bundle:` does) and writes each label
map with nibabel, so the process does what the bundle's evaluator would: load, infer, save.

    python benchmarks/bundle_run.py MODEL.onnx BUNDLE_DIR OUT_DIR CASE... --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("cases", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import nibabel as nib

    from seg_edge.artifact import load_artifact
    from seg_edge.evaluation.sources.monai_bundle import BundleSource
    from seg_edge.runtime.io import find_modalities

    card = load_artifact(args.model).card  # only which file is which channel
    source = BundleSource(args.bundle, card, threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        result = source.predict(case)
        first = nib.load(find_modalities(case, card.modalities)[card.modalities[0]])
        nib.save(nib.Nifti1Image(result.labels, first.affine), args.out / f"{case.name}.nii.gz")


if __name__ == "__main__":
    main()
