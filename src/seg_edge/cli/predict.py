"""``seg-edge predict``: segment one case or a folder of cases."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from seg_edge.cli.console import err, guarded, out
from seg_edge.errors import InputError
from seg_edge.cli.options import (HINT_OPTION, JSON_OPTION, THREADS_OPTION, Backend, Blend, Engine, LabelScheme,
                                  PrecisionHint, dumps, model_path, parse_modalities, report_auto)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)  # no stray blank line in logs


def _case_table(result) -> Table:
    report = result.report
    table = Table(title=escape(f"{report['case_id']} → {result.job.out}"), title_justify="left")
    table.add_column("region")
    table.add_column("volume (mL)", justify="right")
    for name, volume in result.volumes_ml.items():  # the label set's names: NCR/ED or NETC/SNFH/RC
        table.add_row(name, f"{volume:.2f}")
    table.add_section()
    for stage, seconds in result.timings.items():
        table.add_row(f"[dim]{stage} (s)[/]", f"[dim]{seconds:.2f}[/]")
    return table


def _summary_table(results) -> Table:
    table = Table(title="batch summary", title_justify="left")
    for col in ("case", "status", "WT mL", "TC mL", "ET mL", "seconds", "note"):
        table.add_column(col, justify="right" if "mL" in col or col == "seconds" else "left")
    for r in results:
        done = r.status == "done"
        vols = [f"{r.volumes_ml[k]:.2f}" for k in ("WT", "TC", "ET")] if done else ["", "", ""]
        secs = f"{r.timings.get('total', 0):.1f}" if done else ""
        table.add_row(escape(r.job.case_id), r.status, *vols, secs, escape(r.reason or ""))
    return table


def _result_json(r) -> dict:
    data = {"case_id": r.job.case_id, "status": r.status, "output": str(r.job.out)}
    if r.report is not None:  # the same report wherever the case ran (this process or a Ray actor)
        data.update(r.report)
        data["status"] = r.status
        data["files"] = [str(f) for f in r.files]
    if r.status == "failed":
        data["error"] = r.reason
    return data


@guarded
def predict(
    input: Path = typer.Argument(None, help="Case folder, folder of case folders, 4D NIfTI, (4,X,Y,Z) .npy, or a "
                                 "DICOM study: a folder (any depth, any file names) or .zip of DICOM files, whose "
                                 "series are chosen by rules and read as --raw series; writes a DICOM SEG and SR "
                                 "too (docs/DICOM.md; extras 'dicom' and 'preprocess')."),
    out: Path = typer.Option(None, "--out", "-o", help="Output .nii.gz, or a folder (default: the folder "
                             "predictions/ in the current directory)."),
    model: Path = typer.Option(None, "--model", "-m", help="ONNX model with a seg-edge card (default: shipped)."),
    backend: Backend = typer.Option(None, "--backend", help="Inference backend (default: the tuned profile's on "
                                    "the machine it was measured on, else onnxruntime)."),
    flair: Path = typer.Option(None, "--flair", help="FLAIR NIfTI (with --t1 --t1ce --t2)."),
    t1: Path = typer.Option(None, "--t1", help="T1 NIfTI."),
    t1ce: Path = typer.Option(None, "--t1ce", help="T1ce NIfTI."),
    t2: Path = typer.Option(None, "--t2", help="T2 NIfTI."),
    modalities: str = typer.Option(None, "--modalities", help="Volume order in a 4D NIfTI/.npy, e.g. t1,t1ce,t2,flair; "
                                   "required for a stack (never guessed)."),
    label_scheme: LabelScheme = typer.Option(None, "--label-scheme", help="The label values written: brats2021 "
                                             "(ET=4), brats2023 (ET=3) or brats2024-gli-post (ET=3, RC=4); "
                                             "only a relabelling that loses no label; default: the card's."),
    overlap: float = typer.Option(None, "--overlap", help="Sliding-window overlap, 0 <= o < 1 (default: the "
                                  "card's)."),
    blend: Blend = typer.Option(None, "--blend", help="Window blending (default: the card's)."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Mirroring test-time augmentation (default: the "
                             "card's axes; --tta without axes in the card mirrors every axis)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Windows per network call (default: 1, or "
                                   "the tuned profile's)."),
    reference: bool = typer.Option(False, "--reference", help="Run the card's own configuration, not its tuned "
                                   "profile (seg-edge tune)."),
    resample: bool = typer.Option(False, "--resample", help="Resample inputs whose voxel spacing differs from the "
                                  "model's (card inputs.spacing) to it and back; without it they are refused."),
    et_rule: bool = typer.Option(True, "--et-rule/--no-et-rule", help="Apply the card's small-ET clean-up."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write <case>_probabilities.nii.gz: one "
                                       "channel per model output, in the card's order (WT, TC, ET for a sigmoid "
                                       "card; the classes for a softmax one), named in the report and the header."),
    preview: bool = typer.Option(False, "--preview", help="Also write <case>_preview.png: FLAIR and T1ce with the "
                                 "labels, three planes through the tumour, legend and volumes (needs Pillow)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    threads: int = THREADS_OPTION,
    precision_hint: PrecisionHint = HINT_OPTION,
    json_out: bool = JSON_OPTION,
    url: str = typer.Option(None, "--url", help="--backend triton: the server's gRPC HOST:PORT[/MODEL][?shm=system] "
                            "(model: the name export-triton gave it; shm: tensors through shared memory, server "
                            "on this machine)."),
    engine: Engine = typer.Option(Engine.local, "--engine", help="A folder of cases: local (this process) or ray "
                                  "(Ray actors, one loaded model each; extra 'ray')."),
    address: str = typer.Option(None, "--address", help="--engine ray: the Ray cluster to join (HOST:PORT of its "
                                "head); default: a local Ray instance on this machine."),
    actors: int = typer.Option(None, "--actors", min=1, help="--engine ray: actors, one model each (default 2)."),
    actor_cpus: float = typer.Option(None, "--actor-cpus", help="--engine ray: CPUs each actor reserves (default 1; "
                                     "--threads defaults to it)."),
    raw: bool = typer.Option(False, "--raw", help="The input is a study's raw scanner series (own grids, skull, "
                             "motion): co-register them to the T1ce, skull-strip, register to the atlas (MNI152, not "
                             "SRI24), segment there and write the labels on the T1ce's own grid, with the atlas-grid "
                             "labels, brain mask, transforms and ITK-SNAP/Slicer label files beside them "
                             "(docs/PREPROCESSING.md; extra 'preprocess'). Implied for a DICOM study."),
    atlas: Path = typer.Option(None, "--atlas", help="--raw: a 1 mm atlas template (e.g. SRI24 T1) instead of the "
                               "shipped MNI152 one; with --atlas-brain."),
    atlas_brain: Path = typer.Option(None, "--atlas-brain", help="--raw: the --atlas template's brain mask."),
    coregister_to: str = typer.Option(None, "--coregister-to", help="--raw: the series the others are registered "
                                      "to and whose grid the labels come back on (default t1ce, as BraTS)."),
    labels_on_every_series: bool = typer.Option(False, "--labels-on-every-series", help="--raw: also write the "
                                                "labels on each series' own grid (<case>_labels_on_<series>.nii.gz)."),
    series: str = typer.Option(None, "--series", help="DICOM study: choose series by hand, MODALITY=SERIES_UID[,…] "
                               "(e.g. flair=1.2.3,t1ce=1.2.4); the rules choose the others."),
    rules: Path = typer.Option(None, "--rules", help="DICOM study: a site's series selection rules (JSON, the form "
                               "of the shipped src/seg_edge/dicom/rules.json) instead of the shipped ones."),
) -> None:
    """Segment a BraTS-style case: writes a uint8 label map (NCR=1, ED=2, ET=4 or 3) and a JSON report."""
    from seg_edge.runtime.jobs import finished, plan_jobs, start_loading  # not the segmenter's imports: see below

    if overlap is not None and not 0.0 <= overlap < 1.0:  # also NaN
        raise InputError(f"--overlap {overlap} (expected 0 <= overlap < 1)")
    files = {k: v for k, v in {"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}.items() if v is not None}
    from seg_edge.dicom.detect import is_dicom_study  # names and first bytes: no DICOM library

    if input is not None and is_dicom_study(input):  # --raw implied: a study's series are raw scanner series
        from seg_edge.cli.predict_dicom import DicomRequest, check_dicom_options, predict_dicom

        if engine == Engine.local:
            _ray_options(engine, False, address, actors, actor_cpus)  # refuses Ray's options without Ray
        check_dicom_options(files=files, engine_is_local=engine == Engine.local, modalities=modalities,
                            resample=resample, atlas=atlas, atlas_brain=atlas_brain, coregister_to=coregister_to)
        return predict_dicom(DicomRequest(
            study=input, out=out, model=model, backend=backend.value if backend else None, threads=threads,
            precision_hint=precision_hint.value if precision_hint else None, use_profile=not reference, url=url,
            overwrite=overwrite, preview=preview, probabilities=probabilities, every_series=labels_on_every_series,
            json_out=json_out, series=series, rules=rules, atlas=atlas, atlas_brain=atlas_brain,
            coregister_to=coregister_to), dict(overlap=overlap, blend=blend.value if blend else None,
                                               batch_size=batch_size, tta=tta, et_rule=et_rule,
                                               label_scheme=label_scheme.value if label_scheme else None))
    from seg_edge.cli.predict_dicom import not_dicom_options

    not_dicom_options(series=series, rules=rules, source=input)
    if raw:
        return _predict_raw(input, files, out, model, backend, threads, precision_hint, not reference, url,
                            overwrite=overwrite, preview=preview, probabilities=probabilities, json_out=json_out,
                            engine_is_local=engine == Engine.local, modalities=modalities, resample=resample,
                            atlas=atlas, atlas_brain=atlas_brain, coregister_to=coregister_to,
                            every_series=labels_on_every_series,
                            options=dict(overlap=overlap, blend=blend.value if blend else None,
                                         batch_size=batch_size, tta=tta, et_rule=et_rule,
                                         label_scheme=label_scheme.value if label_scheme else None))
    from seg_edge.cli.predict_raw import not_raw_options

    not_raw_options(atlas=atlas, atlas_brain=atlas_brain, coregister_to=coregister_to,
                    labels_on_every_series=labels_on_every_series)
    jobs, batch = plan_jobs(input, files or None, out, parse_modalities(modalities))
    ray_options = _ray_options(engine, batch, address, actors, actor_cpus)
    if not batch:
        from seg_edge.runtime.outputs import check_targets

        check_targets(jobs[0].targets(probabilities, preview), overwrite)  # before the model loads
    if preview:
        from seg_edge.runtime.pictures import require_pillow

        require_pillow()
    from seg_edge.artifact import load_artifact

    artifact = load_artifact(model_path(model))  # read once; a bad model is refused here, before any work
    first = None if ray_options is not None else next((j for j in jobs if not finished(j, overwrite)), None)
    # the first case is read while the segmenter's modules import and the model loads (Ray's actors read their own)
    loading = start_loading(first, artifact.card.modalities) if first is not None else None
    from seg_edge.runtime.runner import OutputPolicy
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    options = SegmenterOptions(overlap=overlap, blend=blend.value if blend else None, batch_size=batch_size, tta=tta,
                               label_scheme=label_scheme.value if label_scheme else None, et_rule=et_rule,
                               probabilities=probabilities, resample=resample)
    policy = OutputPolicy(overwrite=overwrite, preview=preview)
    if ray_options is not None:
        from seg_edge.engines.ray import ModelSpec

        spec = ModelSpec(model=artifact.path, backend=backend.value if backend else None,
                         threads=threads or (None if url else max(1, int(ray_options.cpus_per_actor))),
                         options=options, precision_hint=precision_hint.value if precision_hint else None,
                         use_profile=not reference, url=url)
        results = _run_on_ray(spec, jobs, policy, ray_options)
    else:
        with Segmenter.open_profiled(artifact, backend.value if backend else None, threads, options,
                                     precision_hint.value if precision_hint else None, not reference,
                                     url) as segmenter:
            report_auto(segmenter.session, err)
            if segmenter.profile_note:
                err.print(segmenter.profile_note, markup=False, highlight=False)
            results = _run_here(segmenter, jobs, batch, policy, loading)
    if not batch and results[0].error is not None:
        raise results[0].error  # one case: its error as the CLI says any error (one line, its exit code)
    _render(results, batch, json_out, jobs[0].out.parent)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _predict_raw(input, files, out, model, backend, threads, precision_hint, use_profile, url, *, overwrite, preview,
                 probabilities, json_out, engine_is_local, modalities, resample, atlas, atlas_brain, coregister_to,
                 every_series, options) -> None:
    """``--raw``: each study's series preprocessed, segmented on the atlas grid, labels back on its own grid."""
    from seg_edge.cli.predict_raw import check_raw_options, raw_options, render_raw, run_raw
    from seg_edge.runtime.jobs import plan_jobs

    check_raw_options(engine_is_local=engine_is_local, modalities=modalities, resample=resample, atlas=atlas,
                      atlas_brain=atlas_brain, coregister_to=coregister_to)
    jobs, batch = plan_jobs(input, files or None, out, None)
    if preview:
        from seg_edge.runtime.pictures import require_pillow

        require_pillow()
    pipeline = raw_options(atlas, atlas_brain, coregister_to, threads)
    from seg_edge.artifact import load_artifact
    from seg_edge.preprocess.study import RawOutputs, raw_targets
    from seg_edge.runtime.outputs import check_targets
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    artifact = load_artifact(model_path(model))
    outputs = RawOutputs(probabilities=probabilities, preview=preview, native_series=every_series,
                         overwrite=overwrite)
    if not batch:
        order = tuple(dict.fromkeys((*artifact.card.modalities, pipeline.reference)))
        check_targets(list(raw_targets(jobs[0], order, outputs).values()), overwrite)  # before any work
    seg_options = SegmenterOptions(**options, probabilities=True)  # the way back resamples probabilities
    with Segmenter.open_profiled(artifact, backend.value if backend else None, threads, seg_options,
                                 precision_hint.value if precision_hint else None, use_profile, url) as segmenter:
        report_auto(segmenter.session, err)
        if segmenter.profile_note:
            err.print(segmenter.profile_note, markup=False, highlight=False)
        results = run_raw(segmenter, jobs, batch, pipeline, outputs)
    if render_raw(results, json_out):
        raise typer.Exit(1)


