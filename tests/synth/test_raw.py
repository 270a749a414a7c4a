"""Synthetic raw studies (``seg-edge synth --raw``): layout, geometry of the true transforms, determinism,
truth files, and the CLI. Geometry is checked independently of the writer: SimpleITK reads each series and
resamples it through the recorded transform onto the atlas grid, where it must match the phantom's brain
(generated again here from the seed)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.card import MODALITIES
from seg_edge.cli.app import app
from seg_edge.errors import InputError

pytest.importorskip("nilearn")
sitk = pytest.importorskip("SimpleITK")

from seg_edge.synth.phantom import Phantom, make_phantom  # noqa: E402
from seg_edge.synth.raw import atlas_grid, raw_case_id, write_raw_study  # noqa: E402

SEED, INDEX, SCALE = 7, 1, 0.4  # a 96x96x62 atlas grid at 2.5 mm
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
EXPECTED_CODES = {"t1": ("R", "P", "I"), "t1ce": ("L", "A", "S"), "t2": ("L", "A", "S"), "flair": ("L", "A", "S")}
runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_raw_study(tmp_path_factory.mktemp("raw"), SEED, INDEX, scale=SCALE)


@pytest.fixture(scope="module")
def truth(study) -> dict:
    return json.loads((study / "truth" / "truth.json").read_text())


@pytest.fixture(scope="module")
def phantom():
    shape, _ = atlas_grid(SCALE)
    plain = make_phantom(np.random.default_rng([SEED, INDEX]), shape, 4, "mni152")
    # SynBraTS 'mni152' cases face backwards in world space; a raw study's brain is the same one turned 180°
    return Phantom(images=plain.images[:, ::-1, ::-1], labels=plain.labels[::-1, ::-1], has_et=plain.has_et)


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_layout_and_truth_json(study, truth):
    cid = raw_case_id(SEED, INDEX)
    assert study.name == cid == "SynRaw_0007_001"
    assert sorted(p.name for p in study.iterdir()) == sorted([f"{cid}_{m}.nii.gz" for m in MODALITIES] + ["truth"])
    names = {p.relative_to(study / "truth").as_posix() for p in (study / "truth").rglob("*") if p.is_file()}
    assert names == {"truth.json", "atlas_seg.nii.gz", "atlas_brain.nii.gz", "native_seg.nii.gz",
                     "native_brain.nii.gz"} | {f"ideal/{cid}_{m}.nii.gz" for m in MODALITIES}
    assert truth["schema"] == 1 and truth["synthetic"] is True and truth["case_id"] == cid
    assert (truth["seed"], truth["index"], truth["reference"]) == (SEED, INDEX, "t1ce")
    assert truth["label_scheme"] == "brats2021"
    assert set(truth["series"]) == set(MODALITIES)
    assert {truth["series"][m]["plane"] for m in MODALITIES} == {"sagittal", "axial"}


def test_series_grids_headers_and_orientation(study, truth):
    shapes = set()
    for m in MODALITIES:
        img = nib.load(study / f"{study.name}_{m}.nii.gz")
        entry = truth["series"][m]
        assert img.get_data_dtype() == np.int16
        assert list(img.shape) == entry["shape"] and img.ndim == 3
        shapes.add(img.shape)
        assert nib.aff2axcodes(img.affine) == EXPECTED_CODES[m]
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        np.testing.assert_allclose(img.header.get_zooms(), entry["spacing"], rtol=1e-5)
        motion = entry["motion"]
        assert np.linalg.norm(motion["rotation_deg"]) <= 6.0 + 1e-9
        assert np.linalg.norm(motion["translation_mm"]) <= 8.0 + 1e-9
        assert 0 < _data(study / f"{study.name}_{m}.nii.gz").max() <= 32767
    assert len(shapes) == 4, "every series on its own grid"
    slices = {m: truth["series"][m]["slice_mm"] for m in MODALITIES}
    assert slices["flair"] > slices["t2"] > 3 * slices["t1ce"], "2D series have thick slices"
    tilt = np.degrees(np.arccos(abs(nib.load(study / f"{study.name}_flair.nii.gz").affine[2, 2]) / slices["flair"]))
    assert 10.0 <= tilt <= 20.0 + 1e-6, "FLAIR is tilted about left-right"


def _through_truth(study: Path, modality: str, truth: dict) -> np.ndarray:
    """The series as SimpleITK reads it, resampled onto the atlas grid through the recorded transform."""
    moving = sitk.ReadImage(str(study / f"{study.name}_{modality}.nii.gz"), sitk.sitkFloat32)
    fixed = sitk.ReadImage(str(study / "truth" / "atlas_brain.nii.gz"), sitk.sitkFloat32)
    matrix = LPS @ np.asarray(truth["series"][modality]["world_from_atlas_ras"]) @ LPS  # ITK: fixed -> moving
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def _shifted(truth: dict, modality: str, shift_mm: np.ndarray) -> dict:
    moved = json.loads(json.dumps(truth))
    matrix = np.asarray(moved["series"][modality]["world_from_atlas_ras"])
    matrix[:3, 3] += shift_mm
    moved["series"][modality]["world_from_atlas_ras"] = matrix.tolist()
    return moved


@pytest.mark.parametrize("modality", MODALITIES)
def test_true_transform_puts_the_brain_where_it_is(study, truth, phantom, modality):
    brain = phantom.images[0] > 0
    expected = phantom.images[MODALITIES.index(modality)].astype(np.float64)

    def match(record: dict) -> float:
        seen = _through_truth(study, modality, record)
        return float(np.corrcoef(seen[brain], expected[brain])[0, 1])

    at_truth = match(truth)
    floor = 0.7 if truth["series"][modality]["two_d"] else 0.9  # thick slices average over 4-10 mm
    assert at_truth > floor, f"{modality}: correlation with the phantom {at_truth:.3f} through the true transform"
    step = 3.0  # mm: a wrong transform by this much must match worse
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.zeros(3)
            shift[axis] = sign * step
            assert match(_shifted(truth, modality, shift)) < at_truth, (modality, axis, sign)


def test_every_series_holds_the_whole_brain(study, truth):
    atlas = nib.load(study / "truth" / "atlas_brain.nii.gz")
    world = nib.affines.apply_affine(atlas.affine, np.argwhere(np.asarray(atlas.dataobj) > 0))
    for m in MODALITIES:
        img = nib.load(study / f"{study.name}_{m}.nii.gz")
        voxels = nib.affines.apply_affine(np.linalg.inv(img.affine) @ truth["series"][m]["world_from_atlas_ras"],
                                          world)
        assert (voxels.min(axis=0) > -0.5).all() and (voxels.max(axis=0) < np.asarray(img.shape) - 0.5).all(), m


def test_native_brain_centroid_maps_onto_the_atlas_brain(study, truth):
    atlas_img = nib.load(study / "truth" / "atlas_brain.nii.gz")
    native_img = nib.load(study / "truth" / "native_brain.nii.gz")
    ref = nib.load(study / f"{study.name}_t1ce.nii.gz")
    np.testing.assert_allclose(native_img.affine, ref.affine, atol=1e-5)
    assert native_img.shape == ref.shape
    atlas_centroid = nib.affines.apply_affine(atlas_img.affine, np.argwhere(_data(atlas_img.get_filename())).mean(0))
    native_world = nib.affines.apply_affine(native_img.affine,
                                            np.argwhere(_data(native_img.get_filename())).mean(0))
    back = nib.affines.apply_affine(np.linalg.inv(truth["series"]["t1ce"]["world_from_atlas_ras"]), native_world)
    assert np.linalg.norm(back - atlas_centroid) < 1.0
    # and the brain moved: the pose and motion are not the identity
    rotation = np.asarray(truth["series"]["t1ce"]["world_from_atlas_ras"])[:3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    assert np.linalg.norm(native_world - atlas_centroid) > 2.0 or angle > 1.0


def test_the_brain_faces_the_front_like_the_shipped_atlas(study):
    from scipy import ndimage

    from seg_edge.preprocess.atlas import SHIPPED_BRAIN

    brain = _data(study / "truth" / "atlas_brain.nii.gz") > 0
    atlas = _data(SHIPPED_BRAIN) > 0  # MNI152 on the BraTS grid, facing the front (+y in RAS)
    atlas = ndimage.zoom(atlas.astype(np.float32), np.divide(brain.shape, atlas.shape), order=1) > 0.5

    def dice(a: np.ndarray) -> float:
        return float(2 * (a & brain).sum() / (a.sum() + brain.sum()))

    facing, turned = dice(atlas), dice(atlas[::-1, ::-1])
    assert facing > 0.85 and facing > turned + 0.05, (facing, turned)


def test_truth_volumes_agree(study, phantom):
    atlas_seg, atlas_brain = _data(study / "truth" / "atlas_seg.nii.gz"), _data(study / "truth" / "atlas_brain.nii.gz")
    np.testing.assert_array_equal(atlas_seg, phantom.labels)
    np.testing.assert_array_equal(atlas_brain, (phantom.images[0] > 0).astype(np.uint8))
    atlas_voxel = np.prod(nib.load(study / "truth" / "atlas_seg.nii.gz").header.get_zooms())
    native = nib.load(study / "truth" / "native_seg.nii.gz")
    native_seg, native_voxel = np.asarray(native.dataobj), np.prod(native.header.get_zooms())
    native_brain = _data(study / "truth" / "native_brain.nii.gz")
    assert native_seg.dtype == np.uint8 and set(np.unique(native_seg)) <= {0, 1, 2, 4}
    assert abs(native_brain.sum() * native_voxel / (atlas_brain.sum() * atlas_voxel) - 1) < 0.03
    whole_atlas, whole_native = (atlas_seg > 0).sum() * atlas_voxel, (native_seg > 0).sum() * native_voxel
    assert whole_atlas > 0 and abs(whole_native / whole_atlas - 1) < 0.05
    for label in (1, 2, 4):
        a, b = (atlas_seg == label).sum() * atlas_voxel, (native_seg == label).sum() * native_voxel
        assert abs(b - a) <= 0.15 * a + 2 * atlas_voxel, (label, a, b)
    assert (native_seg[native_brain == 0] > 0).mean() < 0.01 if (native_brain == 0).any() else True


def test_ideal_case_is_a_preprocessed_case(study, phantom):
    from seg_edge.runtime.io import load_case

    case = load_case(study / "truth" / "ideal", MODALITIES)
    brain = phantom.images[0] > 0
    assert case.images.shape == (4,) + brain.shape
    np.testing.assert_allclose(case.affine, nib.load(study / "truth" / "atlas_brain.nii.gz").affine)
    for ch in range(4):
        assert (case.images[ch][~brain] == 0).all() and (case.images[ch][brain] > 0).mean() > 0.99


def test_same_seed_same_bytes_other_index_differs(study, tmp_path):
    again = write_raw_study(tmp_path, SEED, INDEX, scale=SCALE)
    files = sorted(p.relative_to(study) for p in study.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (study / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = write_raw_study(tmp_path, SEED, INDEX + 1, scale=SCALE)
    t1ce = f"{study.name}_t1ce.nii.gz"
    assert not np.array_equal(_data(study / t1ce), _data(other / f"{other.name}_t1ce.nii.gz"))


def test_bias_field_within_twenty_percent_and_optional(study, truth, tmp_path):
    for m in MODALITIES:
        scanner = truth["series"][m]["scanner"]
        assert 0.83 <= scanner["bias_min"] < 0.95 and 1.05 < scanner["bias_max"] <= 1.2, (m, scanner)
    flat = json.loads((write_raw_study(tmp_path, SEED, INDEX, scale=0.3, bias=0.0) / "truth" / "truth.json")
                      .read_text())
    assert flat["bias_spread"] == 0.0
    assert all(flat["series"][m]["scanner"]["bias_min"] == flat["series"][m]["scanner"]["bias_max"] == 1.0
               for m in MODALITIES)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InputError, match="scale 3"):
        write_raw_study(tmp_path, 0, 0, scale=3.0)
    with pytest.raises(InputError, match="ET label 2"):
        write_raw_study(tmp_path, 0, 0, scale=SCALE, et_label=2)
    with pytest.raises(InputError, match="bias spread 0.5"):
        write_raw_study(tmp_path, 0, 0, scale=SCALE, bias=0.5)
    assert not any(tmp_path.iterdir())


def test_cli_writes_n_studies(tmp_path):
    result = runner.invoke(app, ["synth", "--raw", "--out", str(tmp_path), "--n", "2", "--seed", "3",
                                 "--scale", "0.3", "--label-scheme", "brats2023"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SynRaw_0003_000", "SynRaw_0003_001"]
    for folder in tmp_path.iterdir():
        truth = json.loads((folder / "truth" / "truth.json").read_text())
        assert truth["label_scheme"] == "brats2023" and truth["scale"] == 0.3
        assert set(np.unique(_data(folder / "truth" / "atlas_seg.nii.gz"))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("args, words", [
    (["--raw", "--scale", "1.5"], ["--scale 1.5", "0.25 to 1"]),
    (["--raw", "--scale", "0.1"], ["--scale 0.1", "0.25 to 1"]),
    (["--raw", "--shape", "64,64,64"], ["--shape 64,64,64", "--raw"]),
    (["--raw", "--anatomy", "procedural"], ["--anatomy procedural", "mni152"]),
    (["--scale", "0.5"], ["--scale 0.5", "without --raw"]),
])
def test_cli_refuses_bad_options_with_one_line(tmp_path, args, words):
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--out", str(out), "--n", "1", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.output
    assert not out.exists()
