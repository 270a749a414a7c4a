"""seg_edge.dicom.volume.read_series: a series' voxels and RAS geometry, checked against two independent
references: the synthetic study's own source NIfTIs (each series was written from one, voxels reordered, never
resampled) and SimpleITK's GDCM series reader (its own slice sorting and geometry)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from seg_edge.dicom.seg import frame_order, frames_from_nifti  # noqa: E402
from seg_edge.dicom.series import SeriesInfo, scan  # noqa: E402
from seg_edge.dicom.volume import read_series, save_series  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402
from seg_edge.synth.dicom import write_dicom_study  # noqa: E402

ROLES = ("t1", "t1ce", "t2", "flair")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE_TOLERANCE_MM = 1e-3  # the synth writes positions as DS of 16 characters


@pytest.fixture(scope="module")
def raw(raw_studies) -> Path:
    """A raw study of tests/conftest.py's session fixture (written once for the suite)."""
    return raw_studies[0]


@pytest.fixture(scope="module")
def studies(raw, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dicom")
    return {"classic": write_dicom_study(raw, out / "classic", vendor="siemens", seed=5),
            "enhanced": write_dicom_study(raw, out / "enhanced", vendor="philips", enhanced=True, seed=5)}


def _series(study: Path, role: str) -> SeriesInfo:
    truth = json.loads((study.parent / "dicom_truth.json").read_text())
    uid = next(e["series_instance_uid"] for e in truth["series"] if e["role"] == role)
    return next(s for s in scan(study) if s.series_uid == uid)


def _same_as_nifti(image: nib.Nifti1Image, source: nib.Nifti1Image) -> None:
    """The read image is the source NIfTI up to axis order and flips: the voxel map between the two affines is
    a signed permutation with whole-voxel offsets, and the voxels equal through it."""
    voxel_map = np.linalg.inv(source.affine) @ image.affine
    exact = np.round(voxel_map)
    assert np.abs(voxel_map - exact).max() < 1e-4
    permutation = exact[:3, :3]
    assert sorted(np.abs(permutation).sum(axis=0)) == [1, 1, 1] and sorted(np.abs(permutation).sum(axis=1)) == [1, 1, 1]
    index = np.indices(image.shape).reshape(3, -1)
    target = (exact[:3, :3] @ index + exact[:3, 3:4]).astype(int)
    want = source.get_fdata(dtype=np.float32)
    assert (target >= 0).all() and (target < np.array(want.shape)[:, None]).all()
    got = np.asarray(image.dataobj).reshape(-1)
    np.testing.assert_allclose(got, want[tuple(target)], rtol=1e-6, atol=1e-5)
    # and the corners of the grid in millimetres
    corners = np.array([[i, j, k, 1] for i in (0, image.shape[0] - 1) for j in (0, image.shape[1] - 1)
                        for k in (0, image.shape[2] - 1)]).T
    assert np.abs(image.affine @ corners - source.affine @ (voxel_map @ corners)).max() < AFFINE_TOLERANCE_MM


@pytest.mark.parametrize("form", ["classic", "enhanced"])
@pytest.mark.parametrize("role", ROLES)
def test_series_read_equal_their_source_nifti(raw, studies, form, role):
    volume = read_series(_series(studies[form], role))
    assert volume.image.get_data_dtype() == np.float32
    _same_as_nifti(volume.image, nib.load(raw / f"{raw.name}_{role}.nii.gz"))
    assert len(volume.datasets) == (volume.image.shape[2] if form == "classic" else 1)


def test_tilted_flair_and_sagittal_t1_keep_their_geometry(studies):
    flair = read_series(_series(studies["classic"], "flair")).image.affine
    t1 = read_series(_series(studies["classic"], "t1")).image.affine
    normal = flair[:3, 2] / np.linalg.norm(flair[:3, 2])
    assert 9.9 < np.degrees(np.arccos(abs(normal[2]))) < 20.1  # the raw writer's tilt range
    assert np.argmax(np.abs(t1[:3, 2])) == 0  # slices stacked left-right: sagittal


@pytest.mark.parametrize("form", ["classic", "enhanced"])
@pytest.mark.parametrize("role", ROLES + ("mpr",))
def test_geometry_equal_gdcm(studies, role, form):
    """GDCM (SimpleITK) reads a classic series with its series reader and an enhanced instance as one image."""
    info = _series(studies[form], role)
    volume = read_series(info)
    if form == "classic":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(info.files[0].path.parent)))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(info.files[0].path))
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(volume.image.affine, LPS @ affine, atol=AFFINE_TOLERANCE_MM)
    np.testing.assert_array_equal(np.asarray(volume.image.dataobj),
                                  sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32))


