"""Training data: preprocessed cases held in memory and a tumour-oversampling patch sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import InputError
from seg_edge.runtime.io import load_case, read_labels
from seg_edge.runtime.preprocess import preprocess
from seg_edge.runtime.regions import LABEL_HINT, find_label_file, labels_to_regions, to_network_layout


@dataclass
class TrainingCase:
    """One preprocessed case and its regions, both in network layout."""

    case_id: str
    image: np.ndarray  # (C, X, Y, Z) float16, network layout
    regions: np.ndarray  # (3, X, Y, Z) uint8
    tumour: np.ndarray  # (n, 3) int32 voxel coordinates of label > 0, for oversampling


def split_cases(folders: list[Path], seed: int) -> dict[str, list[Path]]:
    """Split by case: 68 % train, 17 % validation, 15 % test (seeded, stable)."""
    order = np.random.default_rng(seed).permutation(len(folders))
    n_test = max(1, round(0.15 * len(folders)))
    n_val = max(1, round(0.17 * len(folders)))
    picked = [folders[i] for i in order]
    return {"test": sorted(picked[:n_test]), "val": sorted(picked[n_test:n_test + n_val]),
            "train": sorted(picked[n_test + n_val:])}


def load_training_case(folder: Path, card: ModelCard, et: int) -> TrainingCase:
    """Preprocess a labelled case folder as the runtime does; its labels go where its voxels went."""
    case = load_case(folder, card.modalities)
    tensor, inverse = preprocess(case.images, card)
    path = find_label_file(folder)
    if path is None:
        raise InputError(f"{folder}: no ground truth to train on (expected {LABEL_HINT})")
    labels = to_network_layout(read_labels(path, et)[0], inverse, tensor.shape[1:], str(path))
    regions = labels_to_regions(labels, et).astype(np.uint8)
    return TrainingCase(case.case_id, tensor.astype(np.float16), regions,
                        np.argwhere(labels > 0).astype(np.int32))


class PatchSampler:
    """Random patches; ``fg_prob`` of them centred on a tumour voxel; flips and intensity jitter."""

    def __init__(self, cases: list[TrainingCase], patch: tuple[int, int, int], seed: int,
                 fg_prob: float = 0.6):
        self.cases, self.patch, self.fg_prob = cases, patch, fg_prob
        self.rng = np.random.default_rng(seed)

    def _corner(self, case: TrainingCase) -> list[int]:
        shape = case.image.shape[1:]
        if case.tumour.size and self.rng.random() < self.fg_prob:
            centre = case.tumour[self.rng.integers(len(case.tumour))]
        else:
            centre = [self.rng.integers(s) for s in shape]
        return [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, self.patch, shape)]

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[self.rng.integers(len(self.cases))]
        lo = self._corner(case)
        where = tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
        x = case.image[(slice(None),) + where].astype(np.float32)
        y = case.regions[(slice(None),) + where].astype(np.float32)
        if x.shape[1:] != self.patch:
            pads = [(0, 0)] + [(0, p - s) for p, s in zip(self.patch, x.shape[1:])]
            x, y = np.pad(x, pads), np.pad(y, pads)
        n_mod = 4
        scale = self.rng.uniform(0.9, 1.1, size=(n_mod, 1, 1, 1)).astype(np.float32)
        shift = self.rng.uniform(-0.1, 0.1, size=(n_mod, 1, 1, 1)).astype(np.float32)
        nz = x[:n_mod] != 0
        x[:n_mod] = np.where(nz, x[:n_mod] * scale + shift, 0.0)
        for axis in (1, 2, 3):
            if self.rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self._one() for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
