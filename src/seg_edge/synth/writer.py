"""Write synthetic cases as BraTS 2021-style case folders (int16 images, uint8 labels, 1 mm)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from seg_edge.card import MODALITIES
from seg_edge.synth.phantom import REFERENCE_SHAPE, make_phantom

SUFFIXES = MODALITIES  # one file per modality, named for it


def brats_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """The affine BraTS 2021 volumes carry: 1 mm, LPS-flipped x and y, origin at the far y edge."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """NIfTI with the affine in qform and sform (scanner code 1), written to a temporary name and renamed."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)


def case_id(seed: int, index: int) -> str:
    return f"SynBraTS_{seed:04d}_{index:03d}"


def write_case(out_dir: Path, seed: int, index: int, shape: tuple[int, int, int] = REFERENCE_SHAPE,
               et_label: int = 4, anatomy: str = "procedural", *, tumours: int = 1, satellites: int = 0) -> Path:
    """Generate case ``index`` of ``seed`` and write ``<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz``
    (``tumours``, ``satellites``: see ``make_phantom``)."""
    cid = case_id(seed, index)
    phantom = make_phantom(np.random.default_rng([seed, index]), shape, et_label, anatomy, tumours=tumours,
                           satellites=satellites)
    folder = Path(out_dir) / cid
    folder.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(shape)
    for suffix, image in zip(SUFFIXES, phantom.images):
        save_nifti(image, affine, folder / f"{cid}_{suffix}.nii.gz")
    save_nifti(phantom.labels, affine, folder / f"{cid}_seg.nii.gz")
    return folder


def _write_one(args: tuple[Path, int, int, tuple[int, int, int], int, str, int, int]) -> Path:
    out_dir, seed, index, shape, et_label, anatomy, tumours, satellites = args
    return write_case(out_dir, seed, index, shape, et_label, anatomy, tumours=tumours, satellites=satellites)


def write_cases(out_dir: Path, n: int, seed: int, shape: tuple[int, int, int] = REFERENCE_SHAPE,
                et_label: int = 4, workers: int = 1, anatomy: str = "procedural",
                progress: Callable[[Path], None] | None = None, *, tumours: int = 1,
                satellites: int = 0) -> list[Path]:
    """Write ``n`` cases; ``workers`` > 1 generates them in parallel processes; ``tumours`` and ``satellites``
    per case as ``make_phantom`` takes them."""
    jobs = [(Path(out_dir), seed, i, shape, et_label, anatomy, tumours, satellites) for i in range(n)]
    done: list[Path] = []
    if workers <= 1:
        results = map(_write_one, jobs)
        for path in results:
            done.append(path)
            if progress:
                progress(path)
        return done
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for path in pool.map(_write_one, jobs):
            done.append(path)
            if progress:
                progress(path)
    return done
