"""pydicom datasets of a synthetic series: MR Image Storage (one file per slice) or Enhanced MR Image Storage (one
multi-frame file per series), from a ``Stack`` (voxels in DICOM order and their LPS geometry).

Study- and series-level attributes come in a plain dict (``Header``) so that both forms carry the same values;
the enhanced writer files the per-sequence MR tags under its functional groups (PS3.3 C.8.13).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, EnhancedMRImageStorage, ExplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGLSLossless, MRImageStorage, RLELossless, generate_uid)
from pydicom.valuerep import format_number_as_ds

from seg_edge.errors import InputError
from seg_edge.synth.dicom.geometry import Stack
from seg_edge.synth.dicom.protocols import CONTRAST_AGENT, CONTRAST_ML, Sequence


@dataclass(frozen=True, kw_only=True)
class Header:
    """What every instance of one series carries: study, patient, equipment, series and sequence."""

    study: dict[str, object]  # patient, study, equipment and frame-of-reference attributes, by keyword
    series_uid: str
    series_number: int
    description: str
    protocol: str
    sequence: Sequence
    entropy: list[str]  # seeds the instances' UIDs
    rescale: tuple[float, float] = (1.0, 0.0)  # slope, intercept: stored value to the NIfTI's value
    time: str = "090000"  # SeriesTime, AcquisitionTime, ContentTime (HHMMSS; the series' place in the exam)


def ds_value(value: float) -> str:
    """A decimal string of at most 16 characters (tiny rounding noise dropped first)."""
    return format_number_as_ds(round(float(value), 8) + 0.0)


def classic_datasets(stack: Stack, header: Header, first_instance: int = 1) -> list[Dataset]:
    """One MR Image Storage dataset per slice of ``stack``, InstanceNumber from ``first_instance``."""
    seq = header.sequence
    row, col, between = stack.spacing
    out = []
    for s in range(stack.pixels.shape[0]):
        number = first_instance + s
        ds = _base(header, MRImageStorage, number)
        ds.ImageType = list(seq.image_type)
        _mr_tags(ds, seq)
        if seq.contrast_agent:
            ds.ContrastBolusAgent, ds.ContrastBolusRoute = CONTRAST_AGENT, "IV"
            ds.ContrastBolusVolume = ds_value(CONTRAST_ML)
        ds.SliceThickness = ds_value(between)
        ds.SpacingBetweenSlices = ds_value(between)
        ds.PixelSpacing = [ds_value(row), ds_value(col)]
        ds.ImageOrientationPatient = [ds_value(v) for v in stack.orientation]
        ds.ImagePositionPatient = [ds_value(v) for v in stack.position(s)]
        normal = np.cross(stack.orientation[:3], stack.orientation[3:])
        ds.SliceLocation = ds_value(float(normal @ np.array(stack.position(s))))
        if header.rescale != (1.0, 0.0):  # as Philips writes them: readers apply them to classic MR too
            ds.RescaleSlope, ds.RescaleIntercept = ds_value(header.rescale[0]), ds_value(header.rescale[1])
            ds.RescaleType = "US"
        _pixels(ds, stack.pixels[s])
        out.append(ds)
    return out


def enhanced_dataset(stacks: list[Stack], header: Header) -> Dataset:
    """One Enhanced MR Image Storage dataset holding every slice of ``stacks`` as a frame (one stack per
    orientation: a localiser's planes are several; all of one size)."""
    seq = header.sequence
    stack = stacks[0]
    ds = _base(header, EnhancedMRImageStorage, 1)
    derived = seq.image_type[0] == "DERIVED"
    ds.ImageType = _frame_type(seq)
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique, ds.ComplexImageComponent = _calculation(seq), "MAGNITUDE"
    ds.AcquisitionContrast = seq.contrast
    ds.ContentQualification, ds.ResonantNucleus, ds.KSpaceFiltering = "PRODUCT", "1H", "NONE"
    ds.MagneticFieldStrength = ds_value(3.0)
    ds.ApplicableSafetyStandardAgency, ds.ImageComments = "IEC", "synthetic phantom, not patient data"
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.AcquisitionDateTime = f"{header.study['StudyDate']}{header.time}"
    ds.AcquisitionDuration = 0.0
    ds.ContentDate, ds.ContentTime = header.study["StudyDate"], header.time
    ds.AcquisitionContextSequence = DicomSequence([])
    if not derived:
        _pulse_sequence(ds, seq)
    if seq.contrast_agent:
        ds.ContrastBolusAgentSequence = DicomSequence([_contrast_item()])
    frames = [(n, one, s) for n, one in enumerate(stacks) for s in range(one.pixels.shape[0])]
    ds.NumberOfFrames = len(frames)
    shared = _shared_groups(stack, header)
    when = f"{header.study['StudyDate']}{header.time}"
    per_frame = [_frame_groups(one, s, n + 1, seq, when) for n, one, s in frames]
    if len(stacks) > 1:  # the orientation differs between frames: it goes with each frame
        for groups, (_, one, _) in zip(per_frame, frames):
            groups.PlaneOrientationSequence = DicomSequence([_item(
                ImageOrientationPatient=[ds_value(v) for v in one.orientation])])
        del shared.PlaneOrientationSequence
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    dimension_uid = generate_uid(entropy_srcs=[*header.entropy, "dimensions"])
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dimension_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position Number")])
    _pixels(ds, np.concatenate([one.pixels for one in stacks]))
    return ds


def _frame_type(seq: Sequence) -> list[str]:
    """Enhanced MR's ImageType/FrameType: value 2 is always PRIMARY there; value 4 names a derived contrast (ADC),
    and a reformat says so in VolumeBasedCalculationTechnique instead."""
    return [seq.image_type[0], "PRIMARY", "VOLUME", "ADC" if "ADC" in seq.image_type else "NONE"]


def _calculation(seq: Sequence) -> str:
    return "MPR" if "MPR" in seq.image_type else "NONE"


def _base(header: Header, sop_class: UID, number: int) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid(entropy_srcs=[*header.entropy, "instance", str(number)])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    for keyword, value in header.study.items():
        setattr(ds, keyword, value)
    ds.Modality = "MR"
    ds.SeriesInstanceUID, ds.SeriesNumber = header.series_uid, header.series_number
    ds.SeriesDescription, ds.ProtocolName = header.description, header.protocol
    ds.SeriesDate, ds.SeriesTime = header.study["StudyDate"], header.time
    ds.AcquisitionDate, ds.AcquisitionTime = header.study["StudyDate"], header.time
    ds.ContentDate, ds.ContentTime = header.study["StudyDate"], header.time
    ds.InstanceNumber = number
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    return ds


def _mr_tags(ds: Dataset, seq: Sequence) -> None:
    ds.ScanningSequence, ds.SequenceVariant = list(seq.scanning), list(seq.variant)
    ds.ScanOptions = list(seq.options) if seq.options else ""
    ds.MRAcquisitionType = seq.acquisition
    ds.RepetitionTime, ds.EchoTime = ds_value(seq.tr_ms), ds_value(seq.te_ms)
    if seq.ti_ms is not None:
        ds.InversionTime = ds_value(seq.ti_ms)
    ds.EchoTrainLength, ds.FlipAngle = seq.echo_train, ds_value(seq.flip_deg)
    ds.NumberOfAverages, ds.ImagingFrequency = ds_value(1.0), ds_value(123.2)
    ds.ImagedNucleus, ds.MagneticFieldStrength = "1H", ds_value(3.0)
    ds.AngioFlag = "N"
    if seq.b_value is not None:
        ds.DiffusionBValue = seq.b_value


def _pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _contrast_item() -> Dataset:
    item = _code("C-17800", "SRT", "Gadolinium")
    item.ContrastBolusAgentNumber = 1
    item.ContrastBolusVolume = ds_value(CONTRAST_ML)
    item.ContrastBolusIngredientConcentration = ds_value(604.72)
    item.ContrastBolusAdministrationRouteSequence = DicomSequence([_code("47625008", "SCT", "Intravenous route")])
    item.ContrastBolusIngredientCodeSequence = DicomSequence([_code("C-17800", "SRT", "Gadolinium")])
    item.ContrastBolusIngredientOpaque = "NO"
    return item


def _pulse_sequence(ds: Dataset, seq: Sequence) -> None:
    """The MR Pulse Sequence module (required for ORIGINAL images)."""
    ds.PulseSequenceName = "_".join(seq.scanning + seq.variant)[:16]
    ds.MRAcquisitionType = seq.acquisition
    ds.EchoPulseSequence = "GRADIENT" if "GR" in seq.scanning or "EP" in seq.scanning else "SPIN"
    if ds.EchoPulseSequence != "GRADIENT":
        ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO" if seq.acquisition == "3D" else "YES"
    ds.PhaseContrast, ds.TimeOfFlightContrast = "NO", "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "YES" if "EP" in seq.scanning else "NO"
    ds.SaturationRecovery, ds.SpectrallySelectedSuppression = "NO", "FAT" if "FS" in seq.options else "NONE"
    ds.OversamplingPhase, ds.GeometryOfKSpaceTraversal = "NONE", "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering, ds.SegmentedKSpaceTraversal = "LINEAR", \
        "SINGLE" if "EP" in seq.scanning else "PARTIAL"
    if seq.acquisition == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _shared_groups(stack: Stack, header: Header) -> Dataset:
    seq = header.sequence
    row, col, between = stack.spacing
    derived = seq.image_type[0] == "DERIVED"
    groups = _item(
        PixelMeasuresSequence=DicomSequence([_item(PixelSpacing=[ds_value(row), ds_value(col)],
                                                   SliceThickness=ds_value(between),
                                                   SpacingBetweenSlices=ds_value(between))]),
        PlaneOrientationSequence=DicomSequence([_item(
            ImageOrientationPatient=[ds_value(v) for v in stack.orientation])]),
        PixelValueTransformationSequence=DicomSequence([_item(RescaleIntercept=ds_value(header.rescale[1]),
                                                              RescaleSlope=ds_value(header.rescale[0]),
                                                              RescaleType="US")]),
        FrameAnatomySequence=DicomSequence([_item(
            AnatomicRegionSequence=DicomSequence([_code("12738006", "SCT", "Brain")]), FrameLaterality="U")]),
        MRImageFrameTypeSequence=DicomSequence([_item(
            FrameType=_frame_type(seq), PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique=_calculation(seq),
            ComplexImageComponent="MAGNITUDE", AcquisitionContrast=seq.contrast)]),
    )
    if not derived:
        _acquisition_groups(groups, stack, seq)
    if seq.contrast_agent:
        groups.ContrastBolusUsageSequence = DicomSequence([_item(ContrastBolusAgentNumber=1,
                                                                 ContrastBolusAgentAdministered="YES",
                                                                 ContrastBolusAgentDetected="NO")])
    return groups


def _acquisition_groups(groups: Dataset, stack: Stack, seq: Sequence) -> None:
    """The functional groups that describe an acquisition (required for ORIGINAL frames)."""
    rows, cols = (int(n) for n in stack.pixels.shape[1:])
    groups.MRTimingAndRelatedParametersSequence = DicomSequence([_item(
        RepetitionTime=seq.tr_ms, FlipAngle=seq.flip_deg, EchoTrainLength=seq.echo_train,
        RFEchoTrainLength=seq.echo_train, GradientEchoTrainLength=1 if "GR" in seq.scanning else 0,
        GradientOutputType="DB_DT", GradientOutput=50.0,
        OperatingModeSequence=DicomSequence([_item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                                             for kind in ("STATIC FIELD", "RF", "GRADIENT")]),
        SpecificAbsorptionRateSequence=DicomSequence([_item(SpecificAbsorptionRateDefinition="IEC_HEAD",
                                                            SpecificAbsorptionRateValue=0.8)]))])
    groups.MREchoSequence = DicomSequence([_item(EffectiveEchoTime=seq.te_ms)])
    ir = seq.ti_ms is not None
    modifier = _item(InversionRecovery="YES" if ir else "NO", FlowCompensation="NONE", T2Preparation="NO",
                     SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
                     ParallelAcquisition="NO")
    if ir:
        modifier.InversionTimes = [seq.ti_ms]
    if "GR" in seq.scanning:
        modifier.Spoiling = "RF_AND_GRADIENT"
    groups.MRModifierSequence = DicomSequence([modifier])
    groups.MRImagingModifierSequence = DicomSequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE", TransmitterFrequency=123.2,
        PixelBandwidth=200.0)])
    groups.MRReceiveCoilSequence = DicomSequence([_item(ReceiveCoilName="Head", ReceiveCoilType="VOLUME",
                                                        ReceiveCoilManufacturerName="", QuadratureReceiveCoil="NO")])
    groups.MRTransmitCoilSequence = DicomSequence([_item(TransmitCoilName="Body", TransmitCoilType="BODY",
                                                         TransmitCoilManufacturerName="")])
    fov = _item(InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=cols,
                MRAcquisitionPhaseEncodingStepsInPlane=rows, PercentSampling=100.0, PercentPhaseFieldOfView=100.0)
    if seq.acquisition == "3D":
        fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = int(stack.pixels.shape[0])
    groups.MRFOVGeometrySequence = DicomSequence([fov])
    groups.MRAveragesSequence = DicomSequence([_item(NumberOfAverages=1.0)])
    if seq.b_value is not None:
        groups.MRDiffusionSequence = DicomSequence([_item(DiffusionBValue=seq.b_value,
                                                          DiffusionDirectionality="ISOTROPIC")])


