"""Synthetic DICOM studies (``seg_edge.synth.dicom``, ``seg-edge synth --raw --dicom``).

Each series is read back two independent ways and compared with the raw study's NIfTI: SimpleITK's GDCM reader
(its own slice sorting and geometry) and pydicom (every pixel's patient position from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, or for enhanced MR from the frames' PlanePositionSequence and
PlaneOrientationSequence, mapped into the NIfTI's voxel grid through its affine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.errors import InputError

pytest.importorskip("nilearn")
pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from seg_edge.synth.dicom import PATIENT_NAME, write_dicom_study  # noqa: E402
from seg_edge.synth.dicom.geometry import to_stack  # noqa: E402
from seg_edge.synth.raw import raw_case_id, write_raw_study  # noqa: E402

SEED, INDEX, SCALE = 7, 1, 0.4
ROLES = ("t1", "t1ce", "t2", "flair")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
TOLERANCE_MM = 1e-3
runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_raw_study(tmp_path_factory.mktemp("raw"), SEED, INDEX, scale=SCALE)


@pytest.fixture(scope="module")
def classic(raw, tmp_path_factory) -> Path:
    return write_dicom_study(raw, tmp_path_factory.mktemp("classic"), vendor="siemens", seed=3)


@pytest.fixture(scope="module")
def enhanced(raw, tmp_path_factory) -> Path:
    return write_dicom_study(raw, tmp_path_factory.mktemp("enhanced"), vendor="philips", enhanced=True, seed=3)


def _truth(study: Path) -> dict:
    return json.loads((study.parent / "dicom_truth.json").read_text())


def _entry(study: Path, role: str) -> dict:
    return next(e for e in _truth(study)["series"] if e["role"] == role)


def _files(study: Path, role: str) -> list[Path]:
    return sorted((study / _entry(study, role)["folder"]).glob("*.dcm"))


def _nifti(raw: Path, role: str) -> nib.Nifti1Image:
    return nib.load(raw / f"{raw.name}_{role}.nii.gz")


def _check_pixels_land_on_nifti(nifti: nib.Nifti1Image, pixels: np.ndarray, position: list, orientation: list,
                                spacing: list) -> None:
    """Every pixel of one slice, placed in the patient by DICOM's own formula, sits on a NIfTI voxel centre
    (within TOLERANCE_MM) that holds the same value."""
    rows, cols = pixels.shape
    r, c = np.mgrid[0:rows, 0:cols].reshape(2, -1)
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    lps = np.array(position, float)[:, None] + np.outer(row_dir, c * float(spacing[1])) \
        + np.outer(col_dir, r * float(spacing[0]))
    ras = LPS[:3, :3] @ lps
    voxel = np.linalg.inv(nifti.affine) @ np.vstack([ras, np.ones(ras.shape[1])])
    index = np.round(voxel[:3]).astype(int)
    off_mm = np.linalg.norm(nifti.affine[:3, :3] @ (voxel[:3] - index), axis=0)
    assert off_mm.max() < TOLERANCE_MM
    data = np.asarray(nifti.dataobj)
    assert (index >= 0).all() and (index < np.array(data.shape)[:, None]).all()
    assert np.array_equal(data[tuple(index)], pixels.reshape(-1))


def _sitk_matches(image, nifti: nib.Nifti1Image) -> None:
    """SimpleITK's volume (LPS) and the NIfTI (RAS), both turned to the closest canonical orientation: the same
    voxels, and every corner of the grid within TOLERANCE_MM."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    read = nib.as_closest_canonical(nib.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS @ affine))
    want = nib.as_closest_canonical(nifti)
    assert read.shape == want.shape
    assert np.array_equal(np.asarray(read.dataobj), np.asarray(want.dataobj))
    corners = np.array([[i, j, k, 1] for i in (0, want.shape[0] - 1) for j in (0, want.shape[1] - 1)
                        for k in (0, want.shape[2] - 1)]).T
    assert np.abs(read.affine @ corners - want.affine @ corners).max() < TOLERANCE_MM


