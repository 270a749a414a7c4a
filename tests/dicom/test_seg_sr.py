"""DICOM SEG (BINARY) and SR (TID 1500) out: read back with highdicom itself, validated with dicom3tools'
dciodvfy, refused in one line when the input is wrong, never a partial file."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")

from mr_series_fixture import mr_series  # noqa: E402

from seg_edge.dicom.seg import SEGMENTS, frame_order, frames_from_nifti, labels_from_seg, write_seg  # noqa: E402
from seg_edge.dicom.sr import write_sr  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402

SHA = "0123456789abcdef" * 4


# Fixtures here, not in a tests/dicom/conftest.py: the tests import tests/conftest.py as ``conftest`` and a second
# module of that name in this folder shadows it (tests/unit/test_io.py's import fails when both are collected).
@pytest.fixture
def series() -> list:
    """20 tilted axial 64x64 MR slices in slice order (pydicom Datasets)."""
    return mr_series()


@pytest.fixture
def series_on_disk(tmp_path: Path, series) -> list:
    """The series written to files and read back, as a caller that read a study from disk holds it."""
    out = []
    for i, ds in enumerate(series):
        path = tmp_path / "mr" / f"IM{i:04d}"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        out.append(pydicom.dcmread(path))
    return out
MODEL = dict(model_name="seg-edge-edge", model_version="0.1.0+card3", model_sha256=SHA)


def tumour(shape: tuple[int, int, int], et: int, seed: int = 1) -> np.ndarray:
    """A label map with all three tissues: oedema around a core, enhancing rim inside, noise at the edge so
    that the frames differ from each other."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r = np.sqrt(((z - 9) * 3.0) ** 2 + ((y - 30) * 0.9) ** 2 + ((x - 34) * 0.8) ** 2)
    r += rng.normal(0, 0.8, shape)
    labels = np.zeros(shape, np.uint8)
    labels[r < 16] = 2
    labels[r < 10] = et
    labels[r < 6] = 1
    return labels


def _counts(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


@pytest.mark.parametrize("scheme,et", [("brats2021", 4), ("brats2023", 3)])
def test_seg_reads_back_to_the_same_labels_with_highdicom(tmp_path, series_on_disk, scheme, et):
    labels = tumour((20, 64, 64), et)
    assert set(_counts(labels)) == {0, 1, 2, et}
    write_seg(labels, series_on_disk, label_scheme=scheme, out=tmp_path / "seg.dcm", **MODEL)

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    # highdicom's own reading: one plane per segment on the source instances, in the order asked for
    planes = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series_on_disk],
                                               segment_numbers=[1, 2, 3])
    back = np.zeros(labels.shape, np.uint8)
    for k, value in enumerate((1, 2, et)):
        back[planes[..., k] > 0] = value
    assert (planes.sum(axis=-1) <= 1).all()
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(labels_from_seg(seg, series_on_disk, label_scheme=scheme), labels)


def test_seg_describes_its_segments_model_and_patient(tmp_path, series_on_disk):
    write_seg(tumour((20, 64, 64), 4), series_on_disk, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    source = series_on_disk[0]
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                "FrameOfReferenceUID"):
        assert seg[key].value == source[key].value, key
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SeriesDescription == "seg-edge seg-edge-edge" and seg.SeriesNumber == source.SeriesNumber + 1000
    assert seg.Modality == "SEG" and seg.NumberOfFrames == 3 * 20
    coded = [(s.SegmentNumber, s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
              s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentAlgorithmType) for s in seg.SegmentSequence]
    assert coded == [(1, "49755003", "SCT", "6574001", "AUTOMATIC"), (2, "49755003", "SCT", "79654002", "AUTOMATIC"),
                     (3, "49755003", "NCIt", "C113842", "AUTOMATIC")]
    for item in seg.SegmentSequence:
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("seg-edge-edge", "0.1.0+card3")
        assert algo.AlgorithmParameters == f"sha256={SHA}"
        assert item.AnatomicRegionSequence[0].CodeValue == "12738006"


def test_frame_i_is_the_source_instance_i_as_given(tmp_path):
    """Frames follow the caller's order: the SEG frame holding labels[i] sits at source_datasets[i]'s position
    and derives from that instance (checked on the SEG's own per-frame geometry, not through highdicom)."""
    ordered = mr_series(seed=3)
    shuffled = ordered[:]
    random.Random(5).shuffle(shuffled)
    labels = np.zeros((20, 64, 64), np.uint8)
    for i, ds in enumerate(shuffled):
        labels[i, :ds.InstanceNumber, 0] = 2  # the instance's number written into its own frame
    write_seg(labels, shuffled, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    by_uid = {ds.SOPInstanceUID: ds for ds in ordered}
    frames = seg.pixel_array
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber != 2:
            continue
        source = by_uid[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in source.ImagePositionPatient])
        assert int(frame[:, 0].sum()) == source.InstanceNumber
    assert [ds.SOPInstanceUID for ds in frame_order(shuffled)] == [ds.SOPInstanceUID for ds in ordered]


