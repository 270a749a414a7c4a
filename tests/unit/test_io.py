"""Reading cases (folders, file dicts, 4D NIfTI, .npy) and writing/reading label maps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import SMALL_SHAPE
from seg_edge.errors import InputError
from seg_edge.runtime.io import Case, find_modalities, load_case, read_labels, write_volume

ORDER = ("flair", "t1", "t1ce", "t2")


def raw(case_dir: Path, modality: str) -> np.ndarray:
    return np.asarray(nib.load(case_dir / f"{case_dir.name}_{modality}.nii.gz").dataobj).astype(np.float32)


def touch_case(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


# ------------------------------------------------------------------------------------ load_case

def test_load_case_folder(case_dir):
    case = load_case(case_dir, ORDER)
    assert case.case_id == case_dir.name
    assert case.images.shape == (4,) + SMALL_SHAPE and case.images.dtype == np.float32
    for i, m in enumerate(ORDER):
        np.testing.assert_array_equal(case.images[i], raw(case_dir, m))
        assert case.sources[m].name == f"{case_dir.name}_{m}.nii.gz"
    np.testing.assert_array_equal(case.affine, nib.load(case.sources["flair"]).affine)
    assert case.spacing == (1.0, 1.0, 1.0)
    assert case.warnings == []


def test_load_case_permuted_order(case_dir):
    ref = load_case(case_dir, ORDER)
    order = ("t1ce", "t2", "flair", "t1")
    case = load_case(case_dir, order)
    assert case.images.shape == (4,) + SMALL_SHAPE and case.images.dtype == np.float32
    perm = [ORDER.index(m) for m in order]
    np.testing.assert_array_equal(case.images, ref.images[perm])
    # the modalities really differ, so the permutation is observable
    assert not np.array_equal(case.images[0], ref.images[0])


def test_load_case_file_dict(case_dir):
    files = {m: case_dir / f"{case_dir.name}_{m}.nii.gz" for m in ORDER}
    case = load_case(files, ("flair", "t2", "t1", "t1ce"))
    assert case.case_id == case_dir.name
    np.testing.assert_array_equal(case.images[1], raw(case_dir, "t2"))
    np.testing.assert_array_equal(case.images[3], raw(case_dir, "t1ce"))


def test_load_case_file_dict_id_independent_of_order(case_dir):
    files = {m: case_dir / f"{case_dir.name}_{m}.nii.gz" for m in ORDER}
    case = load_case(files, ("t2", "t1", "t1ce", "flair"))
    np.testing.assert_array_equal(case.images[0], raw(case_dir, "t2"))
    assert case.case_id == case_dir.name


def test_load_npy_and_4d_with_file_order(case_dir, tmp_path):
    ref = load_case(case_dir, ORDER)
    file_order = ("t2", "t1ce", "t1", "flair")
    stack = ref.images[[ORDER.index(m) for m in file_order]]
    np.save(tmp_path / "c.npy", stack.astype(np.int16))
    case = load_case(tmp_path / "c.npy", ORDER, file_order)
    np.testing.assert_array_equal(case.images, ref.images)
    assert case.case_id == "c" and case.images.dtype == np.float32
    np.testing.assert_array_equal(case.affine, np.eye(4))

    nib.save(nib.Nifti1Image(np.moveaxis(stack, 0, -1), ref.affine), tmp_path / "c4.nii.gz")
    case4 = load_case(tmp_path / "c4.nii.gz", ORDER, file_order)
    np.testing.assert_array_equal(case4.images, ref.images)
    assert case4.case_id == "c4"


def test_a_stack_without_its_order_is_refused_not_guessed(case_dir, tmp_path):
    """Issue 21: ``load_case`` read a stack in the model's order when none was stated."""
    ref = load_case(case_dir, ORDER)
    np.save(tmp_path / "c.npy", ref.images)
    nib.save(nib.Nifti1Image(np.moveaxis(ref.images, 0, -1), ref.affine), tmp_path / "c4.nii.gz")
    for path in (tmp_path / "c.npy", tmp_path / "c4.nii.gz"):
        with pytest.raises(InputError, match="--modalities") as caught:
            load_case(path, ORDER)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    # a file defect is still named first: the all-zero volume, by its place in the stack
    zero = ref.images.copy()
    zero[2] = 0
    np.save(tmp_path / "z.npy", zero)
    with pytest.raises(InputError, match="volume 3 is all zero"):
        load_case(tmp_path / "z.npy", ORDER)


