"""Region volumes as a DICOM SR: a TID 1500 Measurement Report (Comprehensive 3D SR) written with highdicom.

What the report holds, for the SEG ``seg.write_seg`` wrote on the same source series:

- NCR, ED, ET: one TID 1411 volumetric ROI group each, referencing that tissue's SEG segment (1, 2, 3), with a
  Volume (SCT 118565006) in mL (UCUM 'mL').
- WT (NCR + ED + ET) and TC (NCR + ET): one TID 1501 measurement group each (no single segment holds them:
  a TID 1411 group references exactly one), tracking identifier saying which segments make it up.

Every group's finding type is SCT 'Neoplasm', its site SCT 'Brain', and the algorithm (name, version, the
checkpoint's sha256) is copied from the SEG's own algorithm identification, so the two cannot disagree.
The observer is the model as a device; patient and study attributes come from the source series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage, generate_uid

from seg_edge.dicom.seg import SEGMENTS, check_series
from seg_edge.errors import InputError
from seg_edge.runtime.atomic import atomic_write

__all__ = ["REGIONS", "MILLILITRE", "write_sr"]

# the order the report lists them in: the evaluated regions first, then the tissues
REGIONS = ("WT", "TC", "ET", "NCR", "ED")
MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
_COMPOSITE = {"WT": ("NCR", "ED", "ET"), "TC": ("NCR", "ET")}
_NAMES = {"WT": "whole tumour", "TC": "tumour core"}
# WT and TC are sums of the tissues: their volumes may differ from the sum by the caller's rounding only
_SUM_TOL_ML = 0.01
_Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def _check_volumes(volumes_ml: Mapping[str, float]) -> None:
    if set(volumes_ml) != set(REGIONS):
        raise InputError(f"volumes: regions {sorted(volumes_ml)} (expected {', '.join(REGIONS)})")
    for region, value in volumes_ml.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"volumes: {region} = {value!r} (expected a finite volume >= 0 in mL)")
    for region, parts in _COMPOSITE.items():
        total = sum(volumes_ml[p] for p in parts)
        if abs(volumes_ml[region] - total) > _SUM_TOL_ML:
            raise InputError(f"volumes: {region} = {volumes_ml[region]} mL but {' + '.join(parts)} = {total:.4f} "
                             f"mL (expected them equal within {_SUM_TOL_ML} mL)")


def _check_seg(seg_dataset: Dataset, source_datasets: Sequence[Dataset]) -> Dataset:
    """The SEG's first algorithm identification item, after checking that it is a SEG seg-edge wrote on this
    source series."""
    if seg_dataset.get("SOPClassUID") != SegmentationStorage:
        raise InputError(f"SEG: SOPClassUID {seg_dataset.get('SOPClassUID')} (expected Segmentation Storage "
                         f"{SegmentationStorage})")
    numbers = [int(item.SegmentNumber) for item in seg_dataset.get("SegmentSequence", [])]
    if numbers != [s.number for s in SEGMENTS]:
        raise InputError(f"SEG: segments {numbers} (expected {[s.number for s in SEGMENTS]}, as seg-edge writes)")
    referenced = {item.ReferencedSOPInstanceUID for series in seg_dataset.get("ReferencedSeriesSequence", [])
                  for item in series.ReferencedInstanceSequence}
    missing = [ds.SOPInstanceUID for ds in source_datasets if ds.SOPInstanceUID not in referenced]
    if missing or seg_dataset.StudyInstanceUID != source_datasets[0].StudyInstanceUID:
        raise InputError(f"SEG: does not reference {len(missing)} of the {len(source_datasets)} source instances "
                         "or is of another study (expected the SEG written on this series)")
    item: Dataset = seg_dataset.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    return item


def _groups(volumes_ml: Mapping[str, float], seg_dataset: Dataset,
            algorithm_id: hd.sr.AlgorithmIdentification) -> list[_Group]:
    site = [hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)]
    groups: list[_Group] = []
    for region in REGIONS:
        measurement = hd.sr.Measurement(name=codes.SCT.Volume, value=float(volumes_ml[region]), unit=MILLILITRE,
                                        algorithm_id=algorithm_id)
        common = dict(finding_type=codes.SCT.Neoplasm, finding_sites=site, algorithm_id=algorithm_id,
                      measurements=[measurement])
        if region in _COMPOSITE:
            parts = " + ".join(_COMPOSITE[region])
            tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{region}: {_NAMES[region]}, {parts}")
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, **common))
            continue
        segment = next(s for s in SEGMENTS if s.tissue == region)
        tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{region}: {segment.label}")
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg_dataset, segment.number), **common))
    return groups


def write_sr(volumes_ml: Mapping[str, float], seg_dataset: Dataset, source_datasets: Sequence[Dataset], *,
             out: Path) -> Dataset:
    """Write ``volumes_ml`` (WT, TC, ET, NCR, ED in mL) as a TID 1500 Measurement Report referencing
    ``seg_dataset``'s segments to ``out`` atomically and return it."""
    check_series(source_datasets)
    _check_volumes(volumes_ml)
    item = _check_seg(seg_dataset, source_datasets)
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist (expected an existing output folder)")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=item.AlgorithmName, version=item.AlgorithmVersion, family=codes.DCM.ArtificialIntelligence,
        parameters=[str(item.AlgorithmParameters)] if "AlgorithmParameters" in item else None)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # one UID per model: the same device in every report that model's runs write
        uid=generate_uid(entropy_srcs=["seg-edge", str(item.get("AlgorithmParameters", "")), item.AlgorithmName]),
        name=item.AlgorithmName, manufacturer_name="seg-edge", model_name=item.AlgorithmName)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.BrainMRI,
                                     imaging_measurements=_groups(volumes_ml, seg_dataset, algorithm_id))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg_dataset, *source_datasets], content=report[0], series_instance_uid=generate_uid(),
        series_number=int(seg_dataset.get("SeriesNumber", 1000)) + 1000, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="seg-edge", is_complete=True, is_final=False, is_verified=False,
        series_description=f"seg-edge {item.AlgorithmName} volumes"[:64])
    with atomic_write(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return sr
