"""Read cases (BraTS folders, explicit files, 4D NIfTI, .npy stacks) and write label maps.

Every defect in the input raises ``InputError`` naming the file, what was found and what was
expected. Nothing is re-oriented or resampled; unusual geometry is reported in ``warnings``.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from seg_edge.errors import InputError
from seg_edge.runtime.nifti import image_data, read_bytes, read_image, read_npy

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Modality name → the file-name tags of BraTS 2020/2021 and BraTS 2023 releases.
TAGS = {"flair": ("_flair", "-t2f"), "t1": ("_t1", "-t1n"), "t1ce": ("_t1ce", "-t1c"), "t2": ("_t2", "-t2w")}
AFFINE_ATOL_MM = 1e-3


@dataclass
class Case:
    """Four co-registered modalities, stacked in the order asked for, plus their geometry."""

    case_id: str
    images: np.ndarray  # (4, X, Y, Z) float32 in the requested modality order
    affine: np.ndarray
    header: nib.Nifti1Header | None
    sources: dict[str, Path]
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        if self.header is None:
            return (1.0, 1.0, 1.0)
        return tuple(float(z) for z in self.header.get_zooms()[:3])  # type: ignore[return-value]


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_modalities(folder: Path, needed: tuple[str, ...] = tuple(TAGS)) -> dict[str, Path]:
    """Map modality → file in a BraTS case folder; InputError if a ``needed`` one is missing or ambiguous."""
    found: dict[str, list[Path]] = {m: [] for m in TAGS}
    for path in sorted(folder.iterdir()):
        if path.is_dir() or not is_nifti(path):  # a FIFO named like a modality is refused when read
            continue
        stem = strip_nifti(path.name).lower()
        for modality, tags in TAGS.items():
            if any(stem.endswith(tag) for tag in tags):
                found[modality].append(path)
    missing = [m for m in needed if not found[m]]
    if missing:
        names = ", ".join(f"*{TAGS[m][0]} or *{TAGS[m][1]}" for m in missing)
        raise InputError(f"{folder}: case folder lacks {', '.join(missing)} (expected a NIfTI named {names})")
    for modality in needed:
        if len(found[modality]) > 1:
            raise InputError(f"{folder}: {len(found[modality])} files match {modality}: "
                             f"{[p.name for p in found[modality]]}")
    return {m: found[m][0] for m in needed}


def has_modality_files(folder: Path) -> bool:
    """Whether ``folder`` holds any file named like a BraTS modality (a case folder, complete or not)."""
    return any(strip_nifti(p.name).lower().endswith(tags) for p in folder.iterdir()
               if is_nifti(p) for tags in TAGS.values())


def is_case_folder(folder: Path) -> bool:
    try:
        find_modalities(folder)
    except InputError:
        return False
    return True


def _shape(path: Path, img: nib.Nifti1Image, ndim: tuple[int, ...]) -> tuple[int, ...]:
    """The image's shape (a trailing 1 dropped for 3D reads); InputError if its rank is not in ``ndim``."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1 and 3 in ndim:
        shape = shape[:3]
    if len(shape) not in ndim:
        want = " or ".join(f"{n}D" for n in ndim)
        raise InputError(f"{path}: image is {len(img.shape)}D with shape {img.shape} (expected {want})")
    return shape


def read_nifti(path: Path, ndim: tuple[int, ...] = (3,), notes: list[str] | None = None,
               raw: bytes | None = None) -> nib.Nifti1Image:
    """Load a NIfTI image and its float32 data, checked (see ``runtime.nifti``); notes collect warnings.
    ``raw``: the file's bytes, already read (``nifti.read_bytes``)."""
    notes = [] if notes is None else notes
    img = read_image(path, notes, raw)
    data = image_data(path, img, notes).reshape(_shape(path, img, ndim))
    return type(img)(data, img.affine, header=img.header)


def _require_signal(path: Path, volume: np.ndarray, what: str = "volume") -> None:
    if not np.any(volume):
        raise InputError(f"{path}: {what} is all zero (expected a skull-stripped brain)")