@pytest.fixture
def nifti_of_labels(tmp_path):
    """The series with a random label map as its pixels, files in a shuffled order, converted to NIfTI by
    SimpleITK's GDCM series reader (an independent conversion) and read with nibabel; returns the series in
    slice order, its labels as (frames, rows, cols), and the NIfTI's array and affine."""
    sitk = pytest.importorskip("SimpleITK")
    nib = pytest.importorskip("nibabel")
    series = mr_series(seed=6)
    labels = np.random.default_rng(2).integers(0, 5, (20, 64, 64)).astype(np.int16)
    names = list(range(20))
    random.Random(3).shuffle(names)
    for ds, name, frame in zip(series, names, labels):
        ds.PixelData = frame.tobytes()
        ds.save_as(tmp_path / f"x{name:03d}.dcm", enforce_file_format=True)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path))
    sitk.WriteImage(sitk.ReadImage(files), str(tmp_path / "labels.nii.gz"))
    image = nib.load(tmp_path / "labels.nii.gz")
    return series, labels, np.asarray(image.dataobj), image.affine


def test_a_nifti_label_map_lands_on_the_frames_it_came_from(nifti_of_labels):
    series, labels, xyz, affine = nifti_of_labels
    assert xyz.shape == (64, 64, 20)  # x along the rows' direction, z across the slices
    np.testing.assert_array_equal(frames_from_nifti(xyz, affine, series), labels)
    order = [7, 3, *(i for i in range(20) if i not in (7, 3))]
    np.testing.assert_array_equal(frames_from_nifti(xyz, affine, [series[i] for i in order]), labels[order])


@pytest.mark.parametrize("change,expected", [
    # half a column (0.4 mm of 0.8) to the side
    (lambda xyz, a: (xyz, a + np.c_[np.zeros((4, 3)), [0.4, 0, 0, 0]]), "0.500 voxel off"),
    (lambda xyz, a: (xyz[:, :, 1:], a), "expected 81920 voxels"),
    # the grid one slice further on: the last frame falls outside it
    (lambda xyz, a: (xyz, a + np.c_[np.zeros((4, 3)), a[:, 2]]), "all inside: False"),
])
def test_a_nifti_of_another_grid_is_refused(nifti_of_labels, change, expected):
    series, _, xyz, affine = nifti_of_labels
    xyz, affine = change(xyz, affine)
    with pytest.raises(InputError, match="^label map: ") as caught:
        frames_from_nifti(xyz, affine, series)
    assert expected in str(caught.value)


def test_an_empty_label_map_keeps_all_three_segments(tmp_path, series):
    write_seg(np.zeros((20, 64, 64), np.uint8), series, label_scheme="brats2023", out=tmp_path / "seg.dcm", **MODEL)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert not labels_from_seg(seg, series, label_scheme="brats2023").any()


def _bad_other_series(series):
    other = mr_series(seed=2)
    return series[:10] + other[10:]


def _bad_orientation(series):
    series[4].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return series


def _bad_multiframe(series):
    series[0].NumberOfFrames = 4
    return series


