"""``seg-edge tune``: the fastest way to segment on this machine within an accuracy budget.

The **reference** is the card's own configuration (its window, overlap and blending, the FP32 model,
ONNX Runtime); its labels on the tune cases are what every other configuration is scored against
(worst-region Dice over WT, TC and ET, the worst case counts). A configuration is an **engine** (model
file — FP32 or a sibling INT8/FP16 —, backend, precision hint, threads, windows per network call)
and a **window plan** (window size, overlap, blending, window positions rule, mirroring TTA).

The search, in order:

1. the reference runs on every case (labels, seconds);
2. a probe times one network call per engine at the card's patch and keeps, per numerics family
   (model, backend, hint), the fastest threads, parallel streams and batch; then one call per window shape the plans
   need, so that every (family, plan) has a predicted time on the first case;
3. trials in order of predicted seconds per case: each runs the first case (stopped as soon as it is
   ``PRUNE_MARGIN`` slower than the best accepted so far: "pruned"), then the other cases while its
   Dice stays within the budget; a trial predicted at more than ``PREDICTED_SLACK`` × the best's
   seconds per case is dropped unrun;
4. the fastest accepted trial (mean seconds per case) is the profile.

Times are the Segmenter's (preprocess + network + postprocess), measured, never extrapolated; the
prediction only orders and prunes the grid.

**The budget is for cases tune has not seen.** Picking the fastest of dozens of configurations that
pass on a few cases selects the ones that were lucky on those cases. Measured here (AVX-512 EPYC,
synthetic cases): with the whole budget spent on 5 tune cases, tune chose OpenVINO bf16 at overlap
0.125 with constant blending (worst-region Dice 0.9922 on the tune cases), and on 11 unseen cases it
fell to 0.979-0.986 on five of them. So a trial is accepted only while every tune case keeps
``HELD_OUT_MARGIN`` of the budget in reserve (Dice ≥ 1 − budget × (1 − margin)); the margin is
recorded in the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.card import Machine
from seg_edge.errors import InputError
from seg_edge.evaluation.tune_grid import (Engine, Family, Progress, TuneOptions, WindowChoice, check_windows,
                                           open_engines, predict_seconds, window_plans, windows_of)
from seg_edge.runtime.io import Case, load_case
from seg_edge.runtime.machine import this_machine
from seg_edge.runtime.preprocess import preprocess
from seg_edge.runtime.regions import case_folders, dice, labels_to_regions
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

__all__ = ["Family", "Trial", "TuneOptions", "TuneResult", "WindowChoice", "acceptance_threshold", "tune",
           "window_plans", "worst_region_dice"]

CPU_BACKENDS = ("onnxruntime", "openvino")
PREDICTED_SLACK = 1.5  # a trial predicted slower than this × the best's seconds per case is not run
PRUNE_MARGIN = 0.1  # a trial is stopped once its first case takes 10 % longer than the best's (timing noise)
HELD_OUT_MARGIN = 0.5  # the share of the budget a trial must leave unused on the tune cases (see the module doc)


def acceptance_threshold(budget: float) -> float:
    """The lowest worst-region Dice a trial may reach on a tune case and still be accepted."""
    return 1.0 - budget * (1.0 - HELD_OUT_MARGIN)


@dataclass
class Trial:
    """One configuration and what was measured of it (seconds and worst-region Dice per case)."""

    family: Family
    plan: WindowChoice
    threads: int | None
    batch: int
    predicted_s: float
    seconds: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    status: str = "not run"  # accepted | over budget | pruned (slower) | pruned (predicted) | failed: ...
    streams: int = 1

    @property
    def worst_dice(self) -> float:
        """Worst region's Dice over the cases run; read only for a trial that ran (``dice`` not empty)."""
        if not self.dice:
            raise ValueError(f"trial {self.label()} has no Dice measured")
        return min(self.dice)

    @property
    def mean_s(self) -> float:
        """Mean seconds per case; read only for a trial that ran (``seconds`` not empty)."""
        if not self.seconds:
            raise ValueError(f"trial {self.label()} has no time measured")
        return float(np.mean(self.seconds))

    def label(self) -> str:
        streams = f" × {self.streams} streams" if self.streams > 1 else ""
        return (f"{self.family.label()}, {self.plan.label()}, {self.threads or 'default'} thr{streams}, "
                f"batch {self.batch}")


@dataclass
class TuneResult:
    """Everything ``tune`` measured; ``chosen`` is the fastest accepted trial (None if none was)."""

    model: Path
    machine: Machine
    budget: float
    cases: list[str]
    reference_seconds: list[float]
    trials: list[Trial]
    chosen: Trial | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    probe: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0

    def front(self) -> list[Trial]:
        """The Pareto front of (seconds on the first case, worst-region Dice) over trials that ran it."""
        ran = sorted((t for t in self.trials if t.dice), key=lambda t: (t.seconds[0], -t.worst_dice))
        front, best = [], -1.0
        for t in ran:
            if t.worst_dice > best:
                front.append(t)
                best = t.worst_dice
        return front


class _TooSlow(Exception):
    """Raised from the progress hook when a trial has already taken longer than the best."""


# ------------------------------------------------------------------------------------------ running

def worst_region_dice(labels: np.ndarray, reference: np.ndarray, et: int) -> float:
    """The lowest Dice over WT, TC and ET between two label maps."""
    return min(dice(a, b) for a, b in zip(labels_to_regions(labels, et), labels_to_regions(reference, et)))


