"""Ground-truth pieces: labels in network layout, Dice conventions, label files and case folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_edge.card import ModelCard, schema1_card
from seg_edge.errors import InputError
from seg_edge.runtime import postprocess
from seg_edge.runtime.preprocess import preprocess, to_original_grid
from seg_edge.runtime.regions import REGIONS, case_folders, dice, et_label, find_label_file, to_network_layout

GRID = (20, 18, 15)
# the brain box of brain_images(): 13 × 10 × 7 voxels
BOX = (slice(3, 16), slice(4, 14), slice(5, 12))


def brain_images(rng: np.random.Generator) -> np.ndarray:
    """Four modalities, positive inside BOX and zero outside it."""
    images = np.zeros((4,) + GRID, dtype=np.float32)
    images[(slice(None),) + BOX] = rng.uniform(1.0, 2.0, size=(4, 13, 10, 7))
    return images


def card(axis_order: str = "xyz", patch=(16, 16, 16)) -> ModelCard:
    return schema1_card(name="t", preset="edge", patch_size=patch, size_divisor=4, axis_order=axis_order)


def numbered_labels() -> np.ndarray:
    """Every voxel of the grid carries its own value (1 + flat index), so a misplacement shows."""
    return (np.arange(np.prod(GRID), dtype=np.int32) + 1).reshape(GRID)


# --------------------------------------------------------------------------- labels in network layout

def test_placement_xyz_with_odd_and_even_padding(rng):
    # crop 13 × 10 × 7 in a 16 × 16 × 8 tensor: padding 3 (odd: 1 before), 6 (even: 3 before), 1 (0 before)
    tensor, inverse = preprocess(brain_images(rng), card(patch=(16, 16, 8)))
    assert tensor.shape[1:] == (16, 16, 8) and inverse.pad_before == (1, 3, 0)
    labels = numbered_labels()
    placed = to_network_layout(labels, inverse, tensor.shape[1:])
    expected = np.zeros((16, 16, 8), dtype=labels.dtype)
    expected[1:14, 3:13, 0:7] = labels[3:16, 4:14, 5:12]
    np.testing.assert_array_equal(placed, expected)
    # where the images went, the labels went: non-zero exactly where the brain is in the tensor
    np.testing.assert_array_equal(placed != 0, tensor[0] != 0)


def test_placement_zyx_reverses_axes_before_padding(rng):
    # network layout (Z, Y, X): crop 7 × 10 × 13 in 16³ → padding 9, 6, 3 → before 4, 3, 1
    tensor, inverse = preprocess(brain_images(rng), card("zyx"))
    assert inverse.pad_before == (4, 3, 1)
    labels = numbered_labels()
    placed = to_network_layout(labels, inverse, tensor.shape[1:])
    expected = np.zeros((16, 16, 16), dtype=labels.dtype)
    expected[4:11, 3:13, 1:14] = labels[3:16, 4:14, 5:12].transpose(2, 1, 0)
    np.testing.assert_array_equal(placed, expected)
    np.testing.assert_array_equal(placed != 0, tensor[0] != 0)


@pytest.mark.parametrize("axis_order", ["xyz", "zyx"])
def test_placement_is_undone_by_the_runtimes_inverse(rng, axis_order):
    tensor, inverse = preprocess(brain_images(rng), card(axis_order))
    labels = numbered_labels()
    back = to_original_grid(to_network_layout(labels, inverse, tensor.shape[1:]), inverse)
    inside = np.zeros(GRID, dtype=bool)
    inside[BOX] = True
    np.testing.assert_array_equal(back, np.where(inside, labels, 0))


def test_placement_without_padding_is_the_crop(rng):
    # every dimension of the crop (13, 10, 7) is at least the patch: nothing to pad
    tensor, inverse = preprocess(brain_images(rng), card(patch=(8, 8, 4)))
    assert inverse.pad_before == (0, 0, 0)
    labels = numbered_labels()
    np.testing.assert_array_equal(to_network_layout(labels, inverse, tensor.shape[1:]), labels[BOX])


def test_placement_rejects_labels_on_another_grid(rng):
    tensor, inverse = preprocess(brain_images(rng), card())
    with pytest.raises(InputError, match=r"x_seg.nii.gz: shape \(20, 18, 14\) differs from the image grid"):
        to_network_layout(np.zeros((20, 18, 14), np.uint8), inverse, tensor.shape[1:], "x_seg.nii.gz")


# ---------------------------------------------------------------------------------------------- Dice

def test_dice_conventions_and_value():
    empty = np.zeros((4, 5, 6), dtype=bool)
    some = empty.copy()
    some[1:3, 1:4, 2:5] = True                     # 18 voxels
    other = empty.copy()
    other[2:4, 1:4, 2:5] = True                    # 18 voxels, 9 shared
    assert dice(empty, empty) == 1.0               # BraTS: both empty
    assert dice(some, empty) == 0.0 and dice(empty, some) == 0.0
    assert dice(some, some) == 1.0
    assert dice(some, other) == pytest.approx(2 * 9 / 36)
    assert dice(some.astype(np.uint8), other.astype(np.float32)) == dice(some, other)


def test_dice_rejects_masks_of_different_shapes():
    with pytest.raises(InputError, match="shapes"):
        dice(np.zeros((3, 4, 4, 4), bool), np.zeros((4, 4, 4), bool))


# ---------------------------------------------------------------------------------- labels and schemes

def test_schemes_and_regions_are_the_runtimes():
    assert REGIONS == ("WT", "TC", "ET")
    assert (et_label("brats2021"), et_label("brats2023")) == (4, 3)
    with pytest.raises(InputError, match="brats2023"):
        et_label("brats2019")
    # one definition: postprocess no longer carries its own copies
    assert not hasattr(postprocess, "et_label") and not hasattr(postprocess, "labels_to_regions")


# ---------------------------------------------------------------------------------------- label files

def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize("name", ["c1_seg.nii.gz", "c1-seg.nii", "C1_SEG.NII.GZ", "BraTS-GLI-00000-000-seg.nii.gz"])
def test_label_file_found_case_insensitively(tmp_path, name):
    folder = touch(tmp_path / "c1", "c1_flair.nii.gz", "c1_seg.txt", "c1_segmentation.nii.gz", name)
    (folder / "old_seg.nii.gz").mkdir()            # a folder is never the label file
    assert find_label_file(folder) == folder / name


def test_no_label_file_is_none(tmp_path):
    assert find_label_file(touch(tmp_path / "c1", "c1_flair.nii.gz", "c1_t1.nii.gz")) is None


def test_two_label_files_name_the_folder(tmp_path):
    folder = touch(tmp_path / "c1", "c1_seg.nii.gz", "c1-seg.nii.gz")
    with pytest.raises(InputError, match=r"c1: 2 label files .*c1-seg.nii.gz.*c1_seg.nii.gz"):
        find_label_file(folder)


# -------------------------------------------------------------------------------------- case folders

def case(folder: Path, cid: str, tags=("_flair", "_t1", "_t1ce", "_t2")) -> Path:
    return touch(folder / cid, *(f"{cid}{tag}.nii.gz" for tag in tags))


def test_a_case_folder_is_its_own_list(tmp_path):
    folder = case(tmp_path, "c1")
    assert case_folders(folder) == [folder]


def test_subfolders_that_are_cases_sorted(tmp_path):
    b = case(tmp_path, "b")
    a = case(tmp_path, "a", ("-t2f", "-t1n", "-t1c", "-t2w"))   # BraTS 2023 names
    case(tmp_path, "partial", ("_flair", "_t1"))                 # lacks two modalities
    touch(tmp_path / "run", "log.csv")
    touch(tmp_path, "notes_flair.nii.gz")
    assert case_folders(tmp_path) == [a, b]


def test_no_case_folders_name_the_folder(tmp_path):
    touch(tmp_path / "empty" / "sub", "x.nii.gz")
    with pytest.raises(InputError, match="empty: no BraTS case folders"):
        case_folders(tmp_path / "empty")
    with pytest.raises(InputError, match="missing: not a folder"):
        case_folders(tmp_path / "missing")
    with pytest.raises(InputError, match="not a folder"):
        case_folders(touch(tmp_path / "f", "c_flair.nii.gz") / "c_flair.nii.gz")
