"""What ``tune`` found, as a card profile, a tuned copy of the model, a JSON summary and a PNG of the front."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_edge.artifact import load_artifact
from seg_edge.card import CARD_KEY, InferenceProfile, Machine
from seg_edge.errors import InputError
from seg_edge.evaluation.tune import Trial, TuneResult, acceptance_threshold
from seg_edge.onnxproto import with_metadata
from seg_edge.runtime.atomic import atomic_write, write_bytes_atomic


def _chosen(result: TuneResult) -> Trial:
    """The chosen trial (InputError if no trial was within budget)."""
    t = result.chosen
    if t is None:
        raise InputError(f"no configuration kept worst-region Dice ≥ {acceptance_threshold(result.budget):g} (budget "
                         f"{result.budget}, half kept for unseen cases) against the reference on {len(result.cases)} "
                         "cases; nothing to write")
    return t


def profile_of(result: TuneResult) -> InferenceProfile:
    """The chosen trial as the card's inference profile (InputError if no trial was within budget)."""
    t = _chosen(result)
    reference = float(np.mean(result.reference_seconds))
    measured = {"seconds_per_case": round(t.mean_s, 3), "reference_seconds_per_case": round(reference, 3),
                "speedup": round(reference / t.mean_s, 2), "worst_region_dice": round(t.worst_dice, 5),
                "cases": len(result.cases), "trials": len(result.trials), "model": t.family.model.name,
                "stages": "preprocess + network + postprocess, model loaded"}
    machine = result.machine
    machine = Machine(machine.cpu, machine.flags, machine.cores,
                      {k: v for k, v in machine.versions.items() if k == t.family.backend})
    return InferenceProfile(machine, t.family.backend, t.family.hint if t.family.hint != "f32" else None,
                            t.threads, t.streams, tuple(t.plan.window or ()), t.plan.overlap, t.plan.blend,
                            t.plan.steps, t.batch, t.plan.tta, result.budget, measured)


def write_tuned(result: TuneResult, out: Path) -> Path:
    """A copy of the chosen model file whose card carries the profile (written atomically)."""
    profile = profile_of(result)
    source = _chosen(result).family.model
    card = load_artifact(source).card.replace(profile=profile)
    out = Path(out)
    if out.resolve() == Path(source).resolve():
        raise InputError(f"--out {out}: is the model itself (expected a new file, e.g. model.tuned.onnx)")
    write_bytes_atomic(out, with_metadata(source, CARD_KEY, card.to_json()))
    load_artifact(out)  # the written card must read back
    return out


def summary(result: TuneResult) -> dict:
    """The result as JSON-ready data: reference, probe, every trial, the front and the choice."""
    def trial(t):
        return {"configuration": t.label(), "status": t.status, "predicted_s": round(t.predicted_s, 3),
                "seconds": [round(s, 3) for s in t.seconds], "worst_region_dice": [round(d, 5) for d in t.dice]}

    front = result.front()
    return {"model": str(result.model), "machine": {"cpu": result.machine.cpu, "flags": list(result.machine.flags),
                                                    "cores": result.machine.cores,
                                                    "versions": result.machine.versions},
            "budget": result.budget, "accept_at_dice": round(acceptance_threshold(result.budget), 6),
            "cases": result.cases,
            "reference_seconds": [round(s, 3) for s in result.reference_seconds],
            "skipped": [{"family": n, "reason": why} for n, why in result.skipped], "probe": result.probe,
            "chosen": trial(result.chosen) if result.chosen else None,
            "front": [trial(t) for t in front], "trials": [trial(t) for t in result.trials],
            "wall_s": round(result.wall_s, 1)}


def plot_front(result: TuneResult, out: Path, title: str | None = None) -> Path:
    """PNG: one point per trial that ran the first case (seconds on it vs worst-region Dice), the
    Pareto front, the budget line, the reference and the chosen configuration marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = {"accepted": "tab:green", "over budget": "tab:red", "pruned (slower)": "tab:gray"}
    for status, colour in colours.items():
        pts = [(t.seconds[0], t.worst_dice) for t in result.trials if t.status == status and t.dice]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=14, c=colour, label=f"{status} ({len(pts)})", alpha=0.7)
    front = result.front()
    ax.step([t.seconds[0] for t in front], [t.worst_dice for t in front], where="post", c="k", lw=0.8,
            label="Pareto front")
    ax.axhline(1 - result.budget, c="tab:orange", ls="--", lw=0.8, label=f"budget (Dice ≥ {1 - result.budget:g})")
    accept = acceptance_threshold(result.budget)
    ax.axhline(accept, c="tab:green", ls=":", lw=0.8, label=f"accepted on tune cases (Dice ≥ {accept:g}; "
               "the rest is kept for unseen cases)")
    ax.scatter([result.reference_seconds[0]], [1.0], marker="s", c="tab:blue", s=40, label="reference")
    if result.chosen is not None:
        ax.scatter([result.chosen.seconds[0]], [result.chosen.worst_dice], marker="*", s=220, c="gold",
                   edgecolors="k", zorder=5, label=f"chosen: {result.chosen.label()}"[:90])
    ax.set_xlabel(f"seconds on {result.cases[0]} (preprocess + network + postprocess)")
    ax.set_ylabel("worst-region Dice vs reference labels")
    ax.set_title(title or f"seg-edge tune on {result.machine.cpu}, {result.machine.cores} cores (synthetic cases)",
                 fontsize=9)
    low = min([t.worst_dice for t in result.trials if t.dice] + [1 - 2 * result.budget])
    ax.set_ylim(max(low - 0.005, 0), 1.002)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(Path(out)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