def test_file_names_and_instance_numbers_do_not_order_slices(studies, tmp_path):
    info = _series(studies["classic"], "flair")
    expected = read_series(info)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(0)
    for n, k in enumerate(rng.permutation(len(info.files))):
        ds = pydicom.dcmread(info.files[k].path)
        ds.InstanceNumber = int(rng.integers(1, 10_000))
        ds.save_as(shuffled / f"img{n:03d}.dcm")
    (again,) = scan(shuffled)
    volume = read_series(again)
    np.testing.assert_array_equal(np.asarray(volume.image.dataobj), np.asarray(expected.image.dataobj))
    np.testing.assert_allclose(volume.image.affine, expected.image.affine)
    reversed_info = dataclasses.replace(info, files=tuple(reversed(info.files)))
    assert [d.SOPInstanceUID for d in read_series(reversed_info).datasets] == \
        [d.SOPInstanceUID for d in expected.datasets]


@pytest.mark.parametrize("role", ["flair", "t1"])
def test_frames_from_nifti_accepts_the_read_grid(studies, role):
    volume = read_series(_series(studies["classic"], role))
    assert [d.SOPInstanceUID for d in frame_order(volume.datasets)] == \
        [d.SOPInstanceUID for d in volume.datasets]
    labels = (np.arange(np.prod(volume.image.shape)) % 5).reshape(volume.image.shape).astype(np.uint8)
    frames = frames_from_nifti(labels, volume.image.affine, volume.datasets)
    np.testing.assert_array_equal(frames, labels.transpose(2, 1, 0))


def test_rescale_applied(raw, tmp_path):
    scaled = tmp_path / "scaled" / raw.name
    shutil.copytree(raw, scaled)
    path = scaled / f"{raw.name}_t2.nii.gz"
    original = nib.load(path)
    img = nib.Nifti1Image(np.asarray(original.dataobj, dtype=np.int16), original.affine, original.header)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, path)
    for enhanced in (False, True):
        study = write_dicom_study(scaled, tmp_path / f"out{enhanced}", vendor="ge", enhanced=enhanced,
                                  extras=False, seed=0)
        volume = read_series(_series(study, "t2"))
        _same_as_nifti(volume.image, nib.load(path))
        assert np.asarray(volume.image.dataobj).min() >= 10.0


def test_save_series_round_trip(studies, tmp_path):
    volume = read_series(_series(studies["enhanced"], "t1ce"))
    save_series(volume, tmp_path / "t1ce.nii.gz")
    back = nib.load(tmp_path / "t1ce.nii.gz")
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(volume.image.dataobj))
    np.testing.assert_allclose(back.affine, volume.image.affine, atol=1e-5)
    with pytest.raises(InputError, match="does not exist"):
        save_series(volume, tmp_path / "missing" / "x.nii.gz")


def test_localiser_of_three_planes_refused_in_one_line(studies):
    for form in ("classic", "enhanced"):
        with pytest.raises(InputError, match=r"^#\d+ '.*': .*ImageOrientationPatient .* differs .*expected one "
                                             r"orientation") as error:
            read_series(_series(studies[form], "localizer"))
        assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def flair_nifti(raw) -> nib.Nifti1Image:
    return nib.load(raw / f"{raw.name}_flair.nii.gz")


@pytest.mark.parametrize("enhanced", [False, True])
@pytest.mark.parametrize("syntax", ["deflated", "rle", "jpeg-ls", "jpeg2000"])
def test_compressed_series_read_equal_their_source(raw, tmp_path, flair_nifti, syntax, enhanced):
    study = write_dicom_study(raw, tmp_path, vendor="ge", enhanced=enhanced, extras=False, seed=5,
                              transfer_syntax=syntax)
    info = _series(study, "flair")
    assert pydicom.dcmread(info.files[0].path).file_meta.TransferSyntaxUID.is_compressed == (syntax != "deflated")
    _same_as_nifti(read_series(info).image, flair_nifti)


