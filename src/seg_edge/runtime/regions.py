"""BraTS labels and regions, the one Dice, ground-truth files, case folders, labels in network layout.

Every stage that reads ground truth — training, calibration, evaluation, parity — takes these
pieces from here, so that a label file is found the same way everywhere, Dice means the same
thing everywhere, and a label lands on the voxel of the network tensor its image voxel did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_edge.card import LABEL_SETS, LABEL_SYNONYMS, REGIONS
from seg_edge.errors import InputError
from seg_edge.runtime.io import is_case_folder, is_nifti, strip_nifti
from seg_edge.runtime.preprocess import Inverse, to_network_axes

__all__ = ["LABEL_HINT", "LABEL_SCHEMES", "LABEL_TAGS", "REGIONS", "case_folders", "dice", "et_label",
           "find_label_file", "label_map", "label_set", "labels_to_regions", "region_counts", "regions_to_labels",
           "to_network_layout"]

# Label scheme → the label of enhancing tumour; NCR (NETC) is 1 and ED (SNFH) is 2 in every one.
LABEL_SCHEMES = {scheme: labels["ET"] for scheme, labels in LABEL_SETS.items()}
# WT and TC as the challenges define them, by tissue (LABEL_SYNONYMS: NETC is NCR, SNFH is ED); RC is in neither
_REGION_TISSUES = {"WT": ("NCR", "ED", "ET"), "TC": ("NCR", "ET"), "ET": ("ET",)}
# BraTS 2020/2021 name the ground truth <id>_seg, BraTS 2023 <id>-seg.
LABEL_TAGS = ("_seg", "-seg")
LABEL_HINT = "a NIfTI named *_seg or *-seg"


def et_label(scheme: str) -> int:
    """The ET label of a label scheme: 4 for brats2021, 3 for brats2023 and brats2024-gli-post."""
    if scheme not in LABEL_SCHEMES:
        raise InputError(f"label scheme '{scheme}' (expected one of {', '.join(LABEL_SCHEMES)})")
    return LABEL_SCHEMES[scheme]


def label_set(scheme: str) -> dict[str, int]:
    """A label scheme's label name → value (card.LABEL_SETS); InputError naming the known schemes otherwise."""
    et_label(scheme)
    return dict(LABEL_SETS[scheme])


def label_map(model_scheme: str, scheme: str) -> dict[str, int]:
    """Each label a model of ``model_scheme`` writes (and background) → its value under ``scheme``.

    Only a relabelling that loses nothing: every label must have its tissue in ``scheme`` (NCR is NETC,
    ED is SNFH, ET is ET; ET 4 ↔ 3). RC has no value in brats2021 or brats2023: InputError, never merged.
    """
    source, target = label_set(model_scheme), label_set(scheme)
    by_tissue = {LABEL_SYNONYMS.get(name, name): value for name, value in target.items()}
    missing = [name for name in source if LABEL_SYNONYMS.get(name, name) not in by_tissue]
    if missing:
        can = [s for s in LABEL_SETS if {LABEL_SYNONYMS.get(n, n) for n in source}
               <= {LABEL_SYNONYMS.get(n, n) for n in LABEL_SETS[s]}]
        raise InputError(f"label scheme {scheme}: the model writes {model_scheme} labels and {', '.join(missing)} "
                         f"has no value in {scheme} (expected one of {', '.join(can)}: a relabelling that "
                         "loses no label)")
    return {"background": 0, **{name: by_tissue[LABEL_SYNONYMS.get(name, name)] for name in source}}


def labels_to_regions(labels: np.ndarray, et: int) -> np.ndarray:
    """uint8 labels → bool (3, …) WT={1,2,ET}, TC={1,ET}, ET={ET}."""
    return np.stack([np.isin(labels, (1, 2, et)), np.isin(labels, (1, et)), labels == et])


