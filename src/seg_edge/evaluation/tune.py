"""``seg-edge tune``: the fastest way to segment on this machine within an accuracy budget.

The **reference** is the card's own configuration (its window, overlap and blending, the FP32 model,
ONNX Runtime); its labels on the tune cases are what every other configuration is scored against
(worst-region Dice over WT, TC and ET, the worst case counts). A configuration is an **engine** (model
file — FP32 or a sibling INT8/FP16 —, backend, precision hint, threads, windows per network call)
and a **window plan** (window size, overlap, blending, window positions rule, mirroring TTA).

The search, in order:

1. the reference runs on every case (labels, seconds);
2. a probe times one network call per engine at the card's patch and keeps, per numerics family
   (model, backend, hint), the fastest threads and batch; then one call per window shape the plans
   need, so that every (family, plan) has a predicted time on the first case;
3. trials in order of predicted time: each runs the first case (stopped as soon as it is slower than
   the best accepted so far: "pruned"), then the other cases while its Dice stays within the budget;
   a trial predicted at more than ``PREDICTED_SLACK`` × the best is dropped unrun;
4. the fastest accepted trial (mean seconds per case) is the profile.

Times are the Segmenter's (preprocess + network + postprocess), measured, never extrapolated; the
prediction only orders and prunes the grid.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.card import Machine, ModelCard
from seg_edge.errors import BackendUnavailable, InputError
from seg_edge.runtime.io import Case, load_case
from seg_edge.runtime.machine import cores, this_machine
from seg_edge.runtime.preprocess import pad_shape, preprocess, tiling_window, window_size
from seg_edge.runtime.regions import case_folders, dice, labels_to_regions
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.runtime.sessions.base import Session, open_session
from seg_edge.runtime.window import window_slices

CPU_BACKENDS = ("onnxruntime", "openvino")
PREDICTED_SLACK = 1.5  # a trial predicted slower than this × the best is not run
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TuneOptions:
    """What ``tune`` varies. Empty tuples mean the defaults described on each field."""

    budget: float = 0.01  # largest worst-region Dice loss against the reference
    backends: tuple[str, ...] = ()  # () = every CPU backend that loads here
    variants: tuple[Path, ...] = ()  # sibling files of the model (INT8, FP16) to try as well
    threads: tuple[int, ...] = ()  # () = all usable cores and half of them
    batches: tuple[int, ...] = (1, 2)
    windows: tuple[tuple[int, ...], ...] = ()  # besides the patch; () = ~4/3, ~5/3, 2× it, the whole crop
    overlaps: tuple[float, ...] = (0.5, 0.375, 0.25, 0.125, 0.0)
    hints: tuple[str, ...] = ("f32", "bf16")  # OpenVINO precision hints (those the CPU lacks are skipped)

    def __post_init__(self) -> None:
        if not 0 <= self.budget < 1:
            raise InputError(f"--budget {self.budget} (expected a Dice loss in [0, 1))")
        if any(not 0 <= o < 1 for o in self.overlaps) or not self.overlaps:
            raise InputError(f"overlaps {list(self.overlaps)} (expected values in [0, 1))")
        if any(t < 1 for t in self.threads) or any(b < 1 for b in self.batches) or not self.batches:
            raise InputError(f"threads {list(self.threads)}, batches {list(self.batches)} (expected integers >= 1)")


@dataclass(frozen=True)
class Family:
    """What decides the numbers a network gives: the model file, the backend and its precision hint."""

    model: Path
    backend: str
    hint: str | None = None

    def label(self) -> str:
        hint = f" {self.hint}" if self.hint and self.hint != "f32" else ""
        return f"{self.model.name} / {self.backend}{hint}"


@dataclass(frozen=True)
class WindowChoice:
    """Where windows go and how they are combined (None window: the card's patch)."""

    window: tuple[int, ...] | None
    overlap: float
    blend: str
    steps: str
    tta: bool = True

    def label(self) -> str:
        window = "patch" if self.window is None else "×".join(map(str, self.window))
        return f"{window} o{self.overlap:g} {self.blend} {self.steps}{'' if self.tta else ' noTTA'}"


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

    @property
    def worst_dice(self) -> float | None:
        return min(self.dice) if self.dice else None

    @property
    def mean_s(self) -> float | None:
        return float(np.mean(self.seconds)) if self.seconds else None

    def label(self) -> str:
        return f"{self.family.label()}, {self.plan.label()}, {self.threads or 'default'} thr, batch {self.batch}"


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


# ----------------------------------------------------------------------------------------- the grid

def _default_windows(card: ModelCard, shapes: list[tuple[int, ...]]) -> list[tuple[int, ...] | None]:
    """The patch, about 4/3, 5/3 and 2× it (multiples of the divisor) and the largest crop in one pass."""
    div, patch = card.size_divisor, tuple(card.patch_size)
    whole = tuple(max(-(-s[a] // div) * div for s in shapes) for a in range(len(patch)))
    sizes: list[tuple[int, ...] | None] = [None]
    for scale in (4 / 3, 5 / 3, 2):
        w = tuple(max(p, -(-int(p * scale) // div) * div) for p in patch)
        if all(a < b for a, b in zip(w, whole)) and w not in sizes:
            sizes.append(w)
    if whole != patch and all(w >= p for w, p in zip(whole, patch)):
        sizes.append(whole)
    return sizes


def _windows_of(card: ModelCard, shape: tuple[int, ...], plan: WindowChoice) -> tuple[tuple, list]:
    """(window used, window slices) of ``plan`` on a crop of network ``shape`` (before padding); 2D models:
    (the slice size, one entry per slice)."""
    if card.inputs.spatial_dims == 2 and card.inputs.slice is not None:
        return tuple(card.inputs.slice.size), [None] * shape[card.inputs.slice.axis]
    tile = tiling_window(shape, card, plan.window)
    padded = pad_shape(shape, tile)
    window = window_size(padded, tile)
    return window, window_slices(padded, window, plan.overlap, plan.steps)


def window_plans(card: ModelCard, shapes: list[tuple[int, ...]], options: TuneOptions) -> list[WindowChoice]:
    """Every distinct window plan over the tune cases' crop ``shapes`` (plans placing the same windows
    on every case, and blending choices where every case has one window, count once)."""
    inf = card.inference
    windows = [None, *options.windows] if options.windows else _default_windows(card, shapes)  # the patch always
    blends = sorted({inf.blend, "gaussian", "constant"})
    steps = sorted({inf.steps, "monai", "nnunet"})
    overlaps = sorted({o for o in options.overlaps if o <= inf.overlap} | {inf.overlap}, reverse=True)
    ttas = (True, False) if inf.tta_axes else (True,)
    if card.inputs.spatial_dims == 2:  # slices: only mirroring changes the plan
        return [WindowChoice(None, inf.overlap, inf.blend, inf.steps, tta) for tta in ttas]
    plans, seen = [], set()
    for window, overlap, blend, step, tta in itertools.product(windows, overlaps, blends, steps, ttas):
        plan = WindowChoice(None if window in (None, tuple(card.patch_size)) else tuple(window), overlap, blend,
                          step, tta)
        placed = [_windows_of(card, s, plan) for s in shapes]
        single = all(len(slices) == 1 for _, slices in placed)
        key = (tuple((w, tuple(tuple((s.start, s.stop) for s in sl) for sl in slices)) for w, slices in placed),
               None if single else blend, tta)
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    return plans


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


def _call_seconds(session: Session, channels: int, window: tuple[int, ...], batch: int) -> float:
    """Seconds per window of ``batch``-window calls: the faster of two calls after a warm-up."""
    x = np.random.default_rng(0).standard_normal((batch, channels, *window)).astype(np.float32)
    session.run(x)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        session.run(x)
        times.append(time.perf_counter() - t0)
    return min(times) / batch


# ------------------------------------------------------------------------------------------- probe

@dataclass
class _Engine:
    """An open session of one family with its fastest threads and batch, and seconds per window."""

    family: Family
    artifact: Artifact
    session: Session
    threads: int | None
    batch: int
    batch_gain: float  # seconds per window at ``batch`` over seconds per window at 1, at the patch
    per_window: dict[tuple[int, ...], float] = field(default_factory=dict)


def _open_engine(family: Family, options: TuneOptions, report: dict) -> _Engine:
    """The family's session at its fastest threads/batch (timed at the card's patch); BackendUnavailable."""
    artifact = load_artifact(family.model)
    card = artifact.card
    patch = tuple(card.inputs.slice.size) if card.inputs.spatial_dims == 2 and card.inputs.slice else card.patch_size
    threads_grid = options.threads or tuple(sorted({cores(), max(cores() // 2, 1)}, reverse=True))
    timings: dict[tuple[int, int], float] = {}
    best: tuple[float, int, Session | None] = (float("inf"), 0, None)
    for threads in threads_grid:
        session = open_session(artifact, family.backend, threads, precision_hint=family.hint)
        for batch in options.batches:
            timings[(threads, batch)] = _call_seconds(session, card.in_channels, patch, batch)
        fastest = min(timings[(threads, b)] for b in options.batches)
        if fastest < best[0]:
            if best[2] is not None:
                best[2].close()
            best = (fastest, threads, session)
        else:
            session.close()
    _, threads, session = best
    batch = min(options.batches, key=lambda b: timings[(threads, b)])
    report[family.label()] = {"seconds_per_window": {f"{t} threads, batch {b}": round(v, 4)
                                                     for (t, b), v in timings.items()},
                              "chosen": {"threads": threads, "batch": batch}}
    single = timings.get((threads, 1), timings[(threads, batch)])
    return _Engine(family, artifact, session, threads, batch, timings[(threads, batch)] / single,
                   {tuple(patch): single})


def _predict_seconds(engine: _Engine, card: ModelCard, shape: tuple[int, ...], plan: WindowChoice) -> float:
    """Predicted network seconds of ``plan`` on a crop of ``shape`` (the probe times new window shapes)."""
    window, slices = _windows_of(card, shape, plan)
    if window not in engine.per_window:
        engine.per_window[window] = _call_seconds(engine.session, card.in_channels, window, 1)
    per = engine.per_window[window] * (engine.batch_gain if len(slices) >= engine.batch else 1.0)
    flips = 2 ** len(card.inference.tta_axes) if plan.tta else 1
    return len(slices) * per * flips


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
        if trial.dice[-1] < 1.0 - budget:
            trial.status = "over budget"
            return
    trial.status = "accepted"


def _search(trials: list[Trial], engines: dict[Family, _Engine], cases: list[Case], references: list[np.ndarray],
            budget: float, progress: Progress) -> None:
    """Run trials fastest-predicted first, pruning against the best accepted one (see the module doc)."""
    best: Trial | None = None
    for i, trial in enumerate(trials):
        progress(f"trial {i + 1}/{len(trials)}: {trial.label()}", i, len(trials))
        if best is not None and trial.predicted_s > PREDICTED_SLACK * best.seconds[0]:
            trial.status = "pruned (predicted)"
            continue
        engine = engines[trial.family]
        segmenter = Segmenter(engine.artifact, engine.session, _trial_options(trial))
        try:
            _run_trial(trial, segmenter, cases, references, budget, best.seconds[0] if best else None)
        except _TooSlow:
            trial.status = "pruned (slower)"
        if trial.status == "accepted" and (best is None or trial.seconds[0] < best.seconds[0]):
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


def _open_engines(families: list[Family], options: TuneOptions, progress: Progress):
    engines, skipped, report = {}, [], {}
    for i, family in enumerate(families):
        progress(f"probe {family.label()}", i, len(families))
        try:
            engines[family] = _open_engine(family, options, report)
        except BackendUnavailable as exc:
            skipped.append((family.label(), str(exc)))
    if not engines:
        raise BackendUnavailable("no backend loads here: " + "; ".join(f"{n}: {why}" for n, why in skipped))
    return engines, skipped, report


def tune(model: Path, cases_dir: Path, options: TuneOptions = TuneOptions(),
         progress: Progress | None = None) -> TuneResult:
    """Measure the grid on the cases in ``cases_dir`` and pick the fastest configuration within the budget."""
    progress = progress or (lambda message, done, total: None)
    start = time.perf_counter()
    artifact = load_artifact(model)
    card = artifact.card
    cases = [load_case(p, card.modalities) for p in case_folders(cases_dir)]
    shapes = [preprocess(c.images, card)[1].grid_shape for c in cases]
    references, reference_seconds = _reference(artifact, cases, progress)
    engines, skipped, report = _open_engines(_families(Path(model), options), options, progress)
    try:
        trials = []
        for family, engine in engines.items():
            for plan in window_plans(card, shapes, options):
                batch = engine.batch if len(_windows_of(card, shapes[0], plan)[1]) > 1 else 1
                predicted = _predict_seconds(engine, card, shapes[0], plan)
                trials.append(Trial(family, plan, engine.threads, batch, predicted))
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
