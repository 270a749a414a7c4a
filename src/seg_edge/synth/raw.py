"""Synthetic raw studies: what a scanner (and dcm2niix) produces, with the truth a test needs.

A study is the MNI152 phantom's brain (the one ``write_case(seed, index, anatomy="mni152")`` writes, turned 180°
about the vertical axis so that it faces the front: see ``facing_front``) inside a head with skull and scalp
(``synth.head``), placed in the scanner with a random pose, and acquired as four series, each after its own
patient motion, on its own grid (``synth.scanner.PROTOCOL``: sagittal 3D T1, axial 3D T1ce, axial 2D T2,
tilted axial 2D FLAIR). Layout, for case id ``SynRaw_<seed>_<index>``::

    <id>/<id>_{t1,t1ce,t2,flair}.nii.gz   the raw series: int16, head with skull, own grids (qform = sform)
    <id>/truth/truth.json                 the true transforms, grids, motion and scanner settings
    <id>/truth/atlas_seg.nii.gz           labels on the atlas grid (BraTS's 240×240×155 1 mm grid)
    <id>/truth/atlas_brain.nii.gz         the true brain mask there (uint8 0/1)
    <id>/truth/native_seg.nii.gz          labels on the reference (t1ce) series' grid (one-hot, linear, argmax)
    <id>/truth/native_brain.nii.gz        the brain mask on that grid (linear, >= 0.5)
    <id>/truth/ideal/<id>_*.nii.gz        each raw series through its true transform onto the atlas grid
                                          (linear), times the true brain mask: the perfectly preprocessed case

A series' ``world_from_atlas_ras`` maps a point of the atlas grid's world (RAS mm) to the same anatomical point
in that series' world (RAS mm); the true co-registration of t1ce to flair is
``W_flair @ inv(W_t1ce)``. ``scale`` < 1 makes a smaller study with the same fields of view and larger voxels
(0.5: 2 mm atlas voxels, for tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from seg_edge.card import MODALITIES
from seg_edge.errors import InputError
from seg_edge.synth.head import build_head
from seg_edge.synth.phantom import REFERENCE_SHAPE, Phantom, make_phantom
from seg_edge.synth.writer import save_nifti
from seg_edge.synth.scanner import (MOTION_ROTATION_DEG, MOTION_SHIFT_MM, POSE_ROTATION_DEG, POSE_SHIFT_MM,
                                    PROTOCOL, Acquisition, SeriesSpec, acquire, box_through, euler_matrix, limited,
                                    resample_box, rigid, series_affine)

REFERENCE = "t1ce"
SCHEMA = 1
MIN_SCALE, MAX_SCALE = 0.25, 1.0
DEFAULT_BIAS, MAX_BIAS = 0.07, 0.2
PLACEMENT_MM = np.array([5.0, 5.0, 3.0])  # how far off the brain's centre a field of view may be (RAS mm)


def raw_case_id(seed: int, index: int) -> str:
    """``SynRaw_<seed:04d>_<index:03d>``."""
    return f"SynRaw_{seed:04d}_{index:03d}"


def atlas_grid(scale: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The atlas grid's shape and RAS affine: BraTS's (``brats_affine``) at ``scale`` 1, coarser below."""
    shape = tuple(round(n * scale) for n in REFERENCE_SHAPE)
    voxel = 1.0 / scale
    affine = np.diag([-voxel, -voxel, voxel, 1.0])
    affine[1, 3] = (shape[1] - 1) * voxel
    return shape, affine  # type: ignore[return-value]