def test_one_patient_study_and_frame_of_reference(classic):
    truth = _truth(classic)
    uids = {"study": set(), "frame": set(), "series": set(), "patient": set(), "sop": set()}
    for path in classic.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids["study"].add(ds.StudyInstanceUID)
        uids["frame"].add(ds.FrameOfReferenceUID)
        uids["series"].add(ds.SeriesInstanceUID)
        uids["patient"].add((str(ds.PatientName), ds.PatientID))
        uids["sop"].add(ds.SOPClassUID)
    assert uids["study"] == {truth["study_instance_uid"]}
    assert uids["frame"] == {truth["frame_of_reference_uid"]}
    assert uids["patient"] == {(PATIENT_NAME, truth["patient"]["id"])} and "SYNTHETIC" in truth["patient"]["id"]
    assert uids["sop"] == {pydicom.uid.MRImageStorage}
    assert uids["series"] == {e["series_instance_uid"] for e in truth["series"]}
    assert sorted(e["role"] for e in truth["series"]) == sorted(ROLES + ("localizer", "dwi", "adc", "mpr"))
    assert set(truth["modalities"]) == set(ROLES)
    for role in ROLES:
        ds = pydicom.dcmread(_files(classic, role)[0], stop_before_pixels=True)
        assert ds.SeriesInstanceUID == truth["modalities"][role]
    times = [pydicom.dcmread(next((classic / e["folder"]).glob("*.dcm")), stop_before_pixels=True).SeriesTime
             for e in sorted(truth["series"], key=lambda e: e["series_number"])]
    assert times == sorted(set(times))  # one series after another, in series-number order


@pytest.mark.parametrize("role", ROLES)
def test_classic_series_read_by_gdcm_equal_the_nifti(raw, classic, role):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(classic / _entry(classic, role)["folder"])))
    _sitk_matches(reader.Execute(), _nifti(raw, role))


@pytest.mark.parametrize("role", ROLES)
def test_classic_slices_read_by_pydicom_sit_on_the_nifti_voxels(raw, classic, role):
    nifti = _nifti(raw, role)
    files = _files(classic, role)
    assert len(files) == len(set(files)) == _entry(classic, role)["files"]
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.dtype == np.int16
        _check_pixels_land_on_nifti(nifti, ds.pixel_array, ds.ImagePositionPatient, ds.ImageOrientationPatient,
                                    ds.PixelSpacing)
    voxels = sum(pydicom.dcmread(p).pixel_array.size for p in files)
    assert voxels == np.prod(nifti.shape)  # every voxel written once (each slice checked above, none twice)


@pytest.mark.parametrize("role", ROLES)
def test_enhanced_frames_sit_on_the_nifti_voxels(raw, enhanced, role):
    nifti = _nifti(raw, role)
    files = _files(enhanced, role)
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    frames = ds.pixel_array
    assert frames.shape[0] == ds.NumberOfFrames == nifti.shape[_slice_axis(nifti, ds)]
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    for frame, groups in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        _check_pixels_land_on_nifti(nifti, frame, groups.PlanePositionSequence[0].ImagePositionPatient,
                                    orientation, spacing)
    _sitk_matches(sitk.ReadImage(str(files[0])), nifti)


def _slice_axis(nifti: nib.Nifti1Image, ds) -> int:
    orientation = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                           .ImageOrientationPatient, float)
    normal = LPS[:3, :3] @ np.cross(orientation[:3], orientation[3:])
    units = nifti.affine[:3, :3] / np.linalg.norm(nifti.affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(normal @ units)))


