"""``runner.run_cases``: a batch runs pipelined with the same outputs as one case after another, failures
isolated, order kept, at most two cases' inputs in memory at once; the CLI, the server and Ray all run cases
through it."""

from __future__ import annotations

import shutil
import threading

import nibabel as nib
import numpy as np
import pytest

from seg_edge.runtime import runner
from seg_edge.runtime.jobs import Job
from seg_edge.runtime.runner import OutputPolicy, run_cases
from seg_edge.runtime.segmenter import Segmenter


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory, cases_dir):
    """Five cases (the three fixtures twice, renamed) and one broken case in the middle."""
    root = tmp_path_factory.mktemp("batch")
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    for i, src in enumerate(cases + cases[:2]):
        dst = root / f"case{i}"
        shutil.copytree(src, dst)
    (root / "case2" / next(p.name for p in (root / "case2").iterdir() if "_t1ce" in p.name)).write_bytes(b"broken")
    return root


def jobs_for(root, out):
    return [Job(p.name, p, out / f"{p.name}.nii.gz") for p in sorted(root.iterdir())]


def one_after_another(seg, jobs, policy=None) -> list:
    """The jobs run one call each (``run_cases`` of one job never pipelines)."""
    return [next(run_cases([job], seg, policy)) for job in jobs]


def test_pipelined_batch_equals_one_case_after_another(edge_onnx, batch_dir, tmp_path):
    with Segmenter.open(edge_onnx, threads=1) as seg:
        seq = one_after_another(seg, jobs_for(batch_dir, tmp_path / "seq"))
        piped = list(run_cases(jobs_for(batch_dir, tmp_path / "pipe"), seg))
    assert [r.job.case_id for r in piped] == [r.job.case_id for r in seq]
    assert [r.status for r in piped] == [r.status for r in seq] == ["done", "done", "failed", "done", "done"]
    assert "case2" in piped[2].reason or "t1ce" in piped[2].reason
    for a, b in zip(seq, piped):
        if a.status == "done":
            assert np.array_equal(np.asarray(nib.load(a.job.out).dataobj), np.asarray(nib.load(b.job.out).dataobj))
            assert set(b.timings) >= {"load", "preprocess", "inference", "postprocess", "write", "total"}
            assert b.job.report.is_file() and b.files == [b.job.report, b.job.out]
            assert a.volumes_ml == b.volumes_ml
    with Segmenter.open(edge_onnx, threads=1) as seg:  # outputs exist: skipped, nothing rewritten
        again = list(run_cases(jobs_for(batch_dir, tmp_path / "pipe"), seg))
    assert [r.status for r in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]
    assert again[0].reason == "output exists (use --overwrite)" and again[0].files == []


def test_at_most_two_cases_in_flight(edge_onnx, batch_dir, tmp_path):
    """A case's inputs are in memory from its read (the permit is taken before it) until its network ran;
    counted from ``prepare`` (right after the read) to the end of ``network``."""
    lock, alive, peak = threading.Lock(), [0], [0]
    with Segmenter.open(edge_onnx, threads=1) as seg:
        real_prepare, real_network = seg.prepare, seg.network

        def prepare(case):
            with lock:
                alive[0] += 1
                peak[0] = max(peak[0], alive[0])
            return real_prepare(case)

        def network(prepared, on_window=None):
            out = real_network(prepared, on_window)
            with lock:
                alive[0] -= 1
            return out

        seg.prepare, seg.network = prepare, network
        results = list(run_cases(jobs_for(batch_dir, tmp_path / "out"), seg))
    assert [r.status for r in results].count("done") == 4
    assert peak[0] == runner.IN_FLIGHT  # the loader ran ahead, but never further than allowed


def test_a_case_read_while_the_model_loads_gives_the_same_labels(edge_onnx, batch_dir, tmp_path):
    from seg_edge.artifact import load_artifact
    from seg_edge.errors import InputError
    from seg_edge.runtime.jobs import start_loading

    job = jobs_for(batch_dir, tmp_path / "pre")[0]
    loading = start_loading(job, load_artifact(edge_onnx).card.modalities)
    with Segmenter.open(edge_onnx, threads=1) as seg:
        [early] = run_cases([job], seg, first=loading)
        [late] = run_cases(jobs_for(batch_dir, tmp_path / "plain")[:1], seg)
        broken = jobs_for(batch_dir, tmp_path / "broken")[2]
        [failed] = run_cases([broken], seg, first=start_loading(broken, seg.card.modalities))
    assert failed.status == "failed" and isinstance(failed.error, InputError) and "t1ce" in failed.reason
    assert np.array_equal(np.asarray(nib.load(early.job.out).dataobj), np.asarray(nib.load(late.job.out).dataobj))
    assert early.report["case_id"] == late.report["case_id"] == job.case_id