def _geometry_warnings(img: nib.Nifti1Image, path: Path) -> list[str]:
    zooms = img.header.get_zooms()[:3]
    notes = []
    if not np.allclose(zooms, 1.0, atol=0.05):
        notes.append(f"{path.name}: voxel size {tuple(round(float(z), 3) for z in zooms)} mm, "
                     "the model expects 1 mm; not resampled, results may be poor")
    return notes


def stack_files(files: dict[str, Path], order: tuple[str, ...], case_id: str) -> Case:
    """Read one 3D NIfTI per modality and stack them in ``order``; checks shapes and affines.

    The files are read and decompressed in parallel threads; each volume is then converted once,
    straight into its slot of the stacked float32 array."""
    notes: list[str] = []
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        raws = dict(zip(order, pool.map(read_bytes, [files[m] for m in order])))
    imgs = {m: read_image(files[m], notes, raws.pop(m)) for m in order}
    first = order[0]
    ref = imgs[first]
    shape = _shape(files[first], ref, (3,))
    for m in order[1:]:
        if _shape(files[m], imgs[m], (3,)) != shape:
            raise InputError(f"{files[m]}: shape {imgs[m].shape} differs from {files[first].name} "
                             f"{ref.shape} (expected co-registered modalities; raw scanner series: predict --raw)")
        if not np.allclose(imgs[m].affine, ref.affine, atol=AFFINE_ATOL_MM):
            raise InputError(f"{files[m]}: affine differs from {files[first].name} "
                             "(expected co-registered modalities on one grid; raw scanner series: predict --raw)")
    images = np.empty((len(order),) + tuple(shape), dtype=np.float32)
    for i, m in enumerate(order):
        image_data(files[m], imgs[m], notes, images[i])
        _require_signal(files[m], images[i])
    return Case(case_id, images, ref.affine, ref.header, {m: files[m] for m in order},
                _geometry_warnings(ref, files[first]) + notes)


def unstated_order(path: Path | str, how: str = "--modalities") -> InputError:
    """The refusal of a stack whose volume order was not stated: it is never guessed from the model card."""
    return InputError(f"{path}: a stack's volume order is not stated (give {how} with the order of its volumes, "
                      "e.g. t1,t1ce,t2,flair; it is never guessed)")


def _pick(path: Path, volumes: list[np.ndarray], order: tuple[str, ...],
          file_order: tuple[str, ...] | None) -> np.ndarray:
    """The stack's volumes in the model's ``order``; every volume is checked for signal first, so a defect
    of the file is reported before a missing ``file_order`` (which is refused, never guessed)."""
    for i, vol in enumerate(volumes):
        _require_signal(path, vol, f"volume '{file_order[i]}'" if file_order else f"volume {i + 1}")
    if file_order is None:
        raise unstated_order(path)
    return np.stack([volumes[file_order.index(m)] for m in order])


def load_4d(path: Path, order: tuple[str, ...], file_order: tuple[str, ...] | None) -> Case:
    """A 4D NIfTI whose last axis holds the modalities in ``file_order`` (None: refused, never guessed)."""
    notes: list[str] = []
    img = read_nifti(path, ndim=(4,), notes=notes)
    data = np.asarray(img.dataobj, dtype=np.float32)
    want = len(file_order or order)
    if data.shape[3] != want:
        named = f": {', '.join(file_order)}" if file_order else ""
        raise InputError(f"{path}: 4D image has {data.shape[3]} volumes (expected {want}{named})")
    images = _pick(path, [data[..., i] for i in range(want)], order, file_order)
    return Case(strip_nifti(path.name), images, img.affine, img.header, {m: path for m in order},
                _geometry_warnings(img, path) + notes)


def load_npy(path: Path, order: tuple[str, ...], file_order: tuple[str, ...] | None) -> Case:
    """A (4, X, Y, Z) .npy stack in ``file_order`` (None: refused, never guessed); identity affine (1 mm)."""
    data = read_npy(path)
    want = len(file_order or order)
    if data.ndim != 4 or data.shape[0] != want:
        raise InputError(f"{path}: array of shape {data.shape} and dtype {data.dtype} "
                         f"(expected numeric ({want}, X, Y, Z))")
    data = data.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: {bad} voxels are NaN or Inf (expected finite intensities)")
    images = _pick(path, list(data), order, file_order)
    note = f"{path.name}: .npy input has no geometry; the output uses an identity affine (1 mm voxels)"
    return Case(path.name[:-4], images, np.eye(4), None, {m: path for m in order}, [note])