def test_load_case_rejects_shape_mismatch(case_dir, tmp_path):
    files = {m: case_dir / f"{case_dir.name}_{m}.nii.gz" for m in ORDER}
    odd = tmp_path / "odd_t2.nii.gz"
    img = nib.load(files["t2"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), odd)
    files["t2"] = odd
    with pytest.raises(InputError, match="shape"):
        load_case(files, ORDER)


def test_anisotropic_voxels_warn(tmp_path):
    folder = tmp_path / "aniso"
    folder.mkdir()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    data = np.ones((6, 6, 4), dtype=np.int16)
    for m in ORDER:
        nib.save(nib.Nifti1Image(data, affine), folder / f"aniso_{m}.nii.gz")
    case = load_case(folder, ORDER)
    assert case.spacing == (1.0, 1.0, 3.0)
    assert len(case.warnings) == 1 and "voxel size" in case.warnings[0]


# ------------------------------------------------------------------------------- find_modalities

def test_find_modalities_t1_vs_t1ce(tmp_path):
    folder = touch_case(tmp_path / "X", ["X_t1.nii.gz", "X_t1ce.nii.gz", "X_flair.nii.gz", "X_t2.nii.gz",
                                         "X_seg.nii.gz", "notes.txt"])
    found = find_modalities(folder)
    assert {m: p.name for m, p in found.items()} == {
        "flair": "X_flair.nii.gz", "t1": "X_t1.nii.gz", "t1ce": "X_t1ce.nii.gz", "t2": "X_t2.nii.gz"}


def test_find_modalities_brats2023_names_and_plain_nii(tmp_path):
    folder = touch_case(tmp_path / "B", ["BraTS-GLI-00001-000-t1n.nii", "BraTS-GLI-00001-000-t1c.nii.gz",
                                         "BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000-T2W.NII.GZ",
                                         "BraTS-GLI-00001-000-seg.nii.gz"])
    found = find_modalities(folder)
    assert found["t1"].name.endswith("-t1n.nii")
    assert found["t1ce"].name.endswith("-t1c.nii.gz")
    assert found["flair"].name.endswith("-t2f.nii.gz")
    assert found["t2"].name.endswith("-T2W.NII.GZ")


def test_find_modalities_missing_and_ambiguous(tmp_path):
    missing = touch_case(tmp_path / "M", ["M_t1.nii.gz", "M_flair.nii.gz", "M_t2.nii.gz"])
    with pytest.raises(InputError, match="t1ce"):
        find_modalities(missing)
    dup = touch_case(tmp_path / "D", ["D_t1.nii.gz", "D_t1ce.nii.gz", "D_flair.nii.gz", "D_t2.nii.gz",
                                      "D-t1n.nii.gz"])
    with pytest.raises(InputError, match="2 files match t1"):
        find_modalities(dup)


# ---------------------------------------------------------------------------------- write_volume

def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-90.5, 120.25, -60.0]
    return affine


