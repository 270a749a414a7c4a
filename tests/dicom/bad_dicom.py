"""Bad DICOM studies, one builder per case: ``build(folder) -> fragment`` writes one study into ``folder`` (which
must exist and may be empty) and returns the text its one-line refusal must contain.

A module of builders, not a conftest: ``tests/dicom/test_bad_dicom.py`` checks each against ``refusal`` (scan,
select with the shipped rules, read every chosen series), and the DICOM listener's tests send the same files to
``seg-edge listen``. Import it with ``tests/dicom`` on ``sys.path`` (pytest puts it there for the tests in this
folder; elsewhere: ``sys.path.insert(0, str(Path(__file__).parents[1] / "dicom"))``). It depends on pydicom and
numpy only, so that it stays importable from any test folder.

Most cases are a complete, selectable four-sequence study (T1, T1ce, T2, FLAIR named Siemens-style; 12 slices of
32 x 32) with one defect in its FLAIR, so that a whole pipeline (selection included) reaches the defect: what
is refused is the defect, not a missing sequence. The synthetic patient is ``BAD^DICOM``; no real data.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         MediaStorageDirectoryStorage, MRImageStorage, RLELossless, SecondaryCaptureImageStorage,
                         generate_uid)

N_SLICES, SIZE, PIXEL_MM, SLICE_MM = 12, 32, 1.5, 4.0
PATIENT_ID = "BAD-DICOM-0001"
# role: (SeriesNumber, SeriesDescription, EchoTime, RepetitionTime, InversionTime or None, contrast agent)
SERIES = {"t1": (2, "t1_mprage_sag", 3.0, 2300.0, 900.0, ""),
          "t1ce": (5, "t1_mprage_sag_post", 3.0, 2300.0, 900.0, "Gadovist"),
          "t2": (3, "t2_tse_tra", 100.0, 5000.0, None, ""),
          "flair": (4, "t2_tirm_tra_dark-fluid", 90.0, 9000.0, 2500.0, "")}


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["seg-edge bad dicom", *map(str, parts)])


def slice_datasets(role: str, *, study_uid: str, n_slices: int = N_SLICES, patient_id: str = PATIENT_ID,
                   sop_class: str = MRImageStorage, modality: str = "MR", tag: str = "") -> list[Dataset]:
    """One series of classic single-frame images, axial, slices ``SLICE_MM`` apart along +z, pixels int16
    (a bright disc that grows with the slice number)."""
    number, description, te, tr, ti, agent = SERIES[role]
    series_uid = _uid(study_uid, role, tag, "series")
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = _uid(series_uid, k)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "BAD^DICOM", patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = _uid(study_uid, "frame of reference")
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "090000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", modality, "seg-edge bad dicom"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.MRAcquisitionType = "3D" if role.startswith("t1") else "2D"
        ds.EchoTime, ds.RepetitionTime = te, tr
        if ti is not None:
            ds.InversionTime = ti
        if agent:
            ds.ContrastBolusAgent = agent
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [-SIZE * PIXEL_MM / 2, -SIZE * PIXEL_MM / 2, k * SLICE_MM]
        ds.PixelSpacing, ds.SliceThickness = [PIXEL_MM, PIXEL_MM], SLICE_MM
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = SIZE, SIZE, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (4 + k) ** 2
        ds.PixelData = (100 + 400 * disc).astype("<i2").tobytes()
        out.append(ds)
    return out


def write(datasets: list[Dataset], folder: Path, prefix: str = "") -> list[Path]:
    """Each dataset as a file ``<prefix><SeriesNumber>_<InstanceNumber>.dcm`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{prefix}{int(ds.SeriesNumber):02d}_{int(ds.InstanceNumber):03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def good_study(folder: Path, *, flair: Callable[[list[Dataset]], list[Dataset]] | None = None,
               study_tag: str = "study") -> dict[str, list[Path]]:
    """The four-sequence study, with ``flair`` (if given) changing the FLAIR's datasets before they are written;
    the files written by role."""
    study_uid = _uid(study_tag)
    written = {}
    for role in SERIES:
        datasets = slice_datasets(role, study_uid=study_uid)
        if role == "flair" and flair is not None:
            datasets = flair(datasets)
        written[role] = write(datasets, folder)
    return written


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ---- the cases: each writes into folder and returns the fragment its refusal must contain ----

def truncated_header(folder: Path) -> str:
    """A FLAIR file cut inside its header (after the 'DICM' prefix, inside an element's value)."""
    path = good_study(folder)["flair"][5]
    data = path.read_bytes()
    at = data.index(b"t2_tirm_tra")  # inside SeriesDescription's value
    path.write_bytes(data[:at + 4])
    return "unreadable DICOM header"


def truncated_pixels(folder: Path) -> str:
    """A FLAIR file cut half-way through its pixel data (the header is whole: only reading the pixels finds it)."""
    path = good_study(folder)["flair"][5]
    _cut(path, path.stat().st_size - SIZE * SIZE)
    return "pixel data cut short"


def truncated_compressed(folder: Path) -> str:
    """An RLE-compressed FLAIR, one file cut inside its encapsulated pixel data (pydicom then reads an empty
    data set without a word)."""
    def compress(datasets: list[Dataset]) -> list[Dataset]:
        for ds in datasets:
            ds.compress(RLELossless, generate_instance_uid=False)
        return datasets
    path = good_study(folder, flair=compress)["flair"][5]
    _cut(path, path.stat().st_size - 100)
    return "unreadable DICOM file (its data set breaks off"


def truncated_deflated(folder: Path) -> str:
    """A FLAIR in Deflated Explicit VR Little Endian, one file cut inside its deflated data set."""
    def deflate(datasets: list[Dataset]) -> list[Dataset]:
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return datasets
    path = good_study(folder, flair=deflate)["flair"][5]
    _cut(path, path.stat().st_size // 2)
    return "unreadable DICOM header (deflated data cut short or damaged)"


def no_pixel_data(folder: Path) -> str:
    """FLAIR instances with every attribute of an image but no PixelData."""
    def strip(datasets: list[Dataset]) -> list[Dataset]:
        for ds in datasets:
            del ds.PixelData
        return datasets
    good_study(folder, flair=strip)
    return "no pixel data"


def missing_slice(folder: Path) -> str:
    """A FLAIR with its 7th slice missing: a gap of two spacings."""
    good_study(folder, flair=lambda d: d[:6] + d[7:])
    return f"slice spacing {2 * SLICE_MM:.3f} mm"  # and "1 missing slice?"


def duplicate_position(folder: Path) -> str:
    """Two FLAIR slices at one position (a repeated slice with its own SOPInstanceUID)."""
    def repeat(datasets: list[Dataset]) -> list[Dataset]:
        datasets[6].ImagePositionPatient = list(datasets[5].ImagePositionPatient)
        return datasets
    good_study(folder, flair=repeat)
    return "two slices at one position"


def duplicate_file(folder: Path) -> str:
    """A FLAIR file copied under a second name (an export run twice into one folder)."""
    path = good_study(folder)["flair"][5]
    (folder / f"copy_of_{path.name}").write_bytes(path.read_bytes())
    return "the same instance twice (one SOPInstanceUID in two files"


def uneven_spacing(folder: Path) -> str:
    """FLAIR slices 4 mm apart, one of them moved by 1 mm (a quarter of a spacing)."""
    def move(datasets: list[Dataset]) -> list[Dataset]:
        x, y, z = (float(v) for v in datasets[6].ImagePositionPatient)
        datasets[6].ImagePositionPatient = [x, y, z + 1.0]
        return datasets
    good_study(folder, flair=move)
    return f"slice spacing {SLICE_MM + 1:.3f} mm"  # and "unevenly spaced slices"


def inconsistent_orientation(folder: Path) -> str:
    """One FLAIR slice turned 10 degrees about x."""
    def turn(datasets: list[Dataset]) -> list[Dataset]:
        t = np.deg2rad(10.0)
        datasets[3].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, round(float(np.cos(t)), 8),
                                               round(float(np.sin(t)), 8)]
        return datasets
    good_study(folder, flair=turn)
    return "expected one orientation in a series"


def differing_size(folder: Path) -> str:
    """One FLAIR slice of 32 x 16 pixels among 32 x 32."""
    def shrink(datasets: list[Dataset]) -> list[Dataset]:
        datasets[4].Columns = SIZE // 2
        datasets[4].PixelData = np.zeros((SIZE, SIZE // 2), "<i2").tobytes()
        return datasets
    good_study(folder, flair=shrink)
    return f"Rows x Columns {SIZE} x {SIZE // 2} differ"


def differing_pixel_spacing(folder: Path) -> str:
    """One FLAIR slice with another PixelSpacing."""
    def respace(datasets: list[Dataset]) -> list[Dataset]:
        datasets[4].PixelSpacing = [PIXEL_MM * 2, PIXEL_MM * 2]
        return datasets
    good_study(folder, flair=respace)
    return "expected one pixel spacing in a series"


def non_finite(folder: Path) -> str:
    """A FLAIR whose RescaleSlope is 'inf' on one slice (pixels times infinity are not intensities)."""
    def infinite(datasets: list[Dataset]) -> list[Dataset]:
        datasets[2].add_new(0x00281053, "DS", "inf")  # RescaleSlope, set raw: pydicom refuses inf as a float
        datasets[2].RescaleIntercept = 0
        return datasets
    good_study(folder, flair=infinite)
    return "RescaleSlope inf"


def nan_pixels(folder: Path) -> str:
    """A FLAIR stored as 32-bit float pixels (Float Pixel Data) holding a NaN."""
    def floats(datasets: list[Dataset]) -> list[Dataset]:
        for k, ds in enumerate(datasets):
            values = np.frombuffer(ds.PixelData, "<i2").astype("<f4")
            if k == 7:
                values[100] = np.nan
            del ds.PixelData, ds.PixelRepresentation, ds.HighBit
            ds.BitsAllocated = ds.BitsStored = 32
            ds.FloatPixelData = values.tobytes()
        return datasets
    good_study(folder, flair=floats)
    return "1 non-finite value after rescaling"


def non_mr_flair(folder: Path) -> str:
    """The FLAIR written as CT images: excluded by the selection, so the study has no FLAIR."""
    study_uid = _uid("study")
    for role in ("t1", "t1ce", "t2"):
        write(slice_datasets(role, study_uid=study_uid), folder)
    write(slice_datasets("flair", study_uid=study_uid, sop_class=CTImageStorage, modality="CT"), folder)
    return "no flair series"


def secondary_capture_only(folder: Path) -> str:
    """Only secondary captures (screenshots of the series): nothing an MR model can read."""
    study_uid = _uid("study")
    for role in SERIES:
        write(slice_datasets(role, study_uid=study_uid, sop_class=SecondaryCaptureImageStorage, modality="SC"),
              folder)
    return "not an MR image"


def two_patients(folder: Path) -> str:
    """The study plus one instance of another patient."""
    good_study(folder)
    other = slice_datasets("t2", study_uid=_uid("other study"), patient_id="BAD-DICOM-0002", tag="other",
                           n_slices=1)
    write(other, folder / "other")
    return "holds instances of at least 2 patients"


def one_slice(folder: Path) -> str:
    """A FLAIR of one slice: the selection takes it for a localiser, so the study has no FLAIR."""
    good_study(folder, flair=lambda d: d[:1])
    return "no flair series"


def zip_bad_member(folder: Path) -> str:
    """The study as a .zip whose FLAIR member is damaged (its CRC no longer matches)."""
    staging = folder / ".staging"
    files = good_study(staging)
    path = folder / "study.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for role_files in files.values():
            for f in role_files:
                archive.write(f, f.name)
    for role_files in files.values():
        for f in role_files:
            f.unlink()
    staging.rmdir()
    data = bytearray(path.read_bytes())
    name = files["flair"][5].name.encode()
    at = data.index(name) + len(name) + 200  # inside that member's stored bytes
    data[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return "unreadable .zip"


def dicomdir_only(folder: Path) -> str:
    """A DICOMDIR without the image files it would list (a CD's index copied alone)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = _uid("dicomdir")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "BADDICOM"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "DICOMDIR", enforce_file_format=True)
    return "DICOMDIR"


def _instances(folder: Path, count: int, marks: tuple[str, ...]) -> None:
    """``count`` single-slice instances written from one encoded template, ``marks`` (keywords among PatientID,
    StudyInstanceUID, SeriesInstanceUID; SOPInstanceUID always) made unique per file by patching a fixed-length
    number into the bytes: 20 000 files take seconds, where pydicom would take minutes."""
    # UID components may not start with 0: the patched number is 1 followed by 9 digits
    values = {"PatientID": "PID-9999999999", "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.9999999999",
              "SeriesInstanceUID": "1.2.826.0.1.3680043.10.544.9999999999",
              "SOPInstanceUID": "1.2.826.0.1.3680043.10.545.9999999999"}
    template = slice_datasets("t2", study_uid=_uid("many"), n_slices=1)[0]
    for keyword in (*marks, "SOPInstanceUID"):
        setattr(template, keyword, values[keyword])
    template.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
    buffer = io.BytesIO()
    template.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        sub = folder / f"{n // 1000:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"IM{n:05d}").write_bytes(data.replace(b"9999999999", f"1{n:09d}".encode()))


def unrelated_instances(folder: Path, count: int = 2000) -> str:
    """``count`` single instances, each of its own patient, study and series (a PACS export of unrelated
    images): refused at the first instance of a second patient, without reading the rest."""
    _instances(folder, count, ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"))
    return "holds instances of at least 2 patients"


def many_series(folder: Path, count: int = 2000) -> str:
    """``count`` single instances of one patient and one study, each its own series: every header is read
    before the study is refused for holding more series than an examination."""
    _instances(folder, count, ("SeriesInstanceUID",))
    return f"one study of {count} series"


CASES: dict[str, Callable[..., str]] = {case.__name__: case for case in (
    truncated_header, truncated_pixels, truncated_compressed, truncated_deflated, no_pixel_data, missing_slice,
    duplicate_position, duplicate_file, uneven_spacing, inconsistent_orientation, differing_size,
    differing_pixel_spacing, non_finite, nan_pixels, non_mr_flair, secondary_capture_only, two_patients, one_slice,
    zip_bad_member, dicomdir_only, unrelated_instances, many_series)}