def _jpeg_lossless_copy(info: SeriesInfo, folder: Path) -> None:
    """The series re-encoded as JPEG Lossless SV1 (process 14, the syntax MR archives use most), which pydicom
    cannot encode: GDCM (SimpleITK) encodes each slice and its encapsulated pixel data replaces the original."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.UseCompressionOn()
    writer.SetCompressor("JPEG")
    for n, source in enumerate(info.files):
        ds = pydicom.dcmread(source.path)
        writer.SetFileName(str(folder / "gdcm.dcm"))
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array))
        encoded = pydicom.dcmread(folder / "gdcm.dcm")
        assert encoded.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
        ds.PixelData = encoded.PixelData
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
    (folder / "gdcm.dcm").unlink()


def test_jpeg_lossless_read_equal_uncompressed(studies, tmp_path, flair_nifti):
    _jpeg_lossless_copy(_series(studies["classic"], "flair"), tmp_path / "jpeg")
    (info,) = scan(tmp_path / "jpeg")
    _same_as_nifti(read_series(info).image, flair_nifti)


def test_missing_decoder_names_the_syntax_and_package(studies, tmp_path):
    """In a Python where pylibjpeg cannot be imported (as without the package), JPEG Lossless is refused in one
    line naming the syntax and pydicom's list of what would decode it."""
    _jpeg_lossless_copy(_series(studies["classic"], "flair"), tmp_path / "jpeg")
    script = ("import sys; sys.modules['pylibjpeg'] = None\n"
              "from pathlib import Path\nfrom seg_edge.dicom.series import scan\n"
              "from seg_edge.dicom.volume import read_series\nfrom seg_edge.errors import InputError\n"
              f"try:\n    read_series(scan(Path({str(tmp_path / 'jpeg')!r}))[0])\n"
              "except InputError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    line = done.stdout.strip()
    assert done.returncode == 0 and "\n" not in line, done.stderr
    assert re.search(r"^#\d+ '.*': .*000\.dcm: transfer syntax JPEG Lossless, Non-Hierarchical, First-Order "
                     r"Prediction .*\(1\.2\.840\.10008\.1\.2\.4\.70\) cannot be decoded here: no decoder installed "
                     r"\(.*pylibjpeg-libjpeg.*\)", line), line


def test_video_syntax_refused(studies, tmp_path):
    info = _series(studies["classic"], "t2")
    (tmp_path / "video").mkdir()
    for n, source in enumerate(info.files):
        ds = pydicom.dcmread(source.path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp_path / "video" / f"{n:03d}.dcm", enforce_file_format=True)
    (video,) = scan(tmp_path / "video")
    with pytest.raises(InputError, match=r"transfer syntax MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2"
                                         r"\.4\.100\) has no pixel decoder in pydicom"):
        read_series(video)


def test_enhanced_file_cut_in_its_pixel_data(studies, tmp_path):
    info = _series(studies["enhanced"], "flair")
    (source,) = info.files
    cut = tmp_path / "cut"
    cut.mkdir()
    data = source.path.read_bytes()
    (cut / "flair.dcm").write_bytes(data[:-1000])
    (again,) = scan(cut)
    full = len(pydicom.dcmread(source.path).PixelData)
    with pytest.raises(InputError, match=rf"flair\.dcm: pixel data cut short: {full - 1000} of {full} bytes"):
        read_series(again)


def test_jpeg_ls_decoded_by_pyjpegls(raw, tmp_path, flair_nifti, monkeypatch):
    """pydicom would pick pylibjpeg (6x slower here) for JPEG-LS once it is installed; the reader asks for
    pyjpegls by name."""
    from pydicom.pixels.decoders.base import get_decoder

    study = write_dicom_study(raw, tmp_path, vendor="ge", extras=False, seed=5, transfer_syntax="jpeg-ls")
    decoder = get_decoder(pydicom.uid.JPEGLSLossless)
    plugins = []
    original = decoder.as_array

    def spy(*args, **kwargs):
        plugins.append(kwargs.get("decoding_plugin"))
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "as_array", spy)
    _same_as_nifti(read_series(_series(study, "flair")).image, flair_nifti)
    assert plugins and set(plugins) == {"pyjpegls"}