def test_tilted_flair_and_sagittal_t1_kept(classic):
    flair = pydicom.dcmread(_files(classic, "flair")[0], stop_before_pixels=True)
    row, col = np.array(flair.ImageOrientationPatient[:3], float), np.array(flair.ImageOrientationPatient[3:], float)
    tilt = np.degrees(np.arccos(abs(np.cross(row, col)[2])))
    assert 10.0 - 1e-6 <= tilt <= 20.0 + 1e-6  # the raw writer's FLAIR tilt range
    t1 = pydicom.dcmread(_files(classic, "t1")[0], stop_before_pixels=True)
    normal = np.cross(np.array(t1.ImageOrientationPatient[:3], float), np.array(t1.ImageOrientationPatient[3:], float))
    assert abs(normal[0]) > 0.99  # slices stacked left-right: sagittal


def _tags(study: Path, role: str):
    return pydicom.dcmread(_files(study, role)[0], stop_before_pixels=True)


def test_mr_tags_per_sequence(classic):
    t1, t1ce, t2, flair = (_tags(classic, r) for r in ROLES)
    for ds in (t1, t1ce, t2, flair):
        assert list(ds.ImageType[:2]) == ["ORIGINAL", "PRIMARY"]
        assert ds.PatientPosition == "HFS" and ds.Manufacturer == "SIEMENS" and ds.Modality == "MR"
        assert float(ds.EchoTime) > 0 and float(ds.RepetitionTime) > 0
    assert t1.MRAcquisitionType == t1ce.MRAcquisitionType == "3D"
    assert t2.MRAcquisitionType == flair.MRAcquisitionType == "2D"
    assert "IR" in flair.ScanningSequence and float(flair.InversionTime) >= 2000
    assert float(flair.RepetitionTime) > float(t2.RepetitionTime) > float(t1.RepetitionTime)
    assert float(t2.EchoTime) > 60 > float(t1.EchoTime)
    assert "InversionTime" not in t2 and float(t1.InversionTime) < 1500  # an MPRAGE's short TI, not a FLAIR's
    assert t1ce.ContrastBolusAgent and all("ContrastBolusAgent" not in ds for ds in (t1, t2, flair))
    assert float(t1.SliceThickness) == pytest.approx(float(t1.SpacingBetweenSlices))


def test_extra_series(classic):
    localizer = [pydicom.dcmread(p, stop_before_pixels=True) for p in _files(classic, "localizer")]
    assert 3 <= len(localizer) <= 5 and all("LOCALIZER" in ds.ImageType for ds in localizer)
    assert len({tuple(ds.ImageOrientationPatient) for ds in localizer}) == 3  # three planes
    dwi, adc, mpr = (_tags(classic, r) for r in ("dwi", "adc", "mpr"))
    assert dwi.ImageType[0] == "ORIGINAL" and "DIFFUSION" in dwi.ImageType and dwi.ScanningSequence == "EP"
    assert adc.ImageType[0] == "DERIVED" and "ADC" in adc.ImageType
    assert mpr.ImageType[0] == "DERIVED" and mpr.ContrastBolusAgent
    normal = np.cross(np.array(mpr.ImageOrientationPatient[:3], float),
                      np.array(mpr.ImageOrientationPatient[3:], float))
    assert abs(normal[1]) > 0.99  # coronal reformat of the axial T1ce


@pytest.mark.parametrize(("vendor", "flair", "t1", "t1ce"), [
    ("siemens", "t2_tirm_tra_dark-fluid", "t1_mprage_sag_p2_iso", "t1_mprage_tra_Gd"),
    ("ge", "Ax T2 FLAIR", "Sag 3D T1 BRAVO", "Ax 3D T1 BRAVO +C"),
    ("philips", "FLAIR_longTR", "sT1W_3D_TFE", "T1W_3D_TFE +GD"),
])
def test_vendor_style_descriptions(raw, tmp_path, vendor, flair, t1, t1ce):
    study = write_dicom_study(raw, tmp_path, vendor=vendor, extras=False, seed=3)
    names = {role: _tags(study, role).SeriesDescription for role in ROLES}
    assert (names["flair"], names["t1"], names["t1ce"]) == (flair, t1, t1ce)
    assert sorted(e["role"] for e in _truth(study)["series"]) == sorted(ROLES)


