"""Transform files and matrices (seg_edge.preprocess.transforms): what is written is what ITK's reader (the one
3D Slicer and ITK-SNAP use) reads, in the file layout those programs parse; LPS/RAS and composition checked
against independent computations (nibabel's affine, point-by-point application)."""

from __future__ import annotations

import re

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

from seg_edge.errors import InputError  # noqa: E402
from seg_edge.preprocess.atlas import grid_affine_ras  # noqa: E402
from seg_edge.preprocess.transforms import (  # noqa: E402
    compose, from_matrix_lps, invert, lps_to_ras, matrix_lps, ras_to_lps, read_transform, write_transform)

RNG = np.random.default_rng(22)
POINTS = RNG.uniform(-120.0, 120.0, size=(50, 3))


def _euler() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform((12.0, -30.0, 41.0), 0.09, -0.06, 0.14, (4.0, -7.5, 2.25))


def _mapped(transform: sitk.Transform) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in POINTS])


def test_the_matrix_maps_points_as_the_transform_does():
    for transform in (_euler(), sitk.Similarity3DTransform(1.07, (0.6, 0.0, 0.8), 0.3, (1.0, 2.0, 3.0), (5, 6, 7)),
                      sitk.TranslationTransform(3, (1.0, -2.0, 3.0))):
        m = matrix_lps(transform)
        np.testing.assert_allclose(POINTS @ m[:3, :3].T + m[:3, 3], _mapped(transform), atol=1e-9)
        np.testing.assert_allclose(_mapped(from_matrix_lps(m, centre=(9.0, 8.0, 7.0))), _mapped(transform),
                                   atol=1e-9)


def test_a_written_file_is_itks_affine_text_and_reads_back_to_the_same_map(tmp_path):
    transform = _euler()
    path = write_transform(transform, tmp_path / "flair_from_t1ce.tfm")
    text = path.read_text()
    # the layout ITK's TransformFileReader parses (and so Slicer and ITK-SNAP): parsed here by hand, not by ITK
    assert text.startswith("#Insight Transform File V1.0")
    assert re.search(r"^Transform: AffineTransform_double_3_3$", text, re.M)
    params = np.array(re.search(r"^Parameters: (.*)$", text, re.M).group(1).split(), dtype=float)
    centre = np.array(re.search(r"^FixedParameters: (.*)$", text, re.M).group(1).split(), dtype=float)
    assert params.shape == (12,) and centre.shape == (3,)
    linear, translation = params[:9].reshape(3, 3), params[9:]
    by_hand = (POINTS - centre) @ linear.T + centre + translation  # ITK: x → A (x - c) + c + t
    np.testing.assert_allclose(by_hand, _mapped(transform), atol=1e-9)
    np.testing.assert_allclose(centre, transform.GetCenter())
    back = read_transform(path)
    np.testing.assert_allclose(_mapped(back), _mapped(transform), atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["flair_from_t1ce.tfm"]  # no temporary file left


def test_a_written_transform_resamples_exactly_as_the_original(tmp_path):
    """The file keeps ITK's direction (fixed point → moving point): resampling through what was read gives the
    same image as through the transform itself, voxel for voxel."""
    moving = sitk.GetImageFromArray(RNG.normal(size=(20, 24, 28)).astype(np.float32))
    moving.SetSpacing((2.0, 1.5, 1.0))
    moving.SetOrigin((-14.0, -18.0, -10.0))
    fixed = sitk.Image((30, 30, 30), sitk.sitkFloat32)
    fixed.SetOrigin((-15.0, -15.0, -15.0))
    transform = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, 0.1, -0.08, (1.5, -2.0, 0.5))
    read = read_transform(write_transform(transform, tmp_path / "moving_from_fixed.tfm"))
    direct = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    via_file = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, read, sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(via_file, direct, atol=1e-5)
    assert np.abs(direct).sum() > 0


def test_lps_and_ras_agree_with_nibabel(tmp_path):
    """The RAS affine computed from SimpleITK's LPS geometry is the affine nibabel reads from the same file."""
    image = sitk.Image((10, 12, 14), sitk.sitkInt16)
    image.SetSpacing((0.9, 0.9, 5.0))
    image.SetOrigin((-40.0, 30.0, -20.0))
    tilt = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.25, 0.0, 0.1)
    image.SetDirection(tilt.GetMatrix())
    path = tmp_path / "tilted.nii.gz"
    sitk.WriteImage(image, str(path))
    np.testing.assert_allclose(grid_affine_ras(image), nib.load(path).affine, atol=1e-4)
    # a shift 5 mm to the patient's left is +5 in LPS x and −5 in RAS x
    shift = np.eye(4)
    shift[0, 3] = 5.0
    assert lps_to_ras(shift)[0, 3] == -5.0
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(matrix_lps(_euler()))), matrix_lps(_euler()))


def test_compose_applies_right_to_left_and_invert_undoes():
    series_from_reference = _euler()
    reference_from_atlas = from_matrix_lps(np.array([[1.05, 0.02, 0.0, 3.0], [-0.01, 0.97, 0.03, -4.0],
                                                     [0.0, 0.02, 1.01, 6.0], [0.0, 0.0, 0.0, 1.0]]),
                                           centre=(1.0, 2.0, 3.0))
    series_from_atlas = compose(series_from_reference, reference_from_atlas)
    step_by_step = np.array([series_from_reference.TransformPoint(reference_from_atlas.TransformPoint(
        tuple(float(v) for v in p))) for p in POINTS])
    np.testing.assert_allclose(_mapped(series_from_atlas), step_by_step, atol=1e-9)
    assert series_from_atlas.GetCenter() == (1.0, 2.0, 3.0)
    back = compose(invert(series_from_atlas), series_from_atlas)
    np.testing.assert_allclose(_mapped(back), POINTS, atol=1e-9)


def test_a_composite_file_reads_as_one_affine(tmp_path):
    path = tmp_path / "chain.tfm"
    chain = sitk.CompositeTransform([_euler(), sitk.TranslationTransform(3, (1.0, 2.0, 3.0))])
    sitk.WriteTransform(chain, str(path))
    read = read_transform(path)
    assert read.GetName() == "AffineTransform"
    np.testing.assert_allclose(_mapped(read), _mapped(chain), atol=1e-9)


def test_bad_files_and_values_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"out\.mat: suffix '\.mat' \(expected \.tfm or \.txt"):
        write_transform(_euler(), tmp_path / "out.mat")
    with pytest.raises(InputError, match=r"missing\.tfm: no such transform file"):
        read_transform(tmp_path / "missing.tfm")
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("not a transform\n")
    with pytest.raises(InputError, match=r"garbage\.tfm: cannot be read as an ITK transform"):
        read_transform(garbage)
    with pytest.raises(InputError, match=r"nowhere.*cannot be written"):
        write_transform(_euler(), tmp_path / "nowhere" / "x.tfm")
    field = sitk.Image((4, 4, 4), sitk.sitkVectorFloat64, 3)
    with pytest.raises(InputError, match="DisplacementFieldTransform.*expected a linear transform"):
        matrix_lps(sitk.DisplacementFieldTransform(field))
    with pytest.raises(InputError, match=r"expected a finite 4x4 affine"):
        from_matrix_lps(np.eye(3))
    with pytest.raises(InputError, match="compose"):
        compose()