def _ray_options(engine: Engine, batch: bool, address: str | None, actors: int | None, actor_cpus: float | None):
    """The Ray engine's options, or None for the local engine (which takes none of them)."""
    if engine == Engine.local:
        given = [n for n, v in (("--address", address), ("--actors", actors), ("--actor-cpus", actor_cpus))
                 if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply to --engine ray (the local engine runs in this process)")
        return None
    if not batch:
        raise InputError("--engine ray runs a folder of case folders; INPUT is one case (run it without --engine)")
    from seg_edge.engines.ray import RayOptions

    return RayOptions(address=address, actors=actors or 2, cpus_per_actor=1.0 if actor_cpus is None else actor_cpus)


def _run_here(segmenter, jobs, batch: bool, policy, loading) -> list:
    """The cases in this process (``runner.run_cases``), with a progress bar: cases, or one case's windows."""
    from seg_edge.runtime.runner import run_cases

    with _progress() as bar:
        if batch:
            task = bar.add_task("cases", total=len(jobs))
            results = []
            for result in run_cases(jobs, segmenter, policy, first=loading):
                results.append(result)
                bar.advance(task)
            return results
        task = bar.add_task(f"segmenting {jobs[0].case_id}", total=None)
        return list(run_cases(jobs, segmenter, policy, first=loading,
                              on_window=lambda done, total: bar.update(task, completed=done, total=total)))


def _run_on_ray(spec, jobs, policy, ray_options) -> list:
    """The batch on Ray actors (each calls ``runner.run_cases``), with the local engine's progress bar."""
    from seg_edge.engines.ray import run_on_ray

    with _progress() as bar:
        task = bar.add_task("cases", total=len(jobs))
        return run_on_ray(spec, jobs, policy, ray_options, lambda r: bar.advance(task),
                          lambda line: err.print(escape(line), markup=True, highlight=False))


def _render(results, batch: bool, json_out: bool, folder: Path) -> None:
    if json_out:
        data = [_result_json(r) for r in results]
        out.print_json(dumps({"cases": data, "summary": _counts(results)} if batch else data[0]))
        return
    for r in results:
        for warning in (r.report or {}).get("warnings", []):
            err.print(f"[yellow]warning:[/] {escape(warning)}")
    if batch:
        out.print(_summary_table(results))
        counts = _counts(results)
        out.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; outputs in "
                  f"{escape(str(folder))}/", highlight=False)
    else:
        out.print(_case_table(results[0]))
        for path in results[0].files:  # the label map last, as they were renamed into place
            out.print(f"wrote {escape(str(path))}", highlight=False)


def _counts(results) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
