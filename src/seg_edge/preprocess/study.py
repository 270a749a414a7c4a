"""``seg-edge predict --raw``: a study's raw scanner series to labels in the scanner's own space.

The series are put on the atlas grid (``pipeline.preprocess_study``: co-registration to the reference
series, skull stripping, affine registration to the atlas, one resampling each), the model segments
them there, and the result goes back to the reference series' own grid by resampling the model's
*probabilities* (linear) and deciding the labels there — never the labels with nearest neighbour. The
ET clean-up rule is decided once, on the atlas grid (its sizes are 1 mm voxels), and carried back by
removing the ET probability where it relabelled ET as NCR.

Outputs beside ``<case>.nii.gz`` (labels on the reference series' grid, written last): ``_atlas.nii.gz``
(labels on the atlas grid), ``_brain.nii.gz`` (the brain mask on the reference grid), one
``_<series>_from_atlas.tfm`` per series (ITK transforms, LPS, mapping an atlas point to that series'
point: what 3D Slicer and ITK-SNAP load), the labels' names and colours for ITK-SNAP (``_labels.txt``) and
3D Slicer (``_labels.ctbl``), the report, on request the probabilities (reference grid), labels on every
series' own grid and the QC picture, and whatever a caller adds (``ExtraOutputs``: the DICOM study's SEG and
SR), all staged and renamed as one set.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from seg_edge.errors import InputError
from seg_edge.preprocess.pipeline import Preprocessed, RawOptions, preprocess_study, to_native
from seg_edge.preprocess.transforms import compose, invert, write_transform
from seg_edge.runtime.io import Case, find_modalities, write_volume
from seg_edge.runtime.jobs import Job
from seg_edge.runtime.labelfiles import itksnap_labels, slicer_color_table
from seg_edge.runtime.outputs import StagedOutputs, report_dict
from seg_edge.runtime.postprocess import to_labels
from seg_edge.runtime.segmenter import Segmentation, Segmenter, region_volumes


@dataclass(frozen=True)
class RawOutputs:
    """What ``predict --raw`` writes for one study (``Job.out`` is the label map on the reference grid)."""

    probabilities: bool = False
    preview: bool = False
    native_series: bool = False  # labels on every series' own grid too
    overwrite: bool = False


@dataclass(frozen=True)
class NativeLabels:
    """A study's result as an extra writer gets it: the labels on the reference series' grid (x, y, z, as
    written to the label map), that grid's RAS affine (as nibabel reads the label map back), the region
    volumes in mL and the label scheme."""

    labels: np.ndarray
    affine: np.ndarray
    volumes_ml: dict[str, float]
    label_scheme: str


@dataclass(frozen=True)
class ExtraOutputs:
    """Files a caller adds to the study's staged set (the DICOM study: its SEG and SR). ``targets`` are
    checked and renamed with the others (before the report and the label map); ``write(result, staged)``
    writes each role's file to ``staged[role]`` and returns entries for the report (merged at its top level)."""

    targets: dict[str, Path]
    write: Callable[[NativeLabels, dict[str, Path]], dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)  # stages the caller ran first (s): first, in the total
    stage: str = "extra_outputs"  # the name writing them is timed under


@dataclass
class RawResult:
    """One study's outcome: the files written (label map last) and its report."""

    job: Job
    files: list[Path]
    report: dict[str, Any]
    volumes_ml: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def _beside(job: Job, suffix: str) -> Path:
    return job.out.with_name(job.out.name.removesuffix(".gz").removesuffix(".nii") + suffix)