def _segment(segmenter: Segmenter, case: Case, limit_s: float | None = None) -> tuple[float, np.ndarray]:
    """Seconds (preprocess + network + postprocess) and labels; _TooSlow once past ``limit_s``."""
    start = time.perf_counter()

    def check(done: int, total: int) -> None:
        if limit_s is not None and time.perf_counter() - start > limit_s:
            raise _TooSlow

    seg = segmenter.predict(case, check)
    return time.perf_counter() - start, seg.labels


# ------------------------------------------------------------------------------------------ search

def _trial_options(trial: Trial) -> SegmenterOptions:
    plan = trial.plan
    return SegmenterOptions(overlap=plan.overlap, blend=plan.blend, steps=plan.steps, window=plan.window,
                            batch_size=trial.batch, tta=None if plan.tta else False)


def _run_trial(trial: Trial, segmenter: Segmenter, cases: list[Case], references: list[np.ndarray],
               budget: float, limit_s: float | None) -> None:
    """Measure ``trial`` case by case; stop at the first case whose Dice is out of budget."""
    for k, (case, reference) in enumerate(zip(cases, references)):
        seconds, labels = _segment(segmenter, case, limit_s if k == 0 else None)
        trial.seconds.append(seconds)
        trial.dice.append(worst_region_dice(labels, reference, segmenter.et))
        if trial.dice[-1] < acceptance_threshold(budget):
            trial.status = "over budget"
            return
    trial.status = "accepted"


def _search(trials: list[Trial], engines: dict[Family, Engine], cases: list[Case], references: list[np.ndarray],
            budget: float, progress: Progress) -> None:
    """Run trials fastest-predicted first, pruning against the best accepted one (see the module doc)."""
    best: Trial | None = None
    for i, trial in enumerate(trials):
        progress(f"trial {i + 1}/{len(trials)}: {trial.label()}", i, len(trials))
        if best is not None and trial.predicted_s > PREDICTED_SLACK * best.mean_s:
            trial.status = "pruned (predicted)"
            continue
        engine = engines[trial.family]
        segmenter = Segmenter(engine.artifact, engine.session, _trial_options(trial))
        limit = best.seconds[0] * (1 + PRUNE_MARGIN) if best else None
        try:
            _run_trial(trial, segmenter, cases, references, budget, limit)
        except _TooSlow:
            trial.status = "pruned (slower)"
        if trial.status == "accepted" and (best is None or trial.mean_s < best.mean_s):
            best = trial
    progress("trials done", len(trials), len(trials))


def _reference(artifact: Artifact, cases: list[Case], progress: Progress) -> tuple[list[np.ndarray], list[float]]:
    """The card's configuration on ONNX Runtime (default threads, every window run) on every case."""
    labels, seconds = [], []
    with Segmenter.open(artifact.path, "onnxruntime", options=SegmenterOptions(skip_empty=False)) as reference:
        for i, case in enumerate(cases):
            progress(f"reference on {case.case_id}", i, len(cases))
            secs, lab = _segment(reference, case)
            labels.append(lab)
            seconds.append(secs)
    return labels, seconds


def _families(model: Path, options: TuneOptions) -> list[Family]:
    card = load_artifact(model).card
    for variant in options.variants:
        other = load_artifact(variant).card
        if (other.inputs, other.outputs) != (card.inputs, card.outputs):
            raise InputError(f"{variant}: its card's inputs or outputs differ from {model}'s (expected a sibling "
                             "of the same network: INT8 or FP16)")
    backends = options.backends or CPU_BACKENDS
    out = []
    for path in (Path(model), *map(Path, options.variants)):
        for backend in backends:
            hints = options.hints if backend == "openvino" else (None,)
            out += [Family(path, backend, hint) for hint in hints]
    return out


def tune(model: Path, cases_dir: Path, options: TuneOptions = TuneOptions(),
         progress: Progress | None = None) -> TuneResult:
    """Measure the grid on the cases in ``cases_dir`` and pick the fastest configuration within the budget."""
    progress = progress or (lambda message, done, total: None)
    start = time.perf_counter()
    artifact = load_artifact(model)
    card = artifact.card
    check_windows(card, options)  # before minutes of measuring
    cases = [load_case(p, card.modalities) for p in case_folders(cases_dir)]
    shapes = [preprocess(c.images, card)[1].grid_shape for c in cases]
    references, reference_seconds = _reference(artifact, cases, progress)
    engines, skipped, report = open_engines(_families(Path(model), options), options, progress)
    try:
        trials = []
        for family, engine in engines.items():
            for plan in window_plans(card, shapes, options):
                batch = engine.batch if len(windows_of(card, shapes[0], plan)[1]) > 1 else 1
                predicted = predict_seconds(engine, card, shapes, plan)
                trials.append(Trial(family, plan, engine.threads, batch, predicted, streams=engine.streams))
        trials.sort(key=lambda t: t.predicted_s)
        _search(trials, engines, cases, references, options.budget, progress)
    finally:
        for engine in engines.values():
            engine.session.close()
    accepted = [t for t in trials if t.status == "accepted"]
    chosen = min(accepted, key=lambda t: t.mean_s) if accepted else None
    machine = this_machine(tuple(sorted({f.backend for f in engines})))
    return TuneResult(Path(model), machine, options.budget, [c.case_id for c in cases], reference_seconds, trials,
                      chosen, skipped, report, time.perf_counter() - start)