@pytest.mark.parametrize("change,kwargs,expected", [
    (None, {"labels": np.zeros((20, 64, 63), np.uint8)}, "shape (20, 64, 63)"),
    (None, {"labels": np.zeros((64, 64, 20), np.uint8)}, "expected (frames, rows, cols) = (20, 64, 64)"),
    (None, {"labels": np.full((20, 64, 64), 3, np.uint8)}, "values [3] (expected [0, 1, 2, 4]"),
    (None, {"labels": np.zeros((20, 64, 64), np.float32)}, "dtype float32"),
    (None, {"label_scheme": "brats2019"}, "label scheme 'brats2019'"),
    (None, {"model_sha256": "abc"}, "model sha256 'abc'"),
    (None, {"model_name": "x" * 65}, "expected 1-64 characters"),
    (_bad_other_series, {}, "SeriesInstanceUID"),
    (_bad_orientation, {}, "ImageOrientationPatient [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] differs"),
    (_bad_multiframe, {}, "NumberOfFrames 4"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, series_on_disk, change, kwargs, expected):
    source = change(series_on_disk) if change else series_on_disk
    args = dict(labels=np.zeros((20, 64, 64), np.uint8), label_scheme="brats2021", **MODEL)
    args.update(kwargs)
    with pytest.raises(InputError) as caught:
        write_seg(args.pop("labels"), source, out=tmp_path / "seg.dcm", **args)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert "Doe" not in message and "PAT-0001" not in message  # never the patient's name or ID
    assert list(tmp_path.glob("*.dcm")) == [] and list(tmp_path.glob(".seg-edge-*")) == []


def test_a_failed_write_leaves_no_file(tmp_path, series, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", fail)
    with pytest.raises(OSError):
        write_seg(tumour((20, 64, 64), 4), series, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    assert list(tmp_path.iterdir()) == []


def _volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    ncr, ed, et = (float(np.count_nonzero(labels == v)) * voxel_ml for v in (1, 2, 4))
    return {"WT": ncr + ed + et, "TC": ncr + et, "ET": et, "NCR": ncr, "ED": ed}


@pytest.fixture
def seg_and_volumes(tmp_path, series_on_disk):
    labels = tumour((20, 64, 64), 4)
    seg = write_seg(labels, series_on_disk, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    return seg, _volumes(labels, 0.9 * 0.8 * 3.0 / 1000)


def test_sr_holds_each_region_volume_and_references_the_seg_segments(tmp_path, series_on_disk, seg_and_volumes):
    seg, volumes = seg_and_volumes
    write_sr(volumes, seg, series_on_disk, out=tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.PatientID == series_on_disk[0].PatientID and sr.StudyInstanceUID == seg.StudyInstanceUID
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    found, segments = {}, {}
    for group in report.get_volumetric_roi_measurement_groups():
        region = group.tracking_identifier.split(":")[0]
        (measurement,) = group.get_measurements()
        found[region] = (measurement.name.value, measurement.value, measurement.unit.value)
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        segments[region] = group.referenced_segment.referenced_segment_numbers
    for group in report.get_image_measurement_groups():
        (measurement,) = group.get_measurements()
        found[group.tracking_identifier.split(":")[0]] = (measurement.name.value, measurement.value,
                                                          measurement.unit.value)
    assert set(found) == {"WT", "TC", "ET", "NCR", "ED"}
    for region, (code, value, unit) in found.items():
        assert (code, unit) == ("118565006", "mL")
        assert value == pytest.approx(volumes[region], abs=1e-6)
    assert segments == {s.tissue: [s.number] for s in SEGMENTS}
    assert volumes["WT"] > volumes["TC"] > volumes["ET"] > 0


@pytest.mark.parametrize("change,expected", [
    (lambda v: v.pop("ED"), "regions ['ET', 'NCR', 'TC', 'WT']"),
    (lambda v: v.update(WT=v["WT"] + 1.0), "WT = "),
    (lambda v: v.update(ET=float("nan")), "ET = nan"),
    (lambda v: v.update(NCR=-1.0, TC=v["ET"] - 1.0, WT=v["ED"] + v["ET"] - 1.0), "NCR = -1.0"),
])
def test_sr_refuses_volumes_that_do_not_add_up(tmp_path, series_on_disk, seg_and_volumes, change, expected):
    seg, volumes = seg_and_volumes
    change(volumes)
    with pytest.raises(InputError, match="^volumes: ") as caught:
        write_sr(volumes, seg, series_on_disk, out=tmp_path / "sr.dcm")
    assert expected in str(caught.value)
    assert not (tmp_path / "sr.dcm").exists()


def test_sr_refuses_a_seg_of_another_series(tmp_path, seg_and_volumes):
    seg, volumes = seg_and_volumes
    with pytest.raises(InputError, match="does not reference 20 of the 20 source instances"):
        write_sr(volumes, seg, mr_series(seed=4), out=tmp_path / "sr.dcm")


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy is not installed (Debian: apt-get install dicom3tools)")
def test_dciodvfy_reports_no_error_on_the_seg_and_the_sr(tmp_path, series_on_disk, seg_and_volumes):
    seg, volumes = seg_and_volumes
    write_sr(volumes, seg, series_on_disk, out=tmp_path / "sr.dcm")
    for path in (tmp_path / "seg.dcm", tmp_path / "sr.dcm"):
        errors, warnings = _dciodvfy(path)
        print(f"dciodvfy {path.name}: {len(errors)} errors, {len(warnings)} warnings", *warnings, sep="\n  ")
        assert errors == [], errors
    # patient, study and frame of reference agree across the source, the SEG and the SR (dicom3tools' dcentvfy)
    if shutil.which("dcentvfy"):
        files = [str(tmp_path / "seg.dcm"), str(tmp_path / "sr.dcm"), *(str(ds.filename) for ds in series_on_disk)]
        result = subprocess.run(["dcentvfy", *files], capture_output=True, text=True, timeout=60)
        assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    # the check can fail: a SEG without its study's UID is an error to dciodvfy
    broken = pydicom.dcmread(tmp_path / "seg.dcm")
    del broken.StudyInstanceUID
    broken.save_as(tmp_path / "broken.dcm")
    assert any("StudyInstanceUID" in line for line in _dciodvfy(tmp_path / "broken.dcm")[0])


def test_writing_imports_no_torch():
    code = ("import sys; import seg_edge.dicom.seg, seg_edge.dicom.sr; "
            "print(sorted(m for m in ('torch', 'monai', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