def raw_targets(job: Job, modalities: tuple[str, ...], outputs: RawOutputs,
                extra: ExtraOutputs | None = None) -> dict[str, Path]:
    """Every file a study writes, by role, the label map last (its presence marks a finished study)."""
    targets = {"atlas": _beside(job, "_atlas.nii.gz"), "brain": _beside(job, "_brain.nii.gz"),
               "itksnap": _beside(job, "_labels.txt"), "slicer": _beside(job, "_labels.ctbl")}
    targets |= {f"tfm:{m}": _beside(job, f"_{m}_from_atlas.tfm") for m in modalities}
    if outputs.native_series:
        targets |= {f"series:{m}": _beside(job, f"_labels_on_{m}.nii.gz") for m in modalities}
    if outputs.probabilities:
        targets["probabilities"] = job.probabilities
    if outputs.preview:
        targets["preview"] = job.preview
    for role, path in (extra.targets.items() if extra is not None else ()):
        if role in targets or path in targets.values() or path in (job.report, job.out):
            raise ValueError(f"extra output {role}: {path} is already one of the study's outputs")
        targets[role] = path
    targets["report"] = job.report
    targets["labels"] = job.out
    return targets


def study_files(job: Job, modalities: tuple[str, ...]) -> dict[str, Path]:
    """The study's series by modality: named files, or found in its folder by their BraTS tags."""
    if isinstance(job.source, dict):
        missing = [m for m in modalities if m not in job.source]
        if missing:
            raise InputError(f"{job.case_id}: --raw needs every series the model reads and the reference "
                             f"({', '.join(modalities)}); missing {', '.join('--' + m for m in missing)}")
        return {m: job.source[m] for m in modalities}
    if not job.source.is_dir():
        raise InputError(f"{job.source}: --raw reads a study folder (one NIfTI per series, named by modality) "
                         "or --flair/--t1/--t1ce/--t2, not a stack")
    return find_modalities(job.source, modalities)


def rule_free_probabilities(seg: Segmentation, segmenter: Segmenter) -> np.ndarray:
    """The atlas-grid probabilities with the ET rule's decisions in them: where the rule relabelled ET as
    NCR, ET's probability is taken away (sigmoid: set to 0; softmax: moved to NCR), so labels decided from
    these probabilities on another grid keep the rule's result."""
    if seg.probabilities is None:
        raise RuntimeError("predict --raw needs the segmenter's probabilities (SegmenterOptions.probabilities)")
    probs = seg.probabilities.astype(np.float32, copy=True)
    if not seg.et_relabelled_voxels:
        return probs
    outputs, et = segmenter.card.outputs, segmenter.et
    # the rule writes 1: NCR, or NETC in the 2024 sets
    relabelled = (to_labels(probs, outputs, et, values=segmenter.values) == et) & (seg.labels == 1)
    channels = list(outputs.channels)
    if outputs.kind == "sigmoid":
        probs[channels.index("ET")][relabelled] = 0.0
    else:
        ncr = next(name for name in channels if segmenter.values.get(name) == 1)
        probs[channels.index(ncr)][relabelled] += probs[channels.index("ET")][relabelled]
        probs[channels.index("ET")][relabelled] = 0.0
    return probs


def _nifti(path: Path) -> nib.Nifti1Image:
    """A series already read and checked by the pipeline, opened again for its header (NIfTI-1 or -2)."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise InputError(f"{path}: not a NIfTI image")
    return img


def native_case(path: Path, case_id: str) -> Case:
    """A label-less Case holding ``path``'s grid (affine, header): what ``write_volume`` writes onto."""
    img = _nifti(path)
    return Case(case_id, np.zeros((0,), np.float32), img.affine, img.header, {"reference": path})


def labels_on(probs: np.ndarray, segmenter: Segmenter) -> np.ndarray:
    """Labels decided from (K, …) probabilities by the card's output rule."""
    return to_labels(probs, segmenter.card.outputs, segmenter.et, values=segmenter.values)