def load_case(source: Path | dict[str, Path], order: tuple[str, ...],
              file_order: tuple[str, ...] | None = None) -> Case:
    """Load a case folder, a dict of modality files, a 4D NIfTI or a .npy stack.

    ``order`` is the model's modality order; ``file_order`` the order of volumes inside a 4D
    NIfTI or .npy: it must be stated for a stack (InputError naming the file and ``--modalities``
    otherwise; the card's order is never assumed) and is not used for files named by modality.
    """
    lacking = [m for m in order if m not in file_order] if file_order else []
    if file_order and lacking:
        raise InputError(f"--modalities {','.join(file_order)}: lacks {', '.join(lacking)}, which the model reads "
                         f"(it needs {', '.join(order)})")
    if isinstance(source, dict):
        missing = [m for m in order if m not in source]
        if missing:
            raise InputError(f"--{missing[0]} missing (the model reads {', '.join(order)}: "
                             f"{' '.join('--' + m for m in order)} are needed)")
        first = source.get("flair", source[order[0]])
        return stack_files(source, order, re.sub(r"[_-](flair|t2f|t1ce|t1c|t1n|t1|t2w|t2)$", "",
                                                 strip_nifti(first.name), flags=re.IGNORECASE))
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: not found (expected a case folder, a 4D NIfTI or a .npy stack)")
    if path.is_dir():
        return stack_files(find_modalities(path, order), order, path.name)
    if path.name.lower().endswith(".npy"):
        return load_npy(path, order, file_order)
    return load_4d(path, order, file_order)


def write_volume(data: np.ndarray, case: Case, out: Path, description: str | None = None) -> None:
    """Save ``data`` to ``out`` on the case's grid with its affine, header and qform/sform codes;
    ``description``: the header's ``descrip`` (at most 80 bytes), e.g. what a probability map's channels are.

    ``out`` is written in place: callers stage it (``runtime.outputs``) or use ``atomic_write``.
    """
    if case.header is None:
        img = nib.Nifti1Image(data, case.affine)
    else:
        header = case.header.copy()
        header.set_data_dtype(data.dtype)
        # the output keeps the input's format (a NIfTI-2 header in a NIfTI-1 image makes nibabel complain)
        klass: type[nib.Nifti1Image] = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = klass(data, case.affine, header=header)
        img.set_qform(case.header.get_qform(), code=int(case.header["qform_code"]))
        img.set_sform(case.header.get_sform(), code=int(case.header["sform_code"]))
        img.header.set_slope_inter(1.0, 0.0)
    if description is not None:
        img.header["descrip"] = description.encode()[:80]
    try:
        nib.save(img, str(out))
    except (nib.spatialimages.HeaderDataError, ValueError) as exc:
        source = next(iter(case.sources.values()), case.case_id)
        raise InputError(f"{source}: its geometry cannot be written to a NIfTI output ({exc})") from None


def read_label_volume(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A label file's 3D array as stored (a trailing axis of 1 dropped) and its image; InputError unless 3D."""
    img = read_image(path, [])
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: label map is {data.ndim}D (expected 3D)")
    return data, img


def read_labels(path: Path, et: int) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A 3D integer label map with labels in {0, 1, 2, et}; InputError otherwise."""
    data, img = read_label_volume(path)
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise InputError(f"{path}: label map holds non-integer values (expected labels 0, 1, 2, {et})")
    present = set(np.unique(data).astype(int).tolist())
    extra = sorted(present - {0, 1, 2, et})
    if extra:
        hint = " (ET=3 means --label-scheme brats2023)" if extra == [3] else ""
        raise InputError(f"{path}: labels {extra} found (expected a subset of 0, 1, 2, {et}){hint}")
    return data.astype(np.uint8), img
