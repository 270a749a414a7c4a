"""Build the shipped atlas: nilearn's MNI152 2009 T1 template and brain mask on the BraTS 240×240×155 1 mm grid.

    .venv/bin/python tools/make_atlas.py [--out src/seg_edge/assets/atlas]

This is MNI152 (ICBM 2009a nonlinear symmetric, as nilearn ships it), NOT SRI24, the atlas BraTS used: a
site that has SRI24 passes it with ``--atlas``. The template is placed on the grid and affine of
``seg_edge.synth.writer.brats_affine`` (1 mm, x and y flipped: LPS voxel order) the way
``seg_edge.synth.mni`` places its phantoms: the brain's bounding box centred in x and y, the top 148 mm of the
brain kept and centred in z (the lower brainstem is cut, as in BraTS volumes whose 155 slices end below the
cerebellum). The shift is a whole number of millimetres, so no voxel is interpolated: the values are the
template's own (uint8, 0–255 as nilearn's file stores them); the brain mask (uint8 0/1) is nilearn's rule
(template above 0.2 of its maximum) with its holes filled.

Reproducible: the same nilearn files give the same output bytes (gzip without a time stamp), and the script
prints the sha256 of the input and the two outputs for PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from seg_edge.synth.writer import REFERENCE_SHAPE, brats_affine

BRAIN_THRESHOLD = 0.2  # nilearn's load_mni152_brain_mask default
MAX_HEIGHT_MM = 148  # as seg_edge.synth.mni: the cerebrum and cerebellum fit, the lower brainstem is cut
OUT = Path(__file__).resolve().parents[1] / "src" / "seg_edge" / "assets" / "atlas"
IMAGE_NAME, BRAIN_NAME = "mni152_2009_t1.nii.gz", "mni152_2009_brain.nii.gz"


def _template() -> tuple[nib.Nifti1Image, Path, str]:
    import nilearn
    from nilearn.datasets import struct

    # the file itself, not load_mni152_template(), which rescales it to float 0–1
    path = Path(struct.MNI152_FILE_PATH)
    return nib.load(path), path, str(nilearn.__version__)


def _brain(t1_data: np.ndarray) -> np.ndarray:
    """nilearn's brain mask rule (load_mni152_brain_mask: template > 0.2 of its maximum) with the holes filled:
    the rule alone leaves dark ventricles out of the "brain", which a skull-strip mask includes."""
    return ndimage.binary_fill_holes(t1_data > BRAIN_THRESHOLD * float(t1_data.max()))


def _shift_ras(mask: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Whole-mm RAS translation taking the template's world to the BraTS grid's world (same axes, 1 mm)."""
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    lo = np.array([h[0] for h in hits], dtype=float)
    hi = np.array([h[-1] for h in hits], dtype=float)
    lo[2] = max(lo[2], hi[2] - (MAX_HEIGHT_MM - 1))
    centre_src = source_affine @ np.r_[(lo + hi) / 2.0, 1.0]
    target = brats_affine(REFERENCE_SHAPE)
    centre_dst = target @ np.r_[(np.array(REFERENCE_SHAPE) - 1) / 2.0, 1.0]
    return np.rint(centre_dst[:3] - centre_src[:3])


def _on_grid(data: np.ndarray, source_affine: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``data`` copied onto the BraTS grid (voxel for voxel: both grids are 1 mm and axis-aligned)."""
    target = brats_affine(REFERENCE_SHAPE)
    # BraTS voxel → RAS → template RAS (minus the shift) → template voxel: a signed permutation plus whole offsets
    to_source = np.linalg.inv(source_affine) @ np.r_[np.c_[np.eye(3), -shift], [[0, 0, 0, 1]]] @ target
    if not np.allclose(to_source[:3, :3], np.rint(to_source[:3, :3])) or not np.allclose(
            to_source[:3, 3], np.rint(to_source[:3, 3])):
        raise SystemExit(f"template affine {source_affine.tolist()} is not 1 mm axis-aligned")
    grid = np.indices(REFERENCE_SHAPE).reshape(3, -1)
    src = np.rint(to_source[:3, :3] @ grid + to_source[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(data.shape)[:, None]), axis=0)
    out = np.zeros(int(np.prod(REFERENCE_SHAPE)), dtype=data.dtype)
    out[inside] = data[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(REFERENCE_SHAPE)


def _write(data: np.ndarray, path: Path) -> str:
    """Write a NIfTI with the BraTS affine, gzip without a time stamp (same bytes every run); its sha256."""
    affine = brats_affine(REFERENCE_SHAPE)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"MNI152 2009a (nilearn) on the BraTS grid; not SRI24"
    raw = image.to_bytes()
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(packed)
    tmp.replace(path)
    return hashlib.sha256(packed).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    t1, t1_path, version = _template()
    t1_data = np.asarray(t1.dataobj)
    if t1_data.dtype != np.uint8:
        raise SystemExit(f"template dtype {t1_data.dtype} (expected uint8, as nilearn ships it)")
    mask = _brain(t1_data)
    shift = _shift_ras(mask, t1.affine)
    brain = _on_grid(mask.astype(np.uint8), t1.affine, shift)
    image = _on_grid(t1_data, t1.affine, shift)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "nilearn": version,
        "input": {t1_path.name: hashlib.sha256(t1_path.read_bytes()).hexdigest()},
        "brain_rule": f"template > {BRAIN_THRESHOLD} x max, holes filled",
        "shift_ras_mm": shift.tolist(),
        "kept_slices_of_brain": MAX_HEIGHT_MM,
        "brain_voxels_template": int(mask.sum()),
        "brain_voxels_on_grid": int(brain.sum()),
        "outputs": {IMAGE_NAME: _write(image, args.out / IMAGE_NAME),
                    BRAIN_NAME: _write(brain, args.out / BRAIN_NAME)},
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