def segment_raw(job: Job, segmenter: Segmenter, options: RawOptions, outputs: RawOutputs, *,
                extra: ExtraOutputs | None = None) -> RawResult:
    """One raw study: preprocess, segment on the atlas grid, labels back on the reference grid, write (with
    ``extra``'s files, in the same staged set)."""
    card = segmenter.card
    if card.inputs.space != "atlas":
        raise InputError(f"model {card.name!r} takes inputs in {card.inputs.space} space (card inputs.space): "
                         "--raw puts the series on the atlas grid, which this model does not expect")
    start = time.perf_counter()
    order = tuple(dict.fromkeys((*card.modalities, options.reference)))
    files = study_files(job, order)
    targets = raw_targets(job, order, outputs, extra)
    pre = preprocess_study(files, card.modalities, options=options)
    pre.case.case_id = job.case_id
    seg = segmenter.predict(pre.case)
    t0 = time.perf_counter()
    atlas_probs = rule_free_probabilities(seg, segmenter)
    probs = to_native(atlas_probs, pre)
    labels = labels_on(probs, segmenter)
    reference = native_case(files[options.reference], job.case_id)
    spacing = reference.spacing
    volumes = region_volumes(labels, segmenter.et, spacing, scheme=segmenter.scheme)
    per_series = ({m: labels if m == options.reference else labels_on(to_native(atlas_probs, pre, m), segmenter)
                   for m in order} if outputs.native_series else {})
    # the segmenter's "preprocess" is its crop and normalisation: named so beside the raw series' own stages
    segmenting = {("normalise" if k == "preprocess" else k): v for k, v in seg.timings.items()}
    before = extra.timings if extra is not None else {}
    timings = {**before, **pre.timings, **segmenting, "back_to_scanner": round(time.perf_counter() - t0, 4)}
    report = _report(seg, job, segmenter, pre, volumes, targets, timings, files, options)
    with StagedOutputs(list(targets.values()), outputs.overwrite) as staged:
        write_volume(seg.labels.astype(np.uint8), pre.case, staged.temp(targets["atlas"]))
        write_volume(_array(pre.brain_native).astype(np.uint8), reference, staged.temp(targets["brain"]))
        for m in order:
            _write_tfm(pre.series_from_atlas[m], staged.temp(targets[f"tfm:{m}"]))
        for m, on_m in per_series.items():
            write_volume(on_m.astype(np.uint8), native_case(files[m], job.case_id), staged.temp(targets[f"series:{m}"]))
        if outputs.probabilities:
            write_volume(np.moveaxis(probs, 0, -1).astype(np.float32), reference, staged.temp(targets["probabilities"]),
                         f"seg-edge {card.outputs.kind} probabilities: {','.join(card.outputs.channels)}")
        if outputs.preview:
            staged.temp(targets["preview"]).write_bytes(_qc_png(pre, files, labels, volumes, segmenter, options))
        staged.temp(targets["itksnap"]).write_text(itksnap_labels(seg.label_scheme, model=card.name))
        staged.temp(targets["slicer"]).write_text(slicer_color_table(seg.label_scheme, model=card.name))
        if extra is not None:
            t1 = time.perf_counter()
            result = NativeLabels(labels=labels.astype(np.uint8), affine=np.asarray(reference.affine),
                                  volumes_ml=volumes, label_scheme=seg.label_scheme)
            report.update(extra.write(result, {role: staged.temp(targets[role]) for role in extra.targets}))
            report["timings_s"][extra.stage] = round(time.perf_counter() - t1, 4)
        report["timings_s"]["total"] = round(time.perf_counter() - start + sum(before.values()), 4)
        staged.temp(targets["report"]).write_text(json.dumps(report, indent=2))
        write_volume(labels.astype(np.uint8), reference, staged.temp(targets["labels"]))
        staged.commit()
    return RawResult(job, list(targets.values()), report, volumes, report["timings_s"])