def region_counts(labels: np.ndarray, et: int, *, scheme: str | None = None) -> dict[str, int]:
    """Voxels of WT, TC, ET (as ``labels_to_regions`` defines them) and of the NCR and ED labels, from one
    count per label value instead of one mask per region. With ``scheme``: WT, TC and every label of its set
    by its own name (brats2024-gli-post: NETC, SNFH, ET, RC; TC = NETC+ET, WT = NETC+SNFH+ET)."""
    if scheme is None:
        ncr, ed, en = (int(np.count_nonzero(labels == value)) for value in (1, 2, et))
        return {"WT": ncr + ed + en, "TC": ncr + en, "ET": en, "NCR": ncr, "ED": ed}
    counts = {name: int(np.count_nonzero(labels == value)) for name, value in label_set(scheme).items()}
    tissues = {LABEL_SYNONYMS.get(name, name): n for name, n in counts.items()}
    regions = {key: sum(tissues[t] for t in parts) for key, parts in _REGION_TISSUES.items()}
    return {**regions, **counts}


def regions_to_labels(probs: np.ndarray, thresholds: tuple[float, ...], et: int) -> np.ndarray:
    """(3, …) WT/TC/ET probabilities → uint8 labels: ED=2 in WT∖TC, NCR=1 in TC, ET inside WT."""
    wt, tc, en = (probs[i] > thresholds[i] for i in range(3))
    labels: np.ndarray = wt.astype(np.uint8)
    labels[wt & ~tc] = 2
    labels[wt & en] = et
    return labels


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two masks of one shape; 1.0 when both are empty (BraTS convention)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        # numpy would broadcast (3, …) against (…) without a word
        raise InputError(f"Dice of masks of shapes {pred.shape} and {truth.shape} (expected one shape)")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & truth)) / total


def find_label_file(folder: Path) -> Path | None:
    """The ground-truth label file of a case folder (*_seg / *-seg NIfTI, any case), or None.

    Two or more candidates raise InputError naming the folder: picking one would be a guess.
    """
    folder = Path(folder)
    hits = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p)
                  and strip_nifti(p.name).lower().endswith(LABEL_TAGS))
    if len(hits) > 1:
        raise InputError(f"{folder}: {len(hits)} label files {[p.name for p in hits]} "
                         f"(expected one, {LABEL_HINT})")
    return hits[0] if hits else None


def case_folders(root: Path) -> list[Path]:
    """``root`` itself if it is a BraTS case folder; else its subfolders that are, sorted.

    InputError naming ``root`` when it is not a folder or holds no case folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected a BraTS case folder or a folder of them)")
    if is_case_folder(root):
        return [root]
    cases = sorted(p for p in root.iterdir() if p.is_dir() and is_case_folder(p))
    if not cases:
        raise InputError(f"{root}: no BraTS case folders in it (expected <id>/<id>_flair.nii.gz … "
                         "or <id>/<id>-t2f.nii.gz …)")
    return cases


def to_network_layout(labels: np.ndarray, inverse: Inverse, shape: tuple[int, ...],
                      source: str = "label map") -> np.ndarray:
    """A map on the original (X, Y, Z) grid → the spatial layout of the tensor ``preprocess`` made.

    The same rule preprocess applies to the images: crop to ``inverse.box``, permute the axes as the
    card says, place at ``inverse.pad_before`` inside ``shape`` (the tensor's spatial
    shape). Padding is 0; so is everything outside the box. ``source`` names the map in errors.
    """
    if tuple(labels.shape) != tuple(inverse.original_shape):
        raise InputError(f"{source}: shape {tuple(labels.shape)} differs from the image grid "
                         f"{tuple(inverse.original_shape)} (expected labels on the images' grid)")
    crop = to_network_axes(labels[inverse.box], inverse.axes)
    out = np.zeros(tuple(shape), dtype=labels.dtype)
    out[tuple(slice(b, b + s) for b, s in zip(inverse.pad_before, crop.shape))] = crop
    return out
