"""Broken raw studies are refused with one line naming the broken series' file, before anything is segmented:
a missing series, a single slice, a localiser, a 4D file, NaNs, a wildly different field of view (read and
checked, no registration), and a series of another patient, a flipped or 180°-rotated series, a non-brain
series (refused by quality control after co-registration)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from seg_edge.errors import InputError

sitk = pytest.importorskip("SimpleITK")

import broken  # noqa: E402  (tests/preprocess/broken.py)

from seg_edge.preprocess.pipeline import RawOptions, preprocess_study  # noqa: E402
from seg_edge.preprocess.series import read_series  # noqa: E402

ORDER = broken.MODALITIES


def _refused(files: dict[str, Path], *, match: str) -> str:
    with pytest.raises(InputError) as caught:
        preprocess_study(files, ORDER, options=RawOptions())
    message = str(caught.value)
    print(f"\nrefused: {message}")
    assert "\n" not in message
    assert re.search(match, message), message
    return message


@pytest.mark.parametrize("modality", ["t2", "t1ce"])
def test_a_missing_series(raw_studies, tmp_path, modality):
    files = broken.missing(raw_studies[0], modality, tmp_path / "study")
    message = _refused(files, match=rf"no {modality} series among the files given")
    assert str(tmp_path / "study") in message


def test_a_single_slice(raw_studies, tmp_path):
    files = broken.slices(raw_studies[0], "t1", tmp_path / "study", 1)
    _refused(files, match=re.escape(str(files["t1"])) + r": a single slice \(size \(")


def test_a_localiser(raw_studies, tmp_path):
    files = broken.slices(raw_studies[0], "flair", tmp_path / "study", 3)
    _refused(files, match=re.escape(str(files["flair"])) + r": 3 slices .*, a localiser")


def test_a_4d_series(raw_studies, tmp_path):
    files = broken.four_d(raw_studies[0], "t2", tmp_path / "study")
    _refused(files, match=re.escape(str(files["t2"])) + r": a 4D image of size \(.*, 2\) \(expected one 3D t2")


def test_nans(raw_studies, tmp_path):
    files = broken.with_nans(raw_studies[0], "flair", tmp_path / "study", count=7)
    _refused(files, match=re.escape(str(files["flair"])) + r": 7 NaN or infinite voxels")


def test_a_wildly_different_field_of_view(raw_studies, tmp_path):
    files = broken.wide_fov(raw_studies[0], "t2", tmp_path / "study", factor=3)
    _refused(files, match=re.escape(str(files["t2"])) + r": field of view .* \(ratio 2\.\d\d; expected within")


def test_a_thin_slab_and_a_small_field_of_view_are_refused_alone(raw_studies, tmp_path):
    """Read alone: 12 slices of 2 mm (a slab 24 mm thick), and a 90 mm in-plane crop."""
    files = broken.slices(raw_studies[0], "t1ce", tmp_path / "slab", 12)
    with pytest.raises(InputError, match=r"a slab 24 mm thick \(expected at least 80 mm"):
        read_series("t1ce", files["t1ce"])
    image = sitk.ReadImage(str(broken.study_files(raw_studies[0])["t1"]))
    small = tmp_path / "small_t1.nii.gz"
    sitk.WriteImage(image[:, 40:85, 40:85], str(small))  # 45 voxels of 2 mm in-plane
    with pytest.raises(InputError, match=r"small_t1\.nii\.gz: field of view \d+×90×90 mm \(expected at least 100"):
        read_series("t1", small)


def test_the_same_file_twice(raw_studies):
    files = broken.study_files(raw_studies[0])
    files["t2"] = files["flair"]
    _refused(files, match=r"_flair\.nii\.gz: given as both flair and t2")


QC_REFUSAL = r"(mutual information with the reference -?\d\.\d{3} after registration \(expected below" \
             r"|rotated \d+\.\d° from the reference series \(expected at most" \
             r"|mirrored left-right it registers to the reference better" \
             r"|its head is \d+\.\d% larger or smaller than the reference series)"
FLIPPED = r"mirrored left-right it registers to the reference better \(mutual information -\d\.\d{3}, rotation " \
          r"\d+\.\d°, against -\d\.\d{3} and \d+\.\d° as given; expected the series as given to fit better: it is " \
          r"flipped left-right, or not of this head\)"


@pytest.mark.parametrize(("damage", "modality", "expected"), [
    ("wrong_patient", "t1", QC_REFUSAL), ("wrong_patient", "flair", QC_REFUSAL),
    ("flipped_left_right", "flair", FLIPPED), ("rotated_180", "t2", QC_REFUSAL), ("non_brain", "flair", QC_REFUSAL)])
def test_a_series_that_does_not_register_is_refused(raw_studies, tmp_path, damage, modality, expected):
    """Quality control after co-registration: another patient's T1 and FLAIR (index 1 of the seed), a FLAIR mirrored
    left-right and a T2 turned 180° with their headers unchanged, a bottle phantom instead of a FLAIR.
    (Another patient's FLAIR in nearly the same pose was not caught on an earlier version of the synthetic
    studies: see qc.Limits for the margins.)"""
    if damage == "wrong_patient":
        files = broken.wrong_patient(raw_studies[0], raw_studies[1], modality, tmp_path / "study")
    else:
        files = getattr(broken, damage)(raw_studies[0], modality, tmp_path / "study")
    _refused(files, match=re.escape(str(files[modality])) + ": " + expected)


def test_a_series_whose_head_has_another_size_is_refused(tmp_path):
    """The size check alone: one head has one size (qc.Limits.max_scale_change); a series scaled 3 % along one
    axis against the reference is another head, 0.5 % is the same one."""
    from seg_edge.preprocess import qc

    same = dict(metric=-1.0, brain_metric=-0.5, mirrored_metric=-0.8, mirrored_rotation_deg=5.0, rotation_deg=5.0,
                translation_mm=(1.0, 2.0, 3.0), determinant=1.0, iterations=50)
    path, limits = tmp_path / "a_flair.nii.gz", qc.Limits()
    qc.check_series(qc.SeriesQc(**same, scales=(1.005, 0.996, 1.0), scale_voxel_mm=(2, 2, 2)), path, limits)
    with pytest.raises(InputError, match=r"a_flair\.nii\.gz: its head is 3\.0% larger or smaller than the reference"
                                         r" series' along one axis \(scales 1\.000, 0\.970, 1\.010; expected within "
                                         r"2\.0% there"):
        qc.check_series(qc.SeriesQc(**same, scales=(1.0, 0.97, 1.01), scale_voxel_mm=(2, 2, 2)), path, limits)
    # along 5 mm slices a 3 % change is within a slice over 150 mm (3.3 %): not measurable, not refused
    qc.check_series(qc.SeriesQc(**same, scales=(1.0, 1.0, 1.03), scale_voxel_mm=(2, 2, 5)), path, limits)
    with pytest.raises(InputError, match=r"its head is 4\.0% larger or smaller"):
        qc.check_series(qc.SeriesQc(**same, scales=(1.0, 1.0, 1.04), scale_voxel_mm=(2, 2, 5)), path, limits)
