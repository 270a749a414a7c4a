"""A small synthetic MR series written with pydicom: 20 tilted axial slices of 64x64, one file each, with the
tags a classic single-frame MR Image Storage instance carries. Imported by the tests under tests/dicom (a
module name of its own: ``conftest`` is tests/conftest.py's)."""

from __future__ import annotations

import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

N_SLICES, ROWS, COLS = 20, 64, 64
SPACING = (0.9, 0.8, 3.0)  # row spacing (between rows), column spacing, slice spacing (mm)
TILT_DEG = 15.0  # about the patient's left-right axis, as an oblique axial FLAIR is


def tilted_orientation(tilt_deg: float = TILT_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and slice normal (LPS) of an axial plane tilted about x."""
    t = np.deg2rad(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), -np.sin(t)])
    return row, col, np.cross(row, col)


def mr_series(*, n_slices: int = N_SLICES, rows: int = ROWS, cols: int = COLS, seed: int = 0,
              patient_name: str = "Doe^Jane", patient_id: str = "PAT-0001") -> list[Dataset]:
    """The instances of one MR series in slice order (feet to head along the normal), pixels int16 noise
    over a brighter disc so that frames differ."""
    rng = np.random.default_rng(seed)
    row, col, normal = tilted_orientation()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = np.array([-0.5 * cols * SPACING[1], -0.5 * rows * SPACING[0], -0.5 * n_slices * SPACING[2]])
    yy, xx = np.mgrid[:rows, :cols]
    disc = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) < (rows / 3) ** 2
    datasets = []
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = datetime.date(2026, 1, 2).strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC0001", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "MR", "SynthScanner", 7, k + 1
        ds.SeriesDescription = "AX FLAIR tilted"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "IR", "SK", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.InversionTime, ds.EchoTrainLength = 90.0, 9000.0, 2500.0, 16
        ds.MagneticFieldStrength, ds.SliceThickness, ds.SpacingBetweenSlices = 1.5, SPACING[2], SPACING[2]
        ds.PositionReferenceIndicator, ds.PatientPosition, ds.BodyPartExamined = "", "HFS", "BRAIN"
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]  # DS holds 16 characters
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin + k * SPACING[2] * normal]
        ds.SliceLocation = round(float(np.dot(origin + k * SPACING[2] * normal, normal)), 4)
        ds.PixelSpacing = [SPACING[0], SPACING[1]]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        pixels = rng.normal(100, 10, (rows, cols)) + 300 * disc
        ds.PixelData = pixels.astype(np.int16).tobytes()
        datasets.append(ds)
    return datasets
