"""``seg-edge predict STUDY_DIR``: a DICOM study in, DICOM SEG and SR out, beside the raw study's NIfTI outputs.

The steps (``segment_study``):

1. ``series.scan_study``: the study's series from their headers (a folder at any depth, or a ``.zip``);
2. ``select.select``: one series per modality by the shipped rules, a site's file (``--rules``) or by hand
   (``--series``); the choice is the caller's to print (``StudyPlan.lines``) and goes into the report;
3. ``volume.read_series`` for each chosen series, with its own geometry, saved as a temporary NIfTI;
4. ``preprocess.study.segment_raw``: the raw-series pipeline (co-registration to the reference series, skull
   stripping, the atlas), the model on the atlas grid, labels back on the reference series' (T1ce's) grid;
5. in the same staged set as the raw pipeline's NIfTI, transforms, viewer files and report (``ExtraOutputs``):
   a BINARY DICOM SEG on the reference series' own frames (``seg.write_seg``) and a TID 1500 SR with each
   region's volume in mL (``sr.write_sr``), both naming the model (name, version, sha256) from its card.

The report gains the selection (series numbers, descriptions, UIDs, why each was chosen) and the DICOM outputs;
no patient name or ID is written to it or logged. Errors from the pipeline name the series (number and
description), not the temporary NIfTI it was read from.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg_edge.card import ModelCard
from seg_edge.dicom.detect import is_dicom_study
from seg_edge.dicom.rules import load_rules
from seg_edge.dicom.select import Selection, select, selection_lines
from seg_edge.dicom.series import ScanResult, SeriesInfo, scan_study
from seg_edge.dicom.seg import frames_from_nifti, write_seg
from seg_edge.dicom.sr import write_sr
from seg_edge.dicom.volume import SeriesVolume, read_series, save_series
from seg_edge.errors import InputError
from seg_edge.preprocess.pipeline import RawOptions
from seg_edge.preprocess.study import ExtraOutputs, NativeLabels, RawOutputs, raw_targets, segment_raw
from seg_edge.runtime.io import strip_nifti
from seg_edge.runtime.jobs import Job
from seg_edge.runtime.regions import label_set
from seg_edge.runtime.segmenter import Segmenter

__all__ = ["StudyOptions", "StudyPlan", "StudyResult", "check_card", "is_dicom_study", "model_identity",
           "plan_study", "segment_study", "study_targets"]

_LO_MAX = 64


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    """How a DICOM study is segmented: the selection rules (a site's file; None: the shipped ones), series
    chosen by hand (modality → SeriesInstanceUID), and the raw pipeline's options and outputs."""

    rules: Path | None = None
    manual: dict[str, str] | None = None
    raw: RawOptions
    outputs: RawOutputs


@dataclass(frozen=True)
class StudyPlan:
    """A scanned study and its selection, before anything is read or written."""

    scan: ScanResult
    selection: Selection
    lines: list[str]  # the choice, one line per modality (``select.selection_lines``)
    seconds: float  # scanning and choosing took


@dataclass
class StudyResult:
    """One study's outcome: the files written (label map last), the SEG and SR, the report, the volumes
    (mL, on the reference series' grid) and the selection's lines."""

    files: list[Path]
    seg: Path
    sr: Path
    report: dict[str, Any]
    volumes_ml: dict[str, float]
    selection_lines: list[str]


def check_card(card: ModelCard) -> None:
    """InputError unless the model takes inputs on the atlas grid: a study's series are put there (as ``--raw``
    does) and nowhere else."""
    if card.inputs.space != "atlas":
        raise InputError(f"model {card.name!r} takes inputs in {card.inputs.space} space (card inputs.space): a "
                         "DICOM study is segmented as raw series put on the atlas grid, which this model does "
                         "not expect")


def check_labels(segmenter: Segmenter) -> None:
    """InputError unless the labels written are NCR, ED and ET: the SEG holds those three segments (a label set
    with RC, brats2024-gli-post, would be written under the 2021 segments' names)."""
    written = label_set(segmenter.scheme)
    if set(written) != {"NCR", "ED", "ET"}:
        labels = ", ".join(f"{value} {name}" for name, value in written.items())
        raise InputError(f"model {segmenter.card.name!r}: labels {segmenter.scheme} ({labels}): the DICOM SEG holds "
                         "three segments, NCR, ED and ET (expected a brats2021 or brats2023 label scheme)")


def model_identity(card: ModelCard) -> tuple[str, str, str]:
    """The model's name, version and checkpoint sha256 as its card records them, for the SEG and the SR.

    The version is the card's ``provenance.version`` where an importer recorded one, else its precision and
    export time (the card has no other version); a card without a sha256 is refused: the SEG must say which
    weights made it."""
    prov = card.provenance
    sha256 = str(prov.get("source_sha256") or prov.get("checkpoint_sha256") or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InputError(f"model {card.name!r}: card provenance source_sha256/checkpoint_sha256 {sha256 or 'absent'} "
                         "(expected the checkpoint's sha256, which the DICOM SEG records)")
    version = str(prov.get("version") or "")
    if not version:
        exported = str(prov.get("exported_at") or prov.get("imported_at") or "")
        version = f"{card.precision}, card {card.schema}.{card.schema_minor}" + (f", {exported}" if exported else "")
    return card.name[:_LO_MAX], version[:_LO_MAX], sha256


def plan_study(folder: Path, options: StudyOptions) -> StudyPlan:
    """Scan ``folder`` and choose its series (InputError, one line, for an ambiguous or incomplete study)."""
    start = time.perf_counter()
    rules = load_rules(options.rules)
    scanned = scan_study(folder)
    selection = select(scanned.series, rules, manual=options.manual)
    if options.raw.reference not in selection.chosen:
        raise InputError(f"reference series {options.raw.reference} (expected one of {', '.join(selection.chosen)})")
    return StudyPlan(scanned, selection, selection_lines(selection), time.perf_counter() - start)


def _job(out: Path, files: dict[str, Path] | None = None) -> Job:
    return Job(strip_nifti(Path(out).name), files or {}, Path(out))


def _dicom_targets(out: Path) -> dict[str, Path]:
    stem = strip_nifti(Path(out).name)
    return {"seg": Path(out).with_name(f"{stem}_seg.dcm"), "sr": Path(out).with_name(f"{stem}_sr.dcm")}


def study_targets(out: Path, card: ModelCard, options: StudyOptions) -> list[Path]:
    """Every file ``segment_study`` writes for label map ``out``, the label map last (checked before work)."""
    order = tuple(dict.fromkeys((*card.modalities, options.raw.reference)))
    extra = ExtraOutputs(targets=_dicom_targets(out), write=lambda labels, staged: {})
    return list(raw_targets(_job(out), order, options.outputs, extra).values())


def segment_study(folder: Path, segmenter: Segmenter, *, out: Path, options: StudyOptions,
                  plan: StudyPlan | None = None) -> StudyResult:
    """Segment the DICOM study in ``folder`` (module doc); ``out`` is the label map's path (``<study>.nii.gz``),
    the SEG and SR are ``<study>_seg.dcm`` and ``<study>_sr.dcm`` beside it. ``plan``: a ``plan_study`` result
    already made (the CLI prints the choice before the work starts)."""
    check_card(segmenter.card)
    check_labels(segmenter)
    name, version, sha256 = model_identity(segmenter.card)
    plan = plan or plan_study(folder, options)
    order = tuple(dict.fromkeys((*segmenter.card.modalities, options.raw.reference)))
    chosen = {m: plan.selection.chosen[m] for m in order}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seg-edge-dicom-") as tmp:
        volumes: dict[str, SeriesVolume] = {}
        files: dict[str, Path] = {}
        for m, info in chosen.items():
            volumes[m] = read_series(info)
            files[m] = Path(tmp) / _nifti_name(info, m)
            save_series(volumes[m], files[m])
        read_s = time.perf_counter() - start
        reference = volumes[options.raw.reference]
        targets = _dicom_targets(out)

        def write(result: NativeLabels, staged: dict[str, Path]) -> dict[str, Any]:
            frames = frames_from_nifti(result.labels, result.affine, reference.datasets)
            seg = write_seg(frames, reference.datasets, model_name=name, model_version=version,
                            model_sha256=sha256, label_scheme=result.label_scheme, out=staged["seg"])
            sr = write_sr({k: round(v, 4) for k, v in result.volumes_ml.items()}, seg, reference.datasets,
                          out=staged["sr"])
            return _report_entries(folder, plan, options, targets, seg, sr, reference.info)

        try:
            raw = segment_raw(_job(out, files), segmenter, options.raw, options.outputs,
                              extra=ExtraOutputs(targets=targets, write=write, stage="seg_sr",
                                                 timings={"scan_select": plan.seconds, "read_dicom": read_s}))
        except InputError as exc:
            raise InputError(_named(str(exc), files, chosen)) from None
    return StudyResult(files=raw.files, seg=targets["seg"], sr=targets["sr"], report=raw.report,
                       volumes_ml=raw.volumes_ml, selection_lines=plan.lines)


def _nifti_name(info: SeriesInfo, modality: str) -> str:
    """The temporary NIfTI's name: the pipeline's warnings name a series by its file, so the file is named as
    the series (number and description, reduced to a safe file name)."""
    words = re.sub(r"[^A-Za-z0-9._+-]+", "_", info.description or info.protocol or modality).strip("._")[:40]
    # uncompressed: a temporary file read once, and gzip cost ~1.2 s to write a 256x256x192 series (measured)
    return f"series{info.number if info.number is not None else ''}_{words or modality}.nii"


def _named(message: str, files: dict[str, Path], chosen: dict[str, SeriesInfo]) -> str:
    """The pipeline's message with each temporary NIfTI named as the series it holds."""
    for m, path in files.items():
        message = message.replace(str(path), f"series {chosen[m].label} ({m})")
    return message


def _series_entry(info: SeriesInfo, why: str) -> dict[str, Any]:
    return {"series_number": info.number, "description": info.description, "protocol": info.protocol,
            "series_instance_uid": info.series_uid, "images": info.images, "why": why}


def _report_entries(folder: Path, plan: StudyPlan, options: StudyOptions, targets: dict[str, Path], seg: Any,
                    sr: Any, reference: SeriesInfo) -> dict[str, Any]:
    """What the DICOM study adds to the raw study's report (replacing its temporary NIfTI inputs)."""
    selection = plan.selection
    return {
        "inputs": {m: f"series {s.label} ({s.series_uid})" for m, s in selection.chosen.items()},
        "space": f"labels on the reference series' own grid ({options.raw.reference}: series {reference.label})",
        "dicom": {
            "study": str(folder),
            "study_instance_uid": reference.study_uid,
            "files_skipped": plan.scan.skipped,
            "rules": str(options.rules) if options.rules is not None else "shipped",
            "selection": {m: _series_entry(s, selection.reasons[m]) for m, s in selection.chosen.items()},
            "excluded": [{"series_number": s.number, "description": s.description, "why": why}
                         for s, why in selection.excluded],
            "reference": {"modality": options.raw.reference, "series_instance_uid": reference.series_uid},
            "seg": {"file": str(targets["seg"]), "series_instance_uid": str(seg.SeriesInstanceUID),
                    "sop_instance_uid": str(seg.SOPInstanceUID), "segmentation_type": "BINARY",
                    "frames": int(seg.NumberOfFrames)},
            "sr": {"file": str(targets["sr"]), "series_instance_uid": str(sr.SeriesInstanceUID),
                   "sop_instance_uid": str(sr.SOPInstanceUID), "template": "TID 1500"},
        },
    }
