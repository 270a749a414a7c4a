"""Skull stripping (seg_edge.preprocess.skullstrip): deepbet's networks as ONNX, its pipeline in numpy.

Parity against deepbet's own torch pipeline (the independent reference) on heads that packages ship; each step
of the numpy rewrite against the torch/cc3d/fill_voids function it replaces; the mask on the input's own grid
whatever its orientation; the shipped files against their provenance; torch-free running; bad input refused."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sitk = pytest.importorskip("SimpleITK")

from seg_edge.errors import ArtifactError, InputError  # noqa: E402
from seg_edge.preprocess import skullstrip  # noqa: E402
from seg_edge.preprocess.skullstrip import (  # noqa: E402
    MODEL_DIR, bounding_box, brain_mask, normalise, resize_nearest)

PARITY_DICE = 0.99
NILEARN_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _voxels(image) -> np.ndarray:
    """An image's voxels in its file's (x, y, z) index order, as nibabel gives them."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _nilearn_head() -> Path:
    nilearn = pytest.importorskip("nilearn")
    return Path(nilearn.__file__).parent / NILEARN_T1


def _pydeface_head() -> Path:
    """pydeface's whole-head template (skull, scalp, face): the most head-like volume a package ships."""
    import importlib.util

    spec = importlib.util.find_spec("pydeface")
    if spec is None or spec.origin is None:
        pytest.skip("pydeface is not installed (its whole-head template is the test head with skull)")
    return Path(spec.origin).parent / "data" / "mean_reg2mean.nii.gz"


RAW_SEED = 2222  # one full-size synthetic raw study (seg_edge.synth.raw); about 35 s to write


@pytest.fixture(scope="module")
def raw_study(tmp_path_factory) -> Path:
    from seg_edge.synth.raw import write_raw_study

    return write_raw_study(tmp_path_factory.mktemp("raw"), RAW_SEED, 0)


@pytest.fixture(scope="module")
def raw_t1ce_mask(raw_study):
    path = raw_study / f"{raw_study.name}_t1ce.nii.gz"
    return path, brain_mask(sitk.ReadImage(str(path)), threads=2, source=str(path))


HEADS = {"nilearn-mni152-brain": "nilearn_mask", "pydeface-whole-head": None, "synthetic-raw-t1ce": "raw_t1ce_mask"}


@pytest.fixture(scope="module")
def deepbet():
    pytest.importorskip("torch")
    bet = pytest.importorskip("deepbet", reason="deepbet (dev extra) is the reference of the parity test")
    return bet.BrainExtraction(no_gpu=True)


@pytest.fixture(scope="module")
def nilearn_mask():
    """seg-edge's mask of nilearn's MNI152 T1 (computed once: the networks take seconds)."""
    path = _nilearn_head()
    return path, brain_mask(sitk.ReadImage(str(path)), threads=2, source=str(path))


# deepbet's torch pipeline on the full-size synthetic head takes ~40 s: run with -m slow (measured: Dice 0.999994)
@pytest.mark.parametrize("head", [pytest.param(h, marks=pytest.mark.slow) if h == "synthetic-raw-t1ce" else h
                                  for h in HEADS])
def test_the_mask_is_deepbets_own(head, deepbet, request):
    import nibabel as nib

    if HEADS[head] is None:
        path = _pydeface_head()
        ours = brain_mask(sitk.ReadImage(str(path)), threads=2)
    else:
        path, ours = request.getfixturevalue(HEADS[head])
    _, reference, _ = deepbet.run(nib.load(str(path)))
    reference = np.asarray(reference.dataobj) > 0
    mask = _voxels(ours.mask) > 0
    dice = _dice(mask, reference)
    print(f"\n{head}: Dice {dice:.6f} against deepbet's torch pipeline, {int((mask != reference).sum())} voxels "
          f"differ, {ours.volume_ml:.1f} mL, {ours.seconds:.1f} s")
    assert mask.shape == reference.shape
    assert dice >= PARITY_DICE


def test_a_synthetic_raw_studys_brain_is_found(raw_study, raw_t1ce_mask):
    """The acceptance figure of issue 22: Dice >= 0.95 against the true brain mask on the reference series' grid."""
    truth = sitk.ReadImage(str(raw_study / "truth" / "native_brain.nii.gz"))
    mask = raw_t1ce_mask[1].mask
    assert mask.GetSize() == truth.GetSize()
    assert np.allclose(mask.GetOrigin(), truth.GetOrigin()) and np.allclose(mask.GetDirection(), truth.GetDirection())
    dice = _dice(sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(truth) > 0)
    print(f"\n{raw_study.name} t1ce: Dice {dice:.4f} against the true brain, {raw_t1ce_mask[1].volume_ml:.0f} mL")
    assert dice >= 0.95


def test_the_mask_comes_back_on_the_inputs_grid_in_any_orientation(nilearn_mask):
    """The same head stored with its axes permuted and flipped (the same world, another voxel order) gets the
    same brain, on its own grid."""
    path, ras = nilearn_mask
    image = sitk.ReadImage(str(path))
    turned = sitk.DICOMOrient(image, "SAR")  # slices along z first, and two axes reversed
    assert turned.GetDirection() != image.GetDirection()
    result = brain_mask(turned, threads=2)
    assert result.mask.GetSize() == turned.GetSize() and result.mask.GetDirection() == turned.GetDirection()
    assert result.mask.GetPixelID() == sitk.sitkUInt8
    back = sitk.Resample(result.mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ras.mask))
    assert result.volume_ml == pytest.approx(ras.volume_ml)


