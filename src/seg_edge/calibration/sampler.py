"""Calibration patches from BraTS-format case folders, through the runtime's own preprocessing.

Stratified and seeded: a third of each case's patches centred on tumour (where a *_seg label
exists), a third on healthy brain, a third on the brain border. One case is held in memory at
a time, and ORT's calibrator is fed one patch per collection round (``CalibStridedMinMax``), so
activations of all samples are never held together. 2D models (``spatial_dims`` 2) get whole
slices through the same centres, along the card's slice axis, resized as the runtime resizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from seg_edge.card import ModelCard
from seg_edge.runtime.inference import resize_plane
from seg_edge.runtime.io import load_case, read_labels
from seg_edge.runtime.preprocess import preprocess
from seg_edge.runtime.regions import et_label, find_label_file, to_network_layout

STRATA = ("tumour", "healthy", "border")


@dataclass(frozen=True)
class PatchPlan:
    case: Path
    stratum: str
    corner: tuple[int, ...]  # 3D: the patch's corner; 2D: (index of the slice along the card's axis,)


def _tumour_in_network_layout(case_dir: Path, tensor_shape, inverse, card: ModelCard) -> np.ndarray | None:
    path = find_label_file(case_dir)
    if path is None:
        return None
    labels = read_labels(path, et_label(card.label_scheme))[0]
    return to_network_layout(labels, inverse, tensor_shape, str(path)) > 0


def _centres(brain: np.ndarray, tumour: np.ndarray | None) -> dict[str, np.ndarray]:
    """Candidate patch centres per stratum, from the brain mask and tumour mask (network layout)."""
    inner = ndimage.binary_erosion(brain, iterations=3)
    pools = {"border": np.argwhere(brain & ~ndimage.binary_erosion(brain)),
             "healthy": np.argwhere(inner & (~tumour if tumour is not None else True))}
    if tumour is not None and tumour.any():
        pools["tumour"] = np.argwhere(tumour)
    return pools


def plan_patches(cases: list[Path], card: ModelCard, samples: int, seed: int) -> list[PatchPlan]:
    """Decide every patch (case, stratum, corner) up front; reading happens later, case by case."""
    rng = np.random.default_rng(seed)
    per_case = [samples // len(cases) + (i < samples % len(cases)) for i in range(len(cases))]
    plans = []
    patch = np.array(card.patch_size)
    for case_dir, n in zip(cases, per_case):
        if n == 0:
            continue
        images = load_case(case_dir, card.modalities).images
        tensor, inverse = preprocess(images, card)
        # the brain from the raw images: normalised channels are not zero outside it for every card
        brain = to_network_layout(np.any(images > 0, axis=0), inverse, tensor.shape[1:], str(case_dir))
        pools = _centres(brain, _tumour_in_network_layout(case_dir, tensor.shape[1:], inverse, card))
        names = [s for s in STRATA if s in pools and len(pools[s])]
        for i in range(n):
            stratum = names[i % len(names)]
            centre = pools[stratum][rng.integers(len(pools[stratum]))]
            if card.inputs.slice is not None:  # 2D: the card check requires a slice spec there, and only there
                corner = centre[[card.inputs.slice.axis]]
            else:
                corner = np.clip(centre - patch // 2, 0, np.array(tensor.shape[1:]) - patch)
            plans.append(PatchPlan(case_dir, stratum, tuple(int(c) for c in corner)))
    return plans


def network_slice(tensor: np.ndarray, card: ModelCard, index: int) -> np.ndarray:
    """2D models: (C, H, W) slice ``index`` along the card's slice axis, resized as the runtime feeds it."""
    spec = card.slice_spec()
    plane = np.moveaxis(tensor, 1 + spec.axis, 1)[:, index]
    return resize_plane(plane, spec.size, spec.interpolation)


class PatchReader:
    """ONNX Runtime ``CalibrationDataReader``: ``get_next()`` → {input: (1, C, *patch or slice)} or None."""

    def __init__(self, plans: list[PatchPlan], card: ModelCard):
        self.plans, self.card = plans, card
        self._start, self._end, self._pos = 0, len(plans), 0
        self._cached: tuple[Path, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.plans)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end, self._pos = start_index, end_index, start_index

    def rewind(self) -> None:
        self._pos = self._start

    def _tensor(self, case_dir: Path) -> np.ndarray:
        if self._cached is None or self._cached[0] != case_dir:  # one case in memory at a time
            self._cached = (case_dir, preprocess(load_case(case_dir, self.card.modalities).images, self.card)[0])
        return self._cached[1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        plan = self.plans[self._pos]
        self._pos += 1
        tensor = self._tensor(plan.case)
        if self.card.inputs.spatial_dims == 2:
            patch = network_slice(tensor, self.card, plan.corner[0])
        else:
            where = tuple(slice(c, c + p) for c, p in zip(plan.corner, self.card.patch_size))
            patch = tensor[(slice(None),) + where]
        return {self.card.input_name: np.ascontiguousarray(patch[None], dtype=np.float32)}