def _frame_groups(stack: Stack, s: int, stack_id: int, seq: Sequence, when: str) -> Dataset:
    content = _item(StackID=str(stack_id), InStackPositionNumber=s + 1, DimensionIndexValues=[stack_id, s + 1],
                    FrameAcquisitionDateTime=when, FrameReferenceDateTime=when,
                    FrameAcquisitionDuration=seq.tr_ms)
    if seq.image_type[0] == "DERIVED":
        for keyword in ("FrameAcquisitionDateTime", "FrameReferenceDateTime", "FrameAcquisitionDuration"):
            delattr(content, keyword)
    return _item(FrameContentSequence=DicomSequence([content]),
                 PlanePositionSequence=DicomSequence([_item(
                     ImagePositionPatient=[ds_value(v) for v in stack.position(s)])]))


# The transfer syntaxes the writer can produce, by the name a caller (and the CLI) gives: what pydicom 3 encodes
# with the dicom extra's packages. Lossless only: a lossy synthetic study would not equal its source NIfTI.
# JPEG Lossless (process 14), the syntax MR archives use most, has no encoder in pydicom (pylibjpeg-libjpeg only
# decodes it).
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian, "deflated": DeflatedExplicitVRLittleEndian, "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}


def syntax_uid(name: str) -> UID:
    """The UID of a syntax named as in ``TRANSFER_SYNTAXES`` (or given by its UID); refused when unknown or when
    its encoder is not installed here."""
    uid = TRANSFER_SYNTAXES.get(name) or next((u for u in TRANSFER_SYNTAXES.values() if u == name), None)
    if uid is None:
        raise InputError(f"transfer syntax {name!r} (expected one of {', '.join(TRANSFER_SYNTAXES)} or its UID)")
    if uid.is_compressed:
        encoder = get_encoder(uid)
        if not encoder.is_available:
            needs = "; ".join(encoder.missing_dependencies) or "an encoder plugin"
            raise InputError(f"transfer syntax {name!r} ({uid.name}): no encoder installed ({needs}; expected "
                             "the dicom extra's packages)")
    return UID(uid)


def write_dataset(ds: Dataset, path: Path, syntax: UID = ExplicitVRLittleEndian) -> None:
    """Write ``ds`` as a DICOM file (preamble and file meta) at ``path`` in transfer syntax ``syntax``
    (``transfer_syntax``'s: compressed ones encode every frame, losslessly)."""
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