def write_raw_study(out_dir: Path, seed: int, index: int, *, scale: float = 1.0, et_label: int = 4,
                    bias: float = DEFAULT_BIAS) -> Path:
    """Generate raw study ``index`` of ``seed`` under ``out_dir`` and return its folder (layout: module doc).

    ``bias`` is the coil bias field's spread: each series is multiplied by ``exp(bias * f)``, ``f`` a smooth field
    of unit standard deviation clipped at 2.5 (0.07: within 0.84-1.19; 0: no bias).

    Deterministic: the same arguments write the same bytes. Files are written atomically; the truth last.
    """
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise InputError(f"raw study scale {scale:g} (expected {MIN_SCALE:g} to {MAX_SCALE:g})")
    if et_label not in (3, 4):
        raise InputError(f"raw study ET label {et_label} (expected 4 for BraTS 2021 or 3 for BraTS 2023)")
    if not 0.0 <= bias <= MAX_BIAS:
        raise InputError(f"raw study bias spread {bias:g} (expected 0 to {MAX_BIAS:g})")
    shape, atlas = atlas_grid(scale)
    phantom = facing_front(make_phantom(np.random.default_rng([seed, index]), shape, et_label, "mni152"))
    brain = phantom.images[0] > 0  # the phantom's tissue mask: every brain voxel is >= 1 on every contrast
    rng = np.random.default_rng([seed, index, 22])  # the head and scanner draw from their own stream
    head = build_head(phantom.images, brain, rng, 1.0 / scale)
    head_affine = atlas @ _translation(head.offset)
    hits = np.argwhere(brain)
    centre = atlas[:3, :3] @ hits.mean(axis=0) + atlas[:3, 3]
    pose = _draw_pose(rng, centre)
    # the technologist centres each field of view on the brain as the localiser shows it (posed, before motion)
    posed = (pose["matrix"] @ atlas @ np.c_[hits[::97], np.ones(len(hits[::97]))].T)[:3]
    cid = raw_case_id(seed, index)
    folder = Path(out_dir) / cid
    (folder / "truth" / "ideal").mkdir(parents=True, exist_ok=True)
    series: dict[str, dict[str, object]] = {}
    acquired: dict[str, Acquisition] = {}
    for spec in (s.scaled(scale) for s in PROTOCOL):
        motion_deg, motion_mm = limited(rng, MOTION_ROTATION_DEG), limited(rng, MOTION_SHIFT_MM)
        world = pose["destination"]
        world_from_atlas = rigid(euler_matrix(motion_deg), world, world + motion_mm) @ pose["matrix"]
        tilt = float(rng.uniform(*spec.tilt_deg))
        plan = _centred(spec, tilt, posed) + np.array([0.0, 0.0, spec.lift_mm]) \
            + rng.uniform(-1.0, 1.0, 3) * PLACEMENT_MM
        channel = MODALITIES.index(spec.modality)
        got = acquire(head, channel, head_affine, spec, series_affine(spec, plan, tilt), world_from_atlas, rng,
                      bias=bias)
        save_nifti(got.data, got.affine, folder / f"{cid}_{spec.modality}.nii.gz")
        acquired[spec.modality] = got
        series[spec.modality] = _series_truth(spec, got, world_from_atlas, motion_deg, motion_mm, tilt)
        series[spec.modality]["file"] = f"{cid}_{spec.modality}.nii.gz"
    _write_truth_volumes(folder, cid, phantom.labels, brain, atlas, acquired, series, et_label)
    truth = {"schema": SCHEMA, "synthetic": True, "case_id": cid, "seed": seed, "index": index, "scale": scale,
             "bias_spread": bias,
             "reference": REFERENCE, "label_scheme": "brats2021" if et_label == 4 else "brats2023",
             "conventions": CONVENTIONS,
             "atlas": {"shape": list(shape), "spacing": [1.0 / scale] * 3, "affine_ras": atlas.tolist()},
             "pose": {"rotation_deg": pose["rotation_deg"].tolist(), "translation_mm": pose["shift"].tolist(),
                      "centre_atlas_ras": centre.tolist()},
             "series": series}
    _write_text(json.dumps(truth, indent=1) + "\n", folder / "truth" / "truth.json")
    return folder


def write_raw_studies(out_dir: Path, n: int, seed: int, *, scale: float = 1.0, et_label: int = 4,
                      bias: float = DEFAULT_BIAS, workers: int = 1,
                      progress: Callable[[Path], None] | None = None) -> list[Path]:
    """Write raw studies ``0 .. n-1`` of ``seed``; ``workers`` > 1 generates them in parallel processes."""
    if n < 1:
        raise InputError(f"raw study count {n} (expected at least 1)")
    write = partial(_write_indexed, Path(out_dir), seed, scale, et_label, bias)
    done: list[Path] = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        for folder in (pool.map(write, range(n)) if pool is not None else map(write, range(n))):
            done.append(folder)
            if progress:
                progress(folder)
    return done


def _write_indexed(out_dir: Path, seed: int, scale: float, et_label: int, bias: float, index: int) -> Path:
    return write_raw_study(out_dir, seed, index, scale=scale, et_label=et_label, bias=bias)


CONVENTIONS = {
    "world": "RAS millimetres, as nibabel reads the files' affines (qform = sform)",
    "world_from_atlas_ras": "maps a point of the atlas grid's world to the same anatomical point in the series' "
                            "world; co-registration of series a to series b is W_b @ inv(W_a)",
    "rotation_deg": "angles about the RAS x, y, z axes; rotation matrix Rz @ Ry @ Rx",
    "pose": "atlas world to scanner world: rotation about the brain's centre (centre_atlas_ras), which lands at "
            "translation_mm from the isocentre",
    "motion": "after the pose, before that series: rotation about the posed brain centre, then translation_mm",
}


def facing_front(phantom: Phantom) -> Phantom:
    """The phantom turned 180° about the grid's vertical axis (x and y voxel order reversed).

    ``synth.mni`` draws the MNI152 template in its own voxel order (x to the right, y to the front) onto a grid
    that ``brats_affine`` reads as x to the left and y to the back, so a SynBraTS 'mni152' case faces backwards
    in world space. The shipped atlas (and every real scan) faces the front, and the head built here puts the
    face at the front of the BraTS grid; the SynBraTS cases themselves are left as they are (models were trained
    on them).
    """
    return Phantom(images=np.ascontiguousarray(phantom.images[:, ::-1, ::-1]),
                   labels=np.ascontiguousarray(phantom.labels[::-1, ::-1]), has_et=phantom.has_et)


