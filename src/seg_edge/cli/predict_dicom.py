"""``seg-edge predict STUDY_DIR``: a DICOM study (folder or ``.zip``) in, labels, DICOM SEG and SR out
(``seg_edge.dicom.study``). ``--raw`` is implied: the series are raw scanner series.

Kept apart from ``predict`` so that the NIfTI path imports nothing of pydicom or highdicom (the ``dicom`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from seg_edge.cli.console import err, out
from seg_edge.cli.options import dumps, model_path, report_auto
from seg_edge.cli.predict_raw import check_raw_options, raw_options, render_raw
from seg_edge.errors import InputError, MissingExtra


@dataclass(frozen=True, kw_only=True)
class DicomRequest:
    """What ``predict`` was asked, for a DICOM study."""

    study: Path
    out: Path | None
    model: Path | None
    backend: str | None
    threads: int | None
    precision_hint: str | None
    use_profile: bool
    url: str | None
    overwrite: bool
    preview: bool
    probabilities: bool
    every_series: bool
    json_out: bool
    series: str | None
    rules: Path | None
    atlas: Path | None
    atlas_brain: Path | None
    coregister_to: str | None


def not_dicom_options(*, series: str | None, rules: Path | None, source: Path | None) -> None:
    """InputError for the DICOM-only options given with NIfTI input."""
    given = [n for n, v in (("--series", series), ("--rules", rules)) if v is not None]
    if given:
        raise InputError(f"{', '.join(given)} apply to a DICOM study (a folder or .zip of DICOM files); "
                         f"{source if source is not None else 'the input'} holds no DICOM")


def check_dicom_options(*, files: dict[str, Path], engine_is_local: bool, modalities: str | None,
                        resample: bool, atlas: Path | None, atlas_brain: Path | None,
                        coregister_to: str | None) -> None:
    """InputError for options a DICOM study cannot take (it is read as raw series: ``--raw``'s own checks)."""
    if files:
        raise InputError(f"{', '.join('--' + m for m in files)}: the input is a DICOM study; give either a study "
                         "or NIfTI series, not both")
    check_raw_options(engine_is_local=engine_is_local, modalities=modalities, resample=resample, atlas=atlas,
                      atlas_brain=atlas_brain, coregister_to=coregister_to)


def _study_module() -> Any:
    try:
        from seg_edge.dicom import study
    except ImportError as exc:
        missing = MissingExtra.from_import(exc)
        if missing is None:
            raise
        raise MissingExtra(missing.module, needed_for="a DICOM study") from None
    return study


def _label_path(study: Path, out: Path | None) -> Path:
    """The label map's path: ``--out`` as a file name, or ``<folder>/<study name>.nii.gz``."""
    from seg_edge.runtime.jobs import DEFAULT_OUT, output_kind

    name = study.name[:-4] if study.is_file() and study.name.lower().endswith(".zip") else study.name
    if output_kind(out) == "file":
        return out  # type: ignore[return-value]
    return (out or DEFAULT_OUT) / f"{name}.nii.gz"


def predict_dicom(request: DicomRequest, segmenter_options: dict[str, Any]) -> None:
    """Choose the study's series (printed), segment it, write the set, render the result."""
    study = _study_module()
    from seg_edge.dicom.select import parse_manual
    from seg_edge.preprocess.study import RawOutputs
    from seg_edge.runtime.jobs import Job
    from seg_edge.runtime.outputs import check_targets

    manual = parse_manual(request.series) if request.series is not None else None
    options = study.StudyOptions(
        rules=request.rules, manual=manual,
        raw=raw_options(request.atlas, request.atlas_brain, request.coregister_to, request.threads),
        outputs=RawOutputs(probabilities=request.probabilities, preview=request.preview,
                           native_series=request.every_series, overwrite=request.overwrite))
    if request.preview:
        from seg_edge.runtime.pictures import require_pillow

        require_pillow()
    from seg_edge.artifact import load_artifact

    artifact = load_artifact(model_path(request.model))
    study.check_card(artifact.card)
    study.model_identity(artifact.card)  # a card the SEG cannot name is refused before any work
    label_map = _label_path(request.study, request.out)
    check_targets(study.study_targets(label_map, artifact.card, options), request.overwrite)
    plan = study.plan_study(request.study, options)
    console = err if request.json_out else out
    for line in plan.lines:
        console.print(escape(line), highlight=False)
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    seg_options = SegmenterOptions(**segmenter_options, probabilities=True)  # the way back resamples them
    with Segmenter.open_profiled(artifact, request.backend, request.threads, seg_options, request.precision_hint,
                                 request.use_profile, request.url) as segmenter:
        report_auto(segmenter.session, err)
        if segmenter.profile_note:
            err.print(segmenter.profile_note, markup=False, highlight=False)
        result = study.segment_study(request.study, segmenter, out=label_map, options=options, plan=plan)
    if request.json_out:
        out.print_json(dumps({"status": "done", **result.report, "selection": result.selection_lines,
                              "files": [str(f) for f in result.files]}))
        return
    render_raw([(Job(result.report["case_id"], request.study, label_map), result)], False)
    for path in result.files:  # the label map last, as they were renamed into place
        out.print(f"wrote {escape(str(path))}", highlight=False)