def test_a_batch_whose_first_case_was_read_while_the_model_loaded(edge_onnx, batch_dir, tmp_path):
    """The CLI reads the first case to run during start-up and hands it to the runner: same outputs;
    finished cases are not counted as first; a first case that fails to read fails alone."""
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.jobs import finished, start_loading

    modalities = load_artifact(edge_onnx).card.modalities
    with Segmenter.open(edge_onnx, threads=1) as seg:
        plain = list(run_cases(jobs_for(batch_dir, tmp_path / "plain"), seg))
        out = tmp_path / "early"
        list(run_cases(jobs_for(batch_dir, out)[:2], seg))  # case0, case1 finished: the broken case2 is first to run
        todo = [j for j in jobs_for(batch_dir, out) if not finished(j, overwrite=False)]
        assert todo[0].case_id == "case2"
        early = list(run_cases(jobs_for(batch_dir, out), seg, first=start_loading(todo[0], modalities)))
    assert [r.status for r in early] == ["skipped", "skipped", "failed", "done", "done"]
    assert "t1ce" in early[2].reason
    for a, b in zip(plain[3:], early[3:]):
        assert np.array_equal(np.asarray(nib.load(a.job.out).dataobj), np.asarray(nib.load(b.job.out).dataobj))


def test_stop_from_on_window_ends_the_run_and_leaves_nothing(edge_onnx, batch_dir, tmp_path):
    """``Stop`` (the server stopping, a job deleted) is not a case's failure: it leaves run_cases, nothing written."""
    def stop(done, total):
        raise runner.Stop

    with Segmenter.open(edge_onnx, threads=1) as seg:
        for jobs in (jobs_for(batch_dir, tmp_path / "one")[:1], jobs_for(batch_dir, tmp_path / "many")):
            with pytest.raises(runner.Stop):
                list(run_cases(jobs, seg, OutputPolicy(preview=False), on_window=stop))
    assert not (tmp_path / "one").exists() and not (tmp_path / "many").exists()


def test_planning_and_reading_cases_do_not_import_the_segmenter():
    """Reading the first case starts before the segmenter's imports (scipy, backends) run."""
    import subprocess
    import sys

    code = ("import sys, seg_edge.runtime.jobs, seg_edge.artifact; "
            "print(sorted(m for m in ('seg_edge.runtime.segmenter', 'scipy.ndimage', 'scipy.special') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_cli_the_server_and_ray_run_cases_through_run_cases(edge_onnx, case_dir, cases_dir, tmp_path,
                                                                   monkeypatch):
    """Issue 21: running a case lived in four places. Now ``predict`` (one case and a folder), the server's
    workers and the Ray actors all call ``runner.run_cases``, and only ``outputs.write_case`` stages outputs."""
    import inspect
    from pathlib import Path

    from typer.testing import CliRunner

    from seg_edge.cli.app import app

    callers: list[tuple[str, int]] = []
    real = runner.run_cases

    def spy(jobs, *args, **kwargs):
        jobs = list(jobs)
        callers.append((inspect.currentframe().f_back.f_globals["__name__"], len(jobs)))
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(runner, "run_cases", spy)
    cli = CliRunner()
    for source, out in ((case_dir, tmp_path / "one"), (cases_dir, tmp_path / "folder")):
        done = cli.invoke(app, ["predict", str(source), "--model", str(edge_onnx), "--out", str(out)])
        assert done.exit_code == 0, done.output
    n_cases = len([p for p in cases_dir.iterdir() if p.is_dir()])
    assert callers == [("seg_edge.cli.predict", 1), ("seg_edge.cli.predict", n_cases)]

    from seg_edge.engines.ray import ModelSpec, SegmenterActor

    actor = SegmenterActor(ModelSpec(model=edge_onnx, threads=1))
    result = actor.run(Job(case_dir.name, case_dir, tmp_path / "ray" / "c.nii.gz"), OutputPolicy())
    assert result.status == "done" and callers[-1] == ("seg_edge.engines.ray", 1)
    actor.segmenter.close()

    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import time

    from fastapi.testclient import TestClient

    from seg_edge.serve.app import create_app
    from seg_edge.serve.jobs import ServeConfig

    with TestClient(create_app(ServeConfig(model=edge_onnx, data=tmp_path / "data"))) as client:
        files = {m: (f"c_{m}.nii.gz", (case_dir / f"{case_dir.name}_{m}.nii.gz").read_bytes())
                 for m in ("flair", "t1", "t1ce", "t2")}
        job = client.post("/v1/cases", files=files).json()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/cases/{job['id']}").json()["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/v1/cases/{job['id']}").json()["status"] == "done"
    assert callers[-1] == ("seg_edge.serve.jobs", 1) and len(callers) == 4

    src = Path(runner.__file__).resolve().parents[1]
    staging = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "StagedOutputs(" in p.read_text())
    writers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if "outputs import" in p.read_text() and "write_case" in p.read_text())
    # a case's outputs are staged in one place; a raw study's set (labels on the scanner's grid, atlas labels, brain
    # mask, transforms: predict --raw, issue 22) in one other, with the same StagedOutputs
    assert staging == ["preprocess/study.py", "runtime/outputs.py"] and writers == ["runtime/runner.py"]