def _centred(spec: SeriesSpec, tilt: float, points: np.ndarray) -> np.ndarray:
    """The world point at the middle of ``points`` (3, N) along each of the series' own axes."""
    axes = series_affine(spec, np.zeros(3), tilt)[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    along = axes.T @ points
    return axes @ ((along.min(axis=1) + along.max(axis=1)) / 2.0)


def _draw_pose(rng: np.random.Generator, centre: np.ndarray) -> dict[str, np.ndarray]:
    rotation_deg = rng.uniform(-POSE_ROTATION_DEG, POSE_ROTATION_DEG, 3)
    shift = rng.uniform(-POSE_SHIFT_MM, POSE_SHIFT_MM, 3)
    return {"rotation_deg": rotation_deg, "shift": shift, "destination": shift,
            "matrix": rigid(euler_matrix(rotation_deg), centre, shift)}


def _series_truth(spec: SeriesSpec, got: Acquisition, world_from_atlas: np.ndarray, motion_deg: np.ndarray,
                  motion_mm: np.ndarray, tilt: float) -> dict[str, object]:
    return {"world_from_atlas_ras": world_from_atlas.tolist(),
            "shape": list(spec.shape), "spacing": [round(s, 6) for s in spec.spacing], "plane": spec.plane,
            "slice_mm": round(spec.spacing[2], 6), "two_d": spec.two_d, "tilt_deg": tilt,
            "axis_codes": "".join(nib.aff2axcodes(got.affine)),
            "motion": {"rotation_deg": motion_deg.tolist(), "translation_mm": motion_mm.tolist()},
            "scanner": {"scale": got.scale, "noise_sigma": got.noise, "bias_min": got.bias[0],
                        "bias_max": got.bias[1]}}


def _write_truth_volumes(folder: Path, cid: str, labels: np.ndarray, brain: np.ndarray, atlas: np.ndarray,
                         acquired: dict[str, Acquisition], series: dict[str, dict[str, object]],
                         et_label: int) -> None:
    truth = folder / "truth"
    save_nifti(labels, atlas, truth / "atlas_seg.nii.gz")
    save_nifti(brain.astype(np.uint8), atlas, truth / "atlas_brain.nii.gz")
    hits = np.argwhere(brain)
    brain_box = (np.maximum(hits.min(axis=0) - 1, 0), np.minimum(hits.max(axis=0) + 2, brain.shape))
    for name, got in acquired.items():
        world_from_atlas = np.asarray(series[name]["world_from_atlas_ras"])
        ideal = resample_box(got.data.astype(np.float32), np.linalg.inv(got.affine) @ world_from_atlas @ atlas,
                             brain.shape, brain_box)
        save_nifti(ideal * brain, atlas, truth / "ideal" / f"{cid}_{name}.nii.gz")
    ref = acquired[REFERENCE]
    to_atlas = np.linalg.inv(atlas) @ np.linalg.inv(np.asarray(series[REFERENCE]["world_from_atlas_ras"])) \
        @ ref.affine
    shape = ref.data.shape
    native_brain = resample_box(brain.astype(np.float32), to_atlas, shape, box_through(*brain_box, to_atlas, shape))
    save_nifti((native_brain >= 0.5).astype(np.uint8), ref.affine, truth / "native_brain.nii.gz")
    save_nifti(_native_labels(labels, to_atlas, shape, et_label), ref.affine, truth / "native_seg.nii.gz")


def _native_labels(labels: np.ndarray, voxel_map: np.ndarray, shape: tuple[int, ...], et_label: int) -> np.ndarray:
    """Labels on another grid: each label's one-hot channel resampled linearly, then the largest wins.

    Background is 1 minus the others (linear interpolation keeps the channels summing to one), so only the
    tumour's box on the target grid is computed.
    """
    tumour = np.argwhere(labels > 0)
    if tumour.size == 0:
        return np.zeros(shape, dtype=np.uint8)
    low, high = box_through(tumour.min(axis=0), tumour.max(axis=0) + 1, voxel_map, shape)
    out = np.zeros(shape, dtype=np.uint8)
    if (high <= low).any():
        return out
    size = tuple(int(n) for n in high - low)
    box_map = voxel_map.copy()
    box_map[:3, 3] += voxel_map[:3, :3] @ low
    values = (1, 2, et_label)
    channels = np.stack([resample_box((labels == v).astype(np.float32), box_map, size, (np.zeros(3, int),
                                      np.array(size))) for v in values])
    background = 1.0 - channels.sum(axis=0)
    winner = np.argmax(np.concatenate([background[None], channels]), axis=0)
    out[tuple(slice(int(a), int(b)) for a, b in zip(low, high))] = np.array((0,) + values, dtype=np.uint8)[winner]
    return out


def _translation(voxels: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = voxels
    return matrix


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