def test_resizing_is_torchs_nearest_exact():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for shape_in, shape_out in [((176, 256, 256), (128, 128, 128)), ((57, 83, 36), (256, 256, 256)),
                                ((300, 7, 129), (128, 128, 128)), ((128, 128, 128), (131, 97, 255))]:
        x = rng.normal(size=shape_in).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], shape_out,
                                                   mode="nearest-exact")[0, 0].numpy()
        assert np.array_equal(resize_nearest(x, shape_out), expected), (shape_in, shape_out)


def test_normalisation_and_box_are_deepbets(deepbet):
    import torch
    from deepbet.utils import normalize

    rng = np.random.default_rng(1)
    x = (rng.gamma(2.0, 50.0, size=(128, 128, 128))).astype(np.float32)
    low, high = np.quantile(x, [0.005, 0.995]).astype(np.float32)
    expected = normalize(torch.from_numpy(x), torch.tensor(low), torch.tensor(high)).numpy()
    assert np.abs(normalise(x, low, high) - expected).max() < 1e-5
    for seed, shape in enumerate([(176, 256, 256), (266, 266, 36), (240, 240, 155), (97, 301, 128)]):
        coarse = _blob(np.random.default_rng(seed), (128, 128, 128))
        expected_box = deepbet.get_bbox_with_margin(torch.from_numpy(coarse.astype(np.float32)), shape, 0.1)
        ours = bounding_box(coarse, shape, "blob")
        assert [(b.start, b.stop) for b in ours] == [(b.start, b.stop) for b in expected_box], shape


def test_components_and_holes_are_cc3ds_and_fill_voids(deepbet):
    fill_voids = pytest.importorskip("fill_voids")
    from deepbet.utils import keep_largest_connected_component

    rng = np.random.default_rng(2)
    mask = ndimage.gaussian_filter(rng.normal(size=(60, 50, 40)), 1.5) > 0.05  # many parts, with holes
    assert np.array_equal(skullstrip._largest_component(mask, "m", "mask"),
                          keep_largest_connected_component(mask.copy()))
    assert np.array_equal(ndimage.binary_fill_holes(mask), fill_voids.fill(mask))


def test_shipped_networks_match_their_provenance():
    record = json.loads((MODEL_DIR / "PROVENANCE.json").read_text())
    for network in record["networks"].values():
        data = (MODEL_DIR / network["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == network["sha256"] and len(data) == network["bytes"]
    assert record["check"]["pipeline"]["dice_vs_deepbet"] >= PARITY_DICE
    licence = (MODEL_DIR / "LICENSE.deepbet").read_text()
    assert licence.startswith("MIT License") and "Münster" in licence


def test_it_runs_without_torch(tmp_path):
    """In a process where torch cannot be imported, a head is stripped."""
    path = _nilearn_head()
    code = ("import sys; sys.modules['torch'] = None\n"
            "import SimpleITK as sitk\n"
            "from seg_edge.preprocess.skullstrip import brain_mask\n"
            f"result = brain_mask(sitk.ReadImage({str(path)!r}), threads=2)\n"
            "print(round(result.volume_ml, 1), 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    volume, torch_loaded = run.stdout.split()
    assert float(volume) > 1000 and torch_loaded == "False"


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    return image


def _blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A lumpy ellipsoid somewhere off centre."""
    grid = np.indices(shape, dtype=np.float32)
    centre = rng.uniform(0.35, 0.65, 3) * np.asarray(shape)
    radii = rng.uniform(0.2, 0.35, 3) * np.asarray(shape)
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    return r + 0.1 * ndimage.gaussian_filter(rng.normal(size=shape), 3) < 1


@pytest.mark.parametrize("case, expected", [
    ("2d", "2D image"),
    ("vector", "3 component(s)"),
    ("slab", "size (64, 64, 3) voxels"),
    ("nan", "has 1 NaN or infinite voxels"),
    ("constant", "every voxel is 7"),
    ("one_value", "99% of the image's voxels have one value"),
    ("noise", "a brain mask of"),
])
def test_what_cannot_be_a_head_is_refused(case, expected):
    rng = np.random.default_rng(3)
    volume = rng.normal(100, 10, size=(64, 64, 64)).astype(np.float32)
    if case == "2d":
        image = sitk.GetImageFromArray(volume[0])
    elif case == "vector":
        image = sitk.GetImageFromArray(np.stack([volume] * 3, axis=-1), isVector=True)
    elif case == "slab":
        image = _image(volume[:, :, :3])
    elif case == "nan":
        volume[1, 2, 3] = np.nan
        image = _image(volume)
    elif case == "constant":
        image = _image(np.full_like(volume, 7.0))
    elif case == "one_value":
        image = _image(np.pad(np.ones((1, 1, 1), np.float32), 10))
    else:  # the networks find a small "brain" in noise; smaller than any brain
        image = _image(volume)
    with pytest.raises(InputError, match=re.escape(expected)) as info:
        brain_mask(image, source=f"RAW_{case}.nii.gz")
    assert str(info.value).startswith(f"RAW_{case}.nii.gz: ") and "\n" not in str(info.value)


def test_bad_threads_and_a_missing_model(monkeypatch, tmp_path):
    image = _image(np.random.default_rng(4).normal(size=(16, 16, 16)).astype(np.float32))
    with pytest.raises(InputError, match="threads 0"):
        brain_mask(image, threads=0)
    monkeypatch.setattr(skullstrip, "MODEL_DIR", tmp_path)
    skullstrip._session.cache_clear()
    try:
        with pytest.raises(ArtifactError, match="skull-stripping model is missing"):
            brain_mask(image, threads=1)
    finally:
        skullstrip._session.cache_clear()
