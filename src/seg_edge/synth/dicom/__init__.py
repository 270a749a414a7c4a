"""Synthetic DICOM studies: a raw study (``seg_edge.synth.raw``) written as a scanner would send it.

``write_dicom_study(raw, out_dir, vendor=..., seed=...)`` writes ``out_dir/dicom/<series number>/<n>.dcm`` and
``out_dir/dicom_truth.json`` beside it: one patient (``SYNTHETIC^PHANTOM``), one study, one frame of reference;
each raw series as MR Image Storage, one file per slice (or, ``enhanced``, Enhanced MR Image Storage, one
multi-frame file per series) with the NIfTI's own geometry (voxels reordered, never resampled) and voxels;
vendor-style names and per-sequence MR tags (``protocols``); with ``extras``, the series a real study also
holds: a 3-plane localiser, DWI and its ADC map, and a coronal MPR of the T1ce. The truth lists which
SeriesInstanceUID is which. Deterministic: UIDs come from the seed, the case and the vendor.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import UID, generate_uid
from scipy import ndimage

from seg_edge.errors import InputError
from seg_edge.synth.dicom.geometry import Stack, slice_axis_for, to_stack
from seg_edge.synth.dicom.images import (TRANSFER_SYNTAXES, Header, classic_datasets, enhanced_dataset,
                                         syntax_uid, write_dataset)
from seg_edge.synth.dicom.protocols import (EQUIPMENT, NAMES, ORDER, RAW_ROLES, SEQUENCES, VENDORS,
                                            series_number)

SCHEMA = 1
PATIENT_NAME = "SYNTHETIC^PHANTOM"
LOCALIZER_PIXELS, LOCALIZER_MM, LOCALIZER_SLICE_MM = 128, 2.0, 8.0
INT16 = (-32768, 32767)

__all__ = ["PATIENT_NAME", "TRANSFER_SYNTAXES", "VENDORS", "write_dicom_study"]


def write_dicom_study(raw_study_folder: Path, out_dir: Path, *, vendor: str, enhanced: bool = False,
                      extras: bool = True, seed: int, transfer_syntax: str = "explicit") -> Path:
    """Write the raw study in ``raw_study_folder`` as DICOM under ``out_dir/dicom`` (layout: module doc) and
    return that folder. ``transfer_syntax`` names the transfer syntax (``TRANSFER_SYNTAXES``: explicit VR little endian,
    deflated, RLE, JPEG-LS or JPEG 2000 lossless). Refuses an unknown vendor or syntax, a folder that is not a
    raw study, or an existing ``out_dir/dicom``; nothing is left behind on failure (the study is written under a
    temporary name)."""
    raw = Path(raw_study_folder)
    if vendor not in VENDORS:
        raise InputError(f"DICOM vendor {vendor!r} (expected one of {', '.join(VENDORS)})")
    uid = syntax_uid(transfer_syntax)
    truth = _raw_truth(raw)
    target = Path(out_dir) / "dicom"
    if target.exists():
        raise InputError(f"{target} already exists (expected a folder not yet written)")
    volumes = {role: _load(raw / str(truth["series"][role]["file"])) for role in RAW_ROLES}
    cid = str(truth["case_id"])
    key = ["seg-edge synth dicom", str(seed), cid, vendor, "enhanced" if enhanced else "classic"]
    study = _study_attributes(truth, vendor, key)
    parts = _series_parts(volumes, truth, raw, extras)
    tmp = Path(out_dir) / ".dicom.part"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted run
    tmp.mkdir(parents=True)
    listed = []
    try:
        for position, role in enumerate(r for r in ORDER if r in parts):
            stacks, rescale, source = parts[role]
            number = series_number(vendor, position)
            description, protocol = NAMES[vendor][role]
            header = Header(study=study, series_uid=generate_uid(entropy_srcs=[*key, role, "series"]),
                            series_number=number, description=description, protocol=protocol,
                            sequence=SEQUENCES[role], entropy=[*key, role], rescale=rescale,
                            time=f"{9 + position // 10:02d}{position % 10 * 6:02d}00")  # 6 min a series
            files = _write_series(tmp / f"{number:04d}", stacks, header, enhanced, uid)
            listed.append({"series_instance_uid": header.series_uid, "series_number": number, "role": role,
                           "modality": role if role in RAW_ROLES else None, "description": description,
                           "protocol": protocol, "image_type": list(SEQUENCES[role].image_type),
                           "planes": sorted({s.plane for s in stacks}), "folder": f"{number:04d}",
                           "files": files, "frames": sum(s.pixels.shape[0] for s in stacks), "source": source})
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {"schema": SCHEMA, "synthetic": True, "case_id": cid, "vendor": vendor, "enhanced": enhanced,
              "extras": extras, "seed": seed, "study_dir": target.name, "transfer_syntax": str(uid),
              "patient": {"name": PATIENT_NAME, "id": study["PatientID"]},
              "study_instance_uid": study["StudyInstanceUID"],
              "frame_of_reference_uid": study["FrameOfReferenceUID"],
              "modalities": {e["role"]: e["series_instance_uid"] for e in listed if e["modality"]},
              "series": listed}
    _write_text(json.dumps(record, indent=1) + "\n", Path(out_dir) / "dicom_truth.json")
    return target


def _raw_truth(raw: Path) -> dict:
    path = raw / "truth" / "truth.json"
    if not path.is_file():
        raise InputError(f"{path} not found (expected a raw study written by seg-edge synth --raw)")
    truth = json.loads(path.read_text(encoding="utf-8"))
    missing = [r for r in RAW_ROLES if r not in truth.get("series", {})]
    if missing:
        raise InputError(f"{path}: series {', '.join(missing)} missing (expected {', '.join(RAW_ROLES)})")
    return truth


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Stored voxels, RAS affine and (slope, intercept); refuses what int16 DICOM pixels cannot hold as is."""
    if not path.is_file():
        raise InputError(f"{path} not found (expected the raw study's series)")
    img: nib.Nifti1Image = nib.load(path)  # type: ignore[assignment]  # a .nii.gz loads as a Nifti1Image
    proxy: nib.arrayproxy.ArrayProxy = img.dataobj  # type: ignore[assignment]  # a loaded image's voxels
    stored = np.asarray(proxy.get_unscaled())
    if stored.ndim != 3 or not np.issubdtype(stored.dtype, np.integer):
        raise InputError(f"{path}: {stored.ndim}D {stored.dtype} voxels (expected 3D integer voxels, as seg-edge "
                         f"synth --raw writes)")
    low, high = int(stored.min()), int(stored.max())
    if low < INT16[0] or high > INT16[1]:
        raise InputError(f"{path}: stored values {low} to {high} (expected within int16's {INT16[0]} to {INT16[1]})")
    slope, inter = proxy.slope, proxy.inter
    rescale = (1.0 if slope is None or np.isnan(slope) else float(slope),
               0.0 if inter is None or np.isnan(inter) else float(inter))
    return stored.astype(np.int16), np.asarray(img.affine, dtype=float), rescale


