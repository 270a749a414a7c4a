"""Broken raw studies made from good ones: each helper copies a study's series into ``out`` with one of them
damaged the way a real study can be, and returns the files (modality → path) to hand to the pipeline.

Data are changed with nibabel and the header (affine, qform and sform) is kept unless the damage is the header.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")


def study_files(folder: Path) -> dict[str, Path]:
    """modality → raw series file of a raw study folder."""
    return {m: folder / f"{folder.name}_{m}.nii.gz" for m in MODALITIES}


def _copy(study: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for modality, path in study_files(study).items():
        files[modality] = out / path.name
        shutil.copyfile(path, files[modality])
    return files


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], *, dtype: type | None = None) -> None:
    img = nib.load(path)
    data = change(np.asanyarray(img.dataobj))
    # a fresh header for a new data type: the old one's scaling would turn NaNs into 0 on writing
    header = img.header.copy() if dtype is None else None
    new = nib.Nifti1Image(data, img.affine, header=header)
    new.set_qform(img.affine, code=1)
    new.set_sform(img.affine, code=1)
    nib.save(new, path)


def _left_right_axis(path: Path) -> int:
    """The voxel axis most nearly along the patient's left-right (the RAS x of the affine)."""
    affine = nib.load(path).affine
    return int(np.argmax(np.abs(affine[0, :3])))


def _up_axis(path: Path) -> int:
    return int(np.argmax(np.abs(nib.load(path).affine[2, :3])))


def wrong_patient(study: Path, other: Path, modality: str, out: Path) -> dict[str, Path]:
    """``modality`` replaced by the same series of another patient (``other`` study)."""
    files = _copy(study, out)
    shutil.copyfile(study_files(other)[modality], files[modality])
    return files


def flipped_left_right(study: Path, modality: str, out: Path) -> dict[str, Path]:
    """The series' voxels mirrored left-right with its header unchanged (a header that lies)."""
    files = _copy(study, out)
    axis = _left_right_axis(files[modality])
    _rewrite(files[modality], lambda data: np.flip(data, axis).copy())
    return files


def rotated_180(study: Path, modality: str, out: Path) -> dict[str, Path]:
    """The series' voxels turned 180° about the head's long axis (both in-plane axes reversed), header unchanged."""
    files = _copy(study, out)
    up = _up_axis(files[modality])
    axes = tuple(a for a in range(3) if a != up)
    _rewrite(files[modality], lambda data: np.flip(data, axes).copy())
    return files


def non_brain(study: Path, modality: str, out: Path) -> dict[str, Path]:
    """The series replaced by a phantom bottle (a cylinder of smooth texture) on the same grid and header."""
    files = _copy(study, out)
    img = nib.load(files[modality])
    shape = img.shape
    rng = np.random.default_rng(5)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    up = _up_axis(files[modality])
    radial = sum(g ** 2 for a, g in enumerate(grid) if a != up)
    bottle = (radial < 0.5) * (400 + 40 * rng.standard_normal(shape))
    _rewrite(files[modality], lambda data: bottle.astype(data.dtype))
    return files


def missing(study: Path, modality: str, out: Path) -> dict[str, Path]:
    """The files without ``modality``."""
    files = _copy(study, out)
    files[modality].unlink()
    return {m: p for m, p in files.items() if m != modality}


def slices(study: Path, modality: str, out: Path, count: int) -> dict[str, Path]:
    """Only ``count`` slices of the series kept (1: a single slice; 3: a localiser), header unchanged."""
    files = _copy(study, out)
    img = nib.load(files[modality])
    thin = int(np.argmin(img.shape[:3]))
    middle = img.shape[thin] // 2

    def keep(data: np.ndarray) -> np.ndarray:
        index = [slice(None)] * 3
        index[thin] = slice(middle, middle + count)
        return data[tuple(index)].copy()

    _rewrite(files[modality], keep)
    return files


def four_d(study: Path, modality: str, out: Path) -> dict[str, Path]:
    """The series written as a 4D file of two volumes (a dynamic series, or modalities stacked)."""
    files = _copy(study, out)
    _rewrite(files[modality], lambda data: np.stack([data, data], axis=-1))
    return files


def with_nans(study: Path, modality: str, out: Path, count: int = 7) -> dict[str, Path]:
    """``count`` voxels of the series set to NaN (written as float32)."""
    files = _copy(study, out)

    def spoil(data: np.ndarray) -> np.ndarray:
        data = data.astype(np.float32)
        np.put(data, np.linspace(0, data.size - 1, count).astype(int), np.nan)  # in place, whatever the order
        return data

    _rewrite(files[modality], spoil, dtype=np.float32)
    return files


def wide_fov(study: Path, modality: str, out: Path, factor: int = 3) -> dict[str, Path]:
    """The series zero-padded in-plane to ``factor`` times its field of view (a body-coil field of view), with
    the origin moved so the head stays where it was."""
    files = _copy(study, out)
    img = nib.load(files[modality])
    up = _up_axis(files[modality])
    pad = [((factor - 1) * n // 2,) * 2 if a != up else (0, 0) for a, n in enumerate(img.shape)]
    data = np.pad(np.asanyarray(img.dataobj), pad)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([p[0] for p in pad], dtype=float)
    new = nib.Nifti1Image(data, affine, header=img.header.copy())
    new.set_qform(affine, code=1)
    new.set_sform(affine, code=1)
    nib.save(new, files[modality])
    return files
