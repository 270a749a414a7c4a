"""The pipelined batch: the same outputs as one case after another, failures isolated, order kept,
at most two cases' inputs in memory at once."""

from __future__ import annotations

import shutil
import threading

import nibabel as nib
import numpy as np
import pytest

from seg_edge.runtime import jobs, pipeline
from seg_edge.runtime.jobs import Job, run_batch
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


def test_pipelined_batch_equals_one_case_after_another(edge_onnx, batch_dir, tmp_path):
    seen = []
    with Segmenter.open(edge_onnx, threads=1) as seg:
        seq = run_batch(seg, jobs_for(batch_dir, tmp_path / "seq"))
        piped = pipeline.run_pipelined(seg, jobs_for(batch_dir, tmp_path / "pipe"), on_case=seen.append)
    assert [r.job.case_id for r in piped] == [r.job.case_id for r in seq] == [r.job.case_id for r in seen]
    assert [r.status for r in piped] == [r.status for r in seq] == ["done", "done", "failed", "done", "done"]
    assert "case2" in piped[2].error or "t1ce" in piped[2].error
    for a, b in zip(seq, piped):
        if a.status == "done":
            assert np.array_equal(np.asarray(nib.load(a.job.out).dataobj), np.asarray(nib.load(b.job.out).dataobj))
            assert set(b.timings) >= {"load", "preprocess", "inference", "postprocess", "write", "total"}
            assert b.job.report.is_file()
    with Segmenter.open(edge_onnx, threads=1) as seg:  # outputs exist: skipped, nothing rewritten
        again = pipeline.run_pipelined(seg, jobs_for(batch_dir, tmp_path / "pipe"))
    assert [r.status for r in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]


def test_at_most_two_cases_in_flight(edge_onnx, batch_dir, tmp_path, monkeypatch):
    lock, alive, peak = threading.Lock(), [0], [0]
    real_load = jobs.load_case

    def counting_load(*args, **kwargs):
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        try:
            return real_load(*args, **kwargs)
        except Exception:  # the broken case never reaches the network
            with lock:
                alive[0] -= 1
            raise

    monkeypatch.setattr(jobs, "load_case", counting_load)
    with Segmenter.open(edge_onnx, threads=1) as seg:
        real_network = seg.network

        def network(prepared, on_window=None):
            out = real_network(prepared, on_window)
            with lock:
                alive[0] -= 1
            return out

        seg.network = network
        results = pipeline.run_pipelined(seg, jobs_for(batch_dir, tmp_path / "out"))
    assert [r.status for r in results].count("done") == 4
    assert peak[0] == pipeline.IN_FLIGHT  # the loader ran ahead, but never further than allowed


def test_a_case_read_while_the_model_loads_gives_the_same_labels(edge_onnx, batch_dir, tmp_path):
    from seg_edge.artifact import load_artifact
    from seg_edge.errors import InputError
    from seg_edge.runtime.jobs import run_job, start_loading

    job = jobs_for(batch_dir, tmp_path / "pre")[0]
    loading = start_loading(job, load_artifact(edge_onnx).card.modalities)
    with Segmenter.open(edge_onnx, threads=1) as seg:
        early = run_job(seg, job, loading=loading)
        late = run_job(seg, jobs_for(batch_dir, tmp_path / "plain")[0])
        broken = jobs_for(batch_dir, tmp_path / "broken")[2]
        with pytest.raises(InputError, match="t1ce"):  # the reader's error surfaces in run_job, unchanged
            run_job(seg, broken, loading=start_loading(broken, seg.card.modalities))
    assert np.array_equal(early.segmentation.labels, late.segmentation.labels)
    assert early.segmentation.case_id == late.segmentation.case_id == job.case_id


def test_a_batch_whose_first_case_was_read_while_the_model_loaded(edge_onnx, batch_dir, tmp_path):
    """The CLI reads the first case to run during start-up and hands it to the pipeline: same outputs;
    finished cases are not counted as first; a first case that fails to read fails alone."""
    from seg_edge.artifact import load_artifact
    from seg_edge.runtime.jobs import start_loading, to_run

    modalities = load_artifact(edge_onnx).card.modalities
    with Segmenter.open(edge_onnx, threads=1) as seg:
        plain = pipeline.run_pipelined(seg, jobs_for(batch_dir, tmp_path / "plain"))
        out = tmp_path / "early"
        first_done = jobs_for(batch_dir, out)[:2]
        pipeline.run_pipelined(seg, first_done)  # case0, case1 finished: the broken case2 is first to run
        todo = to_run(jobs_for(batch_dir, out), overwrite=False)
        assert todo[0].case_id == "case2"
        early = pipeline.run_pipelined(seg, jobs_for(batch_dir, out),
                                       first=start_loading(todo[0], modalities))
    assert [r.status for r in early] == ["skipped", "skipped", "failed", "done", "done"]
    assert "t1ce" in early[2].error
    for a, b in zip(plain[3:], early[3:]):
        assert np.array_equal(np.asarray(nib.load(a.job.out).dataobj), np.asarray(nib.load(b.job.out).dataobj))


def test_planning_and_reading_cases_do_not_import_the_segmenter():
    """Reading the first case starts before the segmenter's imports (scipy, backends) run."""
    import subprocess
    import sys

    code = ("import sys, seg_edge.runtime.jobs, seg_edge.artifact; "
            "print(sorted(m for m in ('seg_edge.runtime.segmenter', 'scipy.ndimage', 'scipy.special') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