def _study_attributes(truth: dict, vendor: str, key: list[str]) -> dict[str, object]:
    day = datetime.date(2024, 1, 1) + datetime.timedelta(days=(int(truth["seed"]) * 31 + int(truth["index"])) % 700)
    manufacturer, model, software = EQUIPMENT[vendor]
    return {"PatientName": PATIENT_NAME, "PatientID": f"SYNTHETIC-{truth['case_id']}", "PatientBirthDate": "",
            "PatientSex": "O", "StudyInstanceUID": generate_uid(entropy_srcs=[
                *key, "study"]), "StudyDate": day.strftime("%Y%m%d"), "StudyTime": "090000",
            "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
            "StudyDescription": "MR BRAIN WITH AND WITHOUT CONTRAST (synthetic)",
            "FrameOfReferenceUID": generate_uid(entropy_srcs=[*key, "frame of reference"]),
            "PositionReferenceIndicator": "", "Manufacturer": manufacturer, "ManufacturerModelName": model,
            "SoftwareVersions": software, "DeviceSerialNumber": "SYNTH0001", "InstitutionName": "seg-edge synth"}


Parts = dict[str, tuple[list[Stack], tuple[float, float], str | None]]


def _series_parts(volumes: dict, truth: dict, raw: Path, extras: bool) -> Parts:
    """Each series' slices (one stack per orientation), rescale and source file, by role."""
    parts: Parts = {}
    for role, (data, affine, rescale) in volumes.items():
        source = raw / str(truth["series"][role]["file"])
        axis = slice_axis_for(affine, str(truth["series"][role]["plane"]), source)
        parts[role] = ([to_stack(data, affine, axis, source)], rescale, source.name)
    if not extras:
        return parts
    t1ce, t1ce_affine, t1ce_rescale = volumes["t1ce"]
    mpr_source = raw / str(truth["series"]["t1ce"]["file"])
    parts["mpr"] = ([to_stack(t1ce, t1ce_affine, slice_axis_for(t1ce_affine, "coronal", mpr_source), mpr_source)],
                    t1ce_rescale, None)
    t2, t2_affine, _ = volumes["t2"]
    t2_source = raw / str(truth["series"]["t2"]["file"])
    dwi, adc = _diffusion(t2)
    parts["dwi"] = ([to_stack(dwi, t2_affine, 2, t2_source)], (1.0, 0.0), None)
    parts["adc"] = ([to_stack(adc, t2_affine, 2, t2_source)], (1.0, 0.0), None)
    t1, t1_affine, _ = volumes["t1"]
    parts["localizer"] = (_localizer(t1, t1_affine, raw), (1.0, 0.0), None)
    return parts