@pytest.mark.parametrize(("qcode", "scode"), [(1, 1), (1, 2), (0, 4), (2, 0)])
def test_write_volume_keeps_affine_and_codes(tmp_path, qcode, scode):
    affine = _oblique_affine()
    sform = affine.copy()
    sform[:3, 3] += [0.5, -0.25, 1.0]  # sform may differ from qform; both must survive
    data = np.arange(8 * 7 * 5, dtype=np.int16).reshape(8, 7, 5) + 1
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(sform, code=scode)
    src = tmp_path / "src.nii.gz"
    nib.save(img, src)
    loaded = nib.load(src)
    case = Case("c", data[None].astype(np.float32), loaded.affine, loaded.header, {"flair": src})

    labels = np.zeros(data.shape, dtype=np.uint8)
    labels[2:5, 1:4, 1:3] = 4
    labels[0, 0, 0] = 2
    out = tmp_path / "out.nii.gz"
    write_volume(labels, case, out)

    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    assert int(back.header["qform_code"]) == qcode and int(back.header["sform_code"]) == scode
    np.testing.assert_allclose(back.affine, loaded.affine, atol=1e-5)
    np.testing.assert_allclose(back.header.get_qform(), loaded.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(back.header.get_sform(), loaded.header.get_sform(), atol=1e-5)
    assert back.header.get_zooms()[:3] == pytest.approx(loaded.header.get_zooms()[:3])
    assert not list(tmp_path.glob(".out.nii.gz.*"))  # no temporary left behind


def test_write_volume_ignores_source_scaling(tmp_path):
    data = np.linspace(0, 1000, 6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    src = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(np.int16)  # nibabel stores it with a scale factor
    nib.save(img, src)
    loaded = nib.load(src)
    assert loaded.dataobj.slope != 1.0
    case = Case("c", data[None], loaded.affine, loaded.header, {"flair": src})
    labels = (np.arange(216) % 3).reshape(6, 6, 6).astype(np.uint8)
    write_volume(labels, case, tmp_path / "out.nii")
    back = nib.load(tmp_path / "out.nii")
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    assert back.dataobj.slope == 1.0 and back.dataobj.inter == 0.0


def test_write_volume_without_header(tmp_path):
    case = Case("c", np.ones((4, 3, 3, 3), np.float32), np.eye(4), None, {})
    probs = np.random.default_rng(0).random((3, 3, 3, 3)).astype(np.float32)
    write_volume(probs, case, tmp_path / "p.nii.gz")
    back = nib.load(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), probs)
    np.testing.assert_array_equal(back.affine, np.eye(4))


# ----------------------------------------------------------------------------------- read_labels

def _save(data, path, dtype=None):
    img = nib.Nifti1Image(np.asarray(data), np.eye(4))
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, path)
    return path


def test_read_labels_accepts_integer_valued_floats(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1, 1, 1], data[2, 2, 2], data[3, 3, 3] = 1.0, 2.0, 4.0
    labels, img = read_labels(_save(data, tmp_path / "f.nii.gz"), 4)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, data.astype(np.uint8))


@pytest.mark.parametrize("bad", [1.5, 0.25, np.nan])
def test_read_labels_rejects_non_integer(tmp_path, bad):
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1, 1, 1] = bad
    with pytest.raises(InputError, match="non-integer"):
        read_labels(_save(data, tmp_path / "bad.nii.gz"), 4)


def test_read_labels_rejects_unknown_labels(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.uint8)
    data[0, 0, 0] = 3
    path = _save(data, tmp_path / "l3.nii.gz")
    with pytest.raises(InputError, match="brats2023"):
        read_labels(path, 4)
    labels, _ = read_labels(path, 3)  # fine under ET=3
    assert labels[0, 0, 0] == 3
    data[0, 0, 0] = 7
    with pytest.raises(InputError, match=r"labels \[7\]"):
        read_labels(_save(data, tmp_path / "l7.nii.gz"), 4)


def test_read_labels_rejects_4d_and_missing(tmp_path):
    with pytest.raises(InputError, match="3D"):
        read_labels(_save(np.zeros((3, 3, 3, 2), np.uint8), tmp_path / "x.nii.gz"), 4)
    squeezed, _ = read_labels(_save(np.zeros((3, 3, 3, 1), np.uint8), tmp_path / "y.nii.gz"), 4)
    assert squeezed.shape == (3, 3, 3)
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "nope.nii.gz", 4)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_blocked_copy_of_fortran_ordered_voxels(dtype):
    # a NIfTI's voxels (Fortran order) into a C-ordered slot, the shape not a multiple of the block
    from seg_edge.runtime.nifti import COPY_BLOCK, copy_into

    src = np.asfortranarray(np.arange(75 * 41 * 23, dtype=np.float64).reshape(75, 41, 23) % 3001).astype(dtype)
    assert src.shape[0] > 2 * COPY_BLOCK[0] and src.shape[1] % COPY_BLOCK[1]
    out = np.empty((2,) + src.shape, dtype=np.float32)
    copy_into(out[1], src)
    np.testing.assert_array_equal(out[1], src.astype(np.float32))
    assert out[1].flags.c_contiguous
