"""``tune``'s grid and probe: what is varied (options, numerics families, window plans), where each
plan puts its windows, and the network timings that order the trials (module doc of ``tune``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.card import ModelCard
from seg_edge.errors import BackendUnavailable, InputError
from seg_edge.runtime.machine import cores
from seg_edge.runtime.preprocess import pad_shape, tiling_window, window_size
from seg_edge.runtime.sessions.base import Session, open_session
from seg_edge.runtime.window import window_slices

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TuneOptions:
    """What ``tune`` varies. Empty tuples mean the defaults described on each field."""

    budget: float = 0.01  # largest worst-region Dice loss against the reference
    backends: tuple[str, ...] = ()  # () = every CPU backend that loads here
    variants: tuple[Path, ...] = ()  # sibling files of the model (INT8, FP16) to try as well
    threads: tuple[int, ...] = ()  # () = all usable cores and half of them
    batches: tuple[int, ...] = (1, 2)
    streams: tuple[int, ...] = (1, 2)  # parallel windows (CPU backends); those above the threads are skipped
    windows: tuple[tuple[int, ...], ...] = ()  # besides the patch; () = ~4/3, ~5/3, 2× it, the whole crop
    overlaps: tuple[float, ...] = (0.5, 0.375, 0.25, 0.125, 0.0)
    hints: tuple[str, ...] = ("f32", "bf16")  # OpenVINO precision hints (those the CPU lacks are skipped)

    def __post_init__(self) -> None:
        if not 0 <= self.budget < 1:
            raise InputError(f"--budget {self.budget} (expected a Dice loss in [0, 1))")
        if any(not 0 <= o < 1 for o in self.overlaps) or not self.overlaps:
            raise InputError(f"overlaps {list(self.overlaps)} (expected values in [0, 1))")
        if any(t < 1 for t in self.threads + self.streams) or any(b < 1 for b in self.batches) or not self.batches:
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


def windows_of(card: ModelCard, shape: tuple[int, ...], plan: WindowChoice) -> tuple[tuple, list]:
    """(window used, window slices) of ``plan`` on a crop of network ``shape`` (before padding); 2D models:
    (the slice size, one entry per slice)."""
    if card.inputs.spatial_dims == 2 and card.inputs.slice is not None:
        return tuple(card.inputs.slice.size), [None] * shape[card.inputs.slice.axis]
    tile = tiling_window(shape, card, plan.window)
    padded = pad_shape(shape, tile)
    window = window_size(padded, tile)
    return window, window_slices(padded, window, plan.overlap, plan.steps)


def check_windows(card: ModelCard, options: TuneOptions) -> None:
    """InputError unless every window asked for fits the card: its rank, >= the patch, divisor multiples."""
    inf = card.inference
    for w in options.windows:
        if len(w) != len(inf.patch_size) or any(a < p or a % inf.size_divisor for a, p in zip(w, inf.patch_size)):
            raise InputError(f"--windows {'x'.join(map(str, w))} (expected {len(inf.patch_size)} sizes >= the patch "
                             f"{'x'.join(map(str, inf.patch_size))}, each a multiple of {inf.size_divisor})")


def window_plans(card: ModelCard, shapes: list[tuple[int, ...]], options: TuneOptions) -> list[WindowChoice]:
    """Every distinct window plan over the tune cases' crop ``shapes`` (plans placing the same windows
    on every case, and blending choices where every case has one window, count once)."""
    inf = card.inference
    check_windows(card, options)
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
        placed = [windows_of(card, s, plan) for s in shapes]
        single = all(len(slices) == 1 for _, slices in placed)
        key = (tuple((w, tuple(tuple((s.start, s.stop) for s in sl) for sl in slices)) for w, slices in placed),
               None if single else blend, tta)
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    return plans


def call_seconds(session: Session, channels: int, window: tuple[int, ...], batch: int) -> float:
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
class Engine:
    """An open session of one family with its fastest threads, streams and batch, and seconds per window."""

    family: Family
    artifact: Artifact
    session: Session
    threads: int | None
    batch: int
    batch_gain: float  # seconds per window at ``batch`` over seconds per window at 1, at the patch
    per_window: dict[tuple[int, ...], float] = field(default_factory=dict)
    streams: int = 1


def _session_grid(options: TuneOptions) -> list[tuple[int, int]]:
    """(threads, streams) to probe: all usable cores and half of them; parallel streams when >= 2 threads."""
    threads_grid = options.threads or tuple(sorted({cores(), max(cores() // 2, 1)}, reverse=True))
    return [(t, s) for t in threads_grid for s in options.streams if s <= t]


def _open_engine(family: Family, options: TuneOptions, report: dict) -> Engine:
    """The family's session at its fastest threads/streams/batch (timed at the card's patch); BackendUnavailable."""
    artifact = load_artifact(family.model)
    card = artifact.card
    patch = tuple(card.inputs.slice.size) if card.inputs.spatial_dims == 2 and card.inputs.slice else card.patch_size
    timings: dict[tuple[int, int, int], float] = {}
    best: tuple[float, tuple[int, int, int], Session | None] = (float("inf"), (0, 0, 0), None)
    for threads, streams in _session_grid(options):
        session = open_session(artifact, family.backend, threads, precision_hint=family.hint, streams=streams)
        for batch in sorted({max(b, streams) for b in options.batches} | {1}):
            timings[(threads, streams, batch)] = call_seconds(session, card.in_channels, patch, batch)
        # a batch smaller than the streams leaves streams idle (one thread per window): not a candidate
        key = min((k for k in timings if k[:2] == (threads, streams) and k[2] >= streams), key=timings.__getitem__)
        if timings[key] < best[0]:
            if best[2] is not None:
                best[2].close()
            best = (timings[key], key, session)
        else:
            session.close()
    _, (threads, streams, batch), chosen = best
    if chosen is None:  # _session_grid always yields (cores, 1), so at least one session was timed
        raise BackendUnavailable(f"{family.label()}: no session could be timed")
    session = chosen
    report[family.label()] = {"seconds_per_window": {f"{t} threads, {s} streams, batch {b}": round(v, 4)
                                                     for (t, s, b), v in timings.items()},
                              "chosen": {"threads": threads, "streams": streams, "batch": batch}}
    single = timings[(threads, streams, 1)]
    return Engine(family, artifact, session, threads, batch, timings[(threads, streams, batch)] / single,
                  {tuple(patch): single}, streams)


def predict_seconds(engine: Engine, card: ModelCard, shapes: list[tuple[int, ...]], plan: WindowChoice) -> float:
    """Predicted network seconds per case of ``plan`` over crops of ``shapes``: the probe times the first
    case's window shape; other cases' windows are scaled by their voxel count."""
    window, _ = windows_of(card, shapes[0], plan)
    if window not in engine.per_window:
        engine.per_window[window] = call_seconds(engine.session, card.in_channels, window, 1)
    per_voxel = engine.per_window[window] / float(np.prod(window))
    flips = 2 ** len(card.inference.tta_axes) if plan.tta else 1
    total = 0.0
    for shape in shapes:
        w, slices = windows_of(card, shape, plan)
        gain = engine.batch_gain if len(slices) >= engine.batch else 1.0
        total += len(slices) * float(np.prod(w)) * per_voxel * gain * flips
    return total / len(shapes)


def open_engines(families: list[Family], options: TuneOptions, progress: Progress):
    engines, skipped, report = {}, [], dict[str, Any]()
    for i, family in enumerate(families):
        progress(f"probe {family.label()}", i, len(families))
        try:
            engines[family] = _open_engine(family, options, report)
        except BackendUnavailable as exc:
            skipped.append((family.label(), str(exc)))
    if not engines:
        raise BackendUnavailable("no backend loads here: " + "; ".join(f"{n}: {why}" for n, why in skipped))
    return engines, skipped, report