def _array(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image's voxels in NIfTI/nibabel order (x, y, z): SimpleITK's array is (z, y, x)."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def _write_tfm(transform: sitk.Transform, staged: Path) -> None:
    """``transform`` as an ITK .tfm at the staging path (ITK picks its format from the name: written beside
    under a .tfm name first)."""
    with tempfile.TemporaryDirectory(dir=staged.parent, prefix=".seg-edge-tfm-") as folder:
        staged.write_bytes(write_transform(transform, Path(folder) / "t.tfm").read_bytes())


def _on_reference(pre: Preprocessed, files: dict[str, Path], modality: str, reference: str) -> np.ndarray:
    """Series ``modality`` resampled (linear) onto the reference series' grid, for the QC picture."""
    series_from_reference = compose(pre.series_from_atlas[modality], invert(pre.series_from_atlas[reference]))
    moving = sitk.ReadImage(str(files[modality]), sitk.sitkFloat32)
    return _array(sitk.Resample(moving, pre.reference, series_from_reference, sitk.sitkLinear, 0.0))


def _qc_png(pre: Preprocessed, files: dict[str, Path], labels: np.ndarray, volumes: dict[str, float],
            segmenter: Segmenter, options: RawOptions) -> bytes:
    """The QC picture (``figure.qc_image``) as PNG bytes."""
    from seg_edge.preprocess.figure import qc_image
    from seg_edge.runtime.pictures import encode_png

    ref = options.reference
    reference = _nifti(files[ref])
    others = {m: _on_reference(pre, files, m, ref) for m in files if m != ref}
    lines: list[tuple[tuple[int, ...] | None, str, str]] = [(None, f"registered to {ref}", "moved by")]
    for m, qc in pre.qc.get("series", {}).items():
        if m != ref:
            lines.append((None, m, f"{float(qc['rotation_deg']):.1f}°, "
                                   f"{float(np.linalg.norm(qc['translation_mm'])):.1f} mm"))
    lines.append((None, "brain", f"{float(pre.qc.get('brain_ml', 0.0)):.0f} mL"))
    lines.append((None, "", ""))
    title = f"{pre.case.case_id}: raw series, {segmenter.card.name}, {segmenter.session.name}"
    image = qc_image((ref, reference.get_fdata(dtype=np.float32)), others, _array(pre.brain_native) > 0, labels,
                     reference.affine, tuple(float(z) for z in reference.header.get_zooms()[:3]),
                     volumes=volumes, et=segmenter.et, title=title, lines=lines)
    return encode_png(image)


def _report(seg: Segmentation, job: Job, segmenter: Segmenter, pre: Preprocessed, volumes: dict[str, float],
            targets: dict[str, Path], timings: dict[str, float], files: dict[str, Path],
            options: RawOptions) -> dict[str, Any]:
    """The study's report: the usual one, with the labels' space, the native volumes and the preprocessing."""
    report = report_dict(seg, job, segmenter, preview="preview" in targets)
    report["inputs"] = {m: str(p) for m, p in files.items()}
    report["space"] = (f"labels on the reference series' own grid ({options.reference}: {files[options.reference]}); "
                       f"{targets['atlas']} on the atlas grid")
    report["volumes_ml"] = {k: round(v, 3) for k, v in volumes.items()}
    report["volumes_ml_atlas_grid"] = {k: round(v, 3) for k, v in seg.volumes_ml.items()}
    report["viewer_files"] = {"itksnap": str(targets["itksnap"]), "slicer": str(targets["slicer"])}
    report["preprocessing"] = {
        **pre.qc,
        "reference": options.reference,
        "outputs": {"atlas_labels": str(targets["atlas"]), "brain_mask": str(targets["brain"]),
                    "transforms": {m: str(p) for k, p in targets.items() if k.startswith("tfm:")
                                   for m in [k.split(":", 1)[1]]},
                    **({"labels_on_series": {k.split(":", 1)[1]: str(p) for k, p in targets.items()
                                             if k.startswith("series:")}}
                       if any(k.startswith("series:") for k in targets) else {})},
    }
    if "probabilities" in targets:
        report["probabilities"]["file"] = str(targets["probabilities"])
        report["probabilities"]["grid"] = "the reference series' own grid"
    report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    report["warnings"] = list(dict.fromkeys([*pre.case.warnings, *seg.warnings]))
    return report