def test_deterministic(raw, classic, tmp_path):
    again = write_dicom_study(raw, tmp_path / "again", vendor="siemens", seed=3)
    files = sorted(p.relative_to(classic) for p in classic.rglob("*.dcm"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.dcm"))
    assert all((classic / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert _truth(classic) == _truth(again)
    other = write_dicom_study(raw, tmp_path / "other", vendor="siemens", extras=False, seed=4)
    assert _truth(other)["study_instance_uid"] != _truth(classic)["study_instance_uid"]
    assert not set(_truth(other)["modalities"].values()) & set(_truth(classic)["modalities"].values())


def test_refusals_leave_nothing(raw, tmp_path):
    with pytest.raises(InputError, match="vendor 'toshiba'.*expected one of siemens, ge, philips"):
        write_dicom_study(raw, tmp_path / "a", vendor="toshiba", seed=0)
    with pytest.raises(InputError, match="truth.json not found"):
        write_dicom_study(tmp_path, tmp_path / "b", vendor="ge", seed=0)
    write_dicom_study(raw, tmp_path / "c", vendor="ge", extras=False, seed=0)
    with pytest.raises(InputError, match="already exists"):
        write_dicom_study(raw, tmp_path / "c", vendor="ge", seed=0)
    floats = tmp_path / "float" / raw.name
    shutil.copytree(raw, floats)
    img = nib.load(floats / f"{raw.name}_t2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32) * 0.5, img.affine),
             floats / f"{raw.name}_t2.nii.gz")
    with pytest.raises(InputError, match=r"_t2\.nii\.gz: 3D float32 voxels \(expected 3D integer"):
        write_dicom_study(floats, tmp_path / "d", vendor="ge", seed=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("enhanced_form", [False, True])
def test_nifti_scaling_carried_as_rescale(raw, tmp_path, enhanced_form):
    scaled = tmp_path / "scaled" / raw.name
    shutil.copytree(raw, scaled)
    path = scaled / f"{raw.name}_t2.nii.gz"
    original = nib.load(path)
    img = nib.Nifti1Image(np.asarray(original.dataobj, dtype=np.int16), original.affine, original.header)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, path)
    study = write_dicom_study(scaled, tmp_path / "out", vendor="ge", enhanced=enhanced_form, extras=False, seed=0)
    files = _files(study, "t2")
    if enhanced_form:
        transform = pydicom.dcmread(files[0]).SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        assert (float(transform.RescaleSlope), float(transform.RescaleIntercept)) == (0.5, 10.0)
        image = sitk.ReadImage(str(files[0]))
    else:
        ds = pydicom.dcmread(files[0])
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, 10.0)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
        image = reader.Execute()
    _sitk_matches(image, nib.load(path))  # GDCM applies the rescale: the NIfTI's scaled values come back


def test_sheared_affine_refused():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[0, 2] = 0.5  # slices not stacked along their normal
    with pytest.raises(InputError, match="x.nii.gz: affine .* is sheared"):
        to_stack(np.zeros((4, 4, 4), np.int16), affine, 2, Path("x.nii.gz"))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
@pytest.mark.parametrize("form", ["classic", "enhanced"])
@pytest.mark.parametrize("role", ["t1ce", "flair", "localizer", "mpr"])
def test_dciodvfy_finds_no_errors(request, form, role):
    study = request.getfixturevalue(form)
    done = subprocess.run(["dciodvfy", str(_files(study, role)[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_cli_writes_n_dicom_studies(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--raw", "--dicom", "--n", "2", "--seed", "5", "--scale", "0.25",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    vendors = []
    for index in range(2):
        case = out / raw_case_id(5, index)
        truth = json.loads((case / "dicom_truth.json").read_text())
        vendors.append(truth["vendor"])
        assert set(truth["modalities"]) == set(ROLES) and len(truth["series"]) == 8
        assert sum(1 for _ in (case / "dicom").rglob("*.dcm")) == sum(e["files"] for e in truth["series"])
    assert vendors == ["siemens", "ge"]  # vendors in turn when --vendor is not given
    again = runner.invoke(app, ["synth", "--raw", "--dicom", "--n", "1", "--seed", "5", "--scale", "0.25",
                                "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and len(again.output.strip().splitlines()) == 1


def test_cli_transfer_syntax_reaches_every_file(tmp_path):
    import pydicom
    from seg_edge.synth.dicom import TRANSFER_SYNTAXES

    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--raw", "--dicom", "--transfer-syntax", "rle", "--n", "1", "--seed", "6",
                                 "--scale", "0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    case = out / raw_case_id(6, 0)
    assert json.loads((case / "dicom_truth.json").read_text())["transfer_syntax"] == TRANSFER_SYNTAXES["rle"]
    syntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
                for f in (case / "dicom").rglob("*.dcm")}
    assert syntaxes == {TRANSFER_SYNTAXES["rle"]}


@pytest.mark.parametrize(("args", "message"), [
    (["--dicom"], "--dicom without --raw"),
    (["--raw", "--vendor", "ge"], "--vendor without --dicom"),
    (["--raw", "--enhanced"], "--enhanced without --dicom"),
    (["--raw", "--transfer-syntax", "rle"], "--transfer-syntax without --dicom"),
])
def test_cli_bad_options_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["synth", "--n", "1", "--scale", "0.25", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("syntax", ["deflated", "rle", "jpeg-ls", "jpeg2000"])
def test_compressed_transfer_syntaxes_decode_to_the_nifti(raw, tmp_path, syntax):
    """Each syntax the writer offers, decoded by GDCM (SimpleITK) as the independent reader: the same voxels and
    geometry as the NIfTI, and the same tags as the uncompressed study."""
    from seg_edge.synth.dicom import TRANSFER_SYNTAXES

    study = write_dicom_study(raw, tmp_path / syntax, vendor="ge", extras=False, seed=3, transfer_syntax=syntax)
    plain = write_dicom_study(raw, tmp_path / "plain", vendor="ge", extras=False, seed=3)
    uid = TRANSFER_SYNTAXES[syntax]
    assert _truth(study)["transfer_syntax"] == uid
    assert _truth(plain)["transfer_syntax"] == pydicom.uid.ExplicitVRLittleEndian
    for role in ("t2", "flair"):
        files = _files(study, role)
        first = pydicom.dcmread(files[0])
        assert first.file_meta.TransferSyntaxUID == uid
        reference = pydicom.dcmread(_files(plain, role)[0])
        assert first.SOPInstanceUID == reference.SOPInstanceUID  # a lossless copy of the same instance
        assert np.array_equal(first.pixel_array, reference.pixel_array)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
        _sitk_matches(reader.Execute(), _nifti(raw, role))


def test_compressed_enhanced_study(raw, tmp_path):
    study = write_dicom_study(raw, tmp_path, vendor="philips", enhanced=True, extras=False, seed=3,
                              transfer_syntax="rle")
    (path,) = _files(study, "flair")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    _sitk_matches(sitk.ReadImage(str(path)), _nifti(raw, "flair"))


def test_unknown_transfer_syntax_refused(raw, tmp_path):
    with pytest.raises(InputError, match=r"transfer syntax 'jpeg' \(expected one of explicit, deflated, rle, "
                                         r"jpeg-ls, jpeg2000 or its UID\)"):
        write_dicom_study(raw, tmp_path, vendor="ge", seed=0, transfer_syntax="jpeg")
    assert not (tmp_path / "dicom").exists()
