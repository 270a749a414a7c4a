"""seg-edge tune on a tiny model: the grid, the search's bookkeeping, the profile written and used.

Times are measured, so no test asserts a speed: they check what was run, what was accepted and why,
and that the written profile reproduces the accepted labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.artifact import load_artifact
from seg_edge.card import CARD_KEY
from seg_edge.cli.app import app
from seg_edge.evaluation.tune import TuneOptions, WindowChoice, tune, window_plans, worst_region_dice
from seg_edge.evaluation.tune_report import plot_front, summary, write_tuned
from seg_edge.onnxproto import with_metadata
from seg_edge.runtime.io import load_case
from seg_edge.runtime.regions import case_folders
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

FAST = dict(backends=("onnxruntime",), threads=(1,), batches=(1, 2), overlaps=(0.5, 0.0))


@pytest.fixture(scope="module")
def small_patch(tmp_path_factory, edge_onnx):
    """The tiny edge model with a 32³ patch, so that the 64×72×48 cases take several windows."""
    card = load_artifact(edge_onnx).card.replace(patch_size=(32, 32, 32))
    path = tmp_path_factory.mktemp("tune") / "edge32.onnx"
    path.write_bytes(with_metadata(edge_onnx, CARD_KEY, card.to_json()))
    return path


@pytest.fixture(scope="module")
def result(small_patch, cases_dir):
    return tune(small_patch, cases_dir, TuneOptions(**FAST))


def test_window_plans_are_distinct_and_start_with_the_card_configuration(small_patch):
    card = load_artifact(small_patch).card
    shapes = [(50, 60, 40), (52, 58, 41)]
    plans = window_plans(card, shapes, TuneOptions(overlaps=(0.5, 0.25, 0.0)))
    assert plans[0] == WindowChoice(None, 0.5, "constant", "monai") or WindowChoice(None, 0.5, "gaussian",
                                                                                      "monai") in plans
    assert len(set(plans)) == len(plans)
    whole = [p for p in plans if p.window == (64, 64, 48)]
    assert len(whole) == 1  # one window per case: overlap, blending and steps make no difference
    assert all(p.overlap <= 0.5 for p in plans)


def test_the_search_records_every_trial_and_accepts_only_within_budget(result):
    assert len(result.reference_seconds) == 3 and result.skipped == []
    statuses = {t.status for t in result.trials}
    assert statuses <= {"accepted", "over budget", "pruned (slower)", "pruned (predicted)"}
    for t in result.trials:
        if t.status == "accepted":
            assert len(t.dice) == 3 and min(t.dice) >= 0.995 and len(t.seconds) == 3  # half the budget in reserve
        elif t.status == "over budget":
            assert t.dice[-1] < 0.995 and all(d >= 0.995 for d in t.dice[:-1])
        elif t.status == "pruned (predicted)":
            assert t.seconds == []
    same = [t for t in result.trials if t.plan == WindowChoice(None, 0.5, "gaussian", "monai") and t.dice]
    assert all(d == 1.0 for t in same for d in t.dice)  # the reference's own plan reproduces its labels
    assert result.chosen is not None and result.chosen.status == "accepted"
    assert result.chosen.mean_s == min(t.mean_s for t in result.trials if t.status == "accepted")
    front = result.front()
    assert [t.seconds[0] for t in front] == sorted(t.seconds[0] for t in front)
    assert all(a.worst_dice < b.worst_dice for a, b in zip(front, front[1:]))


def test_the_written_profile_is_used_and_reproduces_the_accepted_labels(result, small_patch, cases_dir, tmp_path):
    out = write_tuned(result, tmp_path / "edge32.tuned.onnx")
    card = load_artifact(out).card
    chosen = result.chosen
    assert card.profile.backend == "onnxruntime" and card.profile.threads == 1
    assert (card.profile.overlap, card.profile.blend, card.profile.steps) == (
        chosen.plan.overlap, chosen.plan.blend, chosen.plan.steps)
    assert card.profile.measured["worst_region_dice"] == round(chosen.worst_dice, 5)
    assert card.replace(profile=None) == load_artifact(small_patch).card
    case = load_case(case_folders(cases_dir)[1], card.modalities)
    with Segmenter.open(small_patch, options=SegmenterOptions(skip_empty=False)) as ref:
        reference = ref.predict(case).labels
    with Segmenter.open_profiled(out) as tuned:
        assert tuned.profile_note.startswith("tuned profile:")
        labels = tuned.predict(case).labels
    assert worst_region_dice(labels, reference, 4) == pytest.approx(chosen.dice[1], abs=1e-9)


def test_summary_and_plot(result, tmp_path):
    data = json.loads(json.dumps(summary(result)))
    assert data["chosen"]["status"] == "accepted" and len(data["trials"]) == len(result.trials)
    png = plot_front(result, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_zero_accepts_only_identical_labels(small_patch, cases_dir):
    res = tune(small_patch, cases_dir, TuneOptions(budget=0.0, backends=("onnxruntime",), threads=(1,),
                                                    batches=(1,), overlaps=(0.5,)))
    assert all(min(t.dice) == 1.0 for t in res.trials if t.status == "accepted")
    assert res.chosen is not None


def test_cli_tune_writes_the_copy_and_refuses_bad_options(small_patch, cases_dir, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["tune", str(small_patch), "--cases", str(cases_dir), "--budget", "1.5"])
    assert bad.exit_code == 2 and "--budget 1.5" in bad.output
    bad = runner.invoke(app, ["tune", str(small_patch), "--cases", str(cases_dir), "--windows", "32x32"])
    assert bad.exit_code == 2
    out = tmp_path / "t.onnx"
    ok = runner.invoke(app, ["tune", str(small_patch), "--cases", str(cases_dir), "--backend", "onnxruntime",
                             "--threads", "1", "--batches", "1", "--overlaps", "0.5", "--windows", "64x64x48",
                             "--out", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["written"] == str(out) and load_artifact(out).card.profile is not None
    windows = {t["configuration"].split(", ")[1].split()[0] for t in data["trials"]}
    assert windows == {"patch", "64×64×48"}  # the card's patch is always a candidate
    assert np.isclose(data["budget"], 0.01)