def _diffusion(t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A b=1000 trace image (T2-weighted, darker) and an ADC map in 10^-6 mm²/s (fluid high, tissue ~800)."""
    values = t2.astype(np.float64)
    top = float(values.max()) or 1.0
    trace = np.round(values * 0.45).astype(np.int16)
    adc = np.where(values > 0.05 * top, 700.0 + 2300.0 * values / top, 0.0)
    return trace, np.round(adc).astype(np.int16)


def _localizer(t1: np.ndarray, affine: np.ndarray, raw: Path) -> list[Stack]:
    """Axial, sagittal and coronal planes through the T1's centre, scanner-aligned, sampled linearly."""
    centre = affine[:3, :3] @ ((np.array(t1.shape) - 1) / 2.0) + affine[:3, 3]
    half = LOCALIZER_MM * (LOCALIZER_PIXELS - 1) / 2.0
    stacks = []
    # in-plane u, v and normal, RAS; the planes in the order a 3-plane localiser acquires them
    for plane, (u, v, w) in (("sagittal", ((0, 1, 0), (0, 0, 1), (1, 0, 0))),
                             ("coronal", ((-1, 0, 0), (0, 0, 1), (0, 1, 0))),
                             ("axial", ((-1, 0, 0), (0, 1, 0), (0, 0, 1)))):
        grid = np.eye(4)
        grid[:3, :3] = np.column_stack([np.array(u) * LOCALIZER_MM, np.array(v) * LOCALIZER_MM,
                                        np.array(w) * LOCALIZER_SLICE_MM])
        grid[:3, 3] = centre - half * (np.array(u) + np.array(v))
        voxel_map = np.linalg.inv(affine) @ grid
        ij = np.mgrid[0:LOCALIZER_PIXELS, 0:LOCALIZER_PIXELS].reshape(2, -1)
        points = voxel_map[:3, :2] @ ij + voxel_map[:3, 3:4]
        image = ndimage.map_coordinates(t1.astype(np.float32), points, order=1, cval=0.0)
        image = np.round(image).astype(np.int16).reshape(LOCALIZER_PIXELS, LOCALIZER_PIXELS, 1)
        stacks.append(to_stack(image, grid, slice_axis_for(grid, plane, raw), raw))
    return stacks


def _write_series(folder: Path, stacks: list[Stack], header: Header, enhanced: bool, syntax: UID) -> int:
    folder.mkdir()
    if enhanced:
        write_dataset(enhanced_dataset(stacks, header), folder / "00001.dcm", syntax)
        return 1
    count = 0
    for stack in stacks:
        for ds in classic_datasets(stack, header, first_instance=count + 1):
            write_dataset(ds, folder / f"{int(ds.InstanceNumber):05d}.dcm", syntax)
            count += 1
    return count


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


