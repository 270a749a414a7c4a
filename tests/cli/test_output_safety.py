"""Outputs as a set: interrupted runs leave nothing, concurrent writers never replace each other
silently, and one case's crash (of any kind) never stops a batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "SynBraTS_3007_000"


def _script() -> Path:
    exe = Path(sys.executable).parent / "seg-edge"
    if not exe.is_file():
        pytest.skip("the seg-edge console script is not installed beside this interpreter")
    return exe


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _copy_case(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.endswith(".nii.gz") and "_seg" not in f.name:
            shutil.copyfile(f, dst / f.name.replace(src.name, dst.name))
    return dst


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A shell starts background jobs (``make test &``) with
    SIGINT ignored, the ignore is inherited, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The readiness signal: seg-edge predict, run through its entry point, with one line on stderr when its first
# window reaches the session (at overlap 0.8 on a full-size case many more follow), so the signal lands while
# windows run, however fast or loaded the machine is.
WINDOWS_RUNNING = "test: windows running"
WINDOWS_RUNNING_SCRIPT = """
import sys
from seg_edge.runtime.sessions.base import SessionBase
real_run = SessionBase.run

def announcing_run(self, batch):
    if not getattr(SessionBase, "announced", False):
        SessionBase.announced = True
        print(%r, file=sys.stderr, flush=True)
    return real_run(self, batch)

SessionBase.run = announcing_run
from seg_edge.cli.app import main
sys.argv = ["seg-edge", *{argv!r}]
main()
""" % WINDOWS_RUNNING


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_full_size_predict_leaves_nothing(sig, tmp_path, edge_onnx):
    """A 240×240×155 case, interrupted while windows run: exit 130, no output folder, no temp file."""
    out = tmp_path / "out" / "deep"
    argv = ["predict", str(EXAMPLE), "--model", str(edge_onnx), "--out", str(out), "--overlap", "0.8",
            "--probabilities"]
    proc = subprocess.Popen([sys.executable, "-c", WINDOWS_RUNNING_SCRIPT.format(argv=argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=_default_sigint)
    lines: list[str] = []
    running = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.strip() == WINDOWS_RUNNING:
                running.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert running.wait(timeout=300), f"no window ran within 300 s: {''.join(lines)[-2000:]}"
    assert proc.poll() is None, "the run finished before it could be interrupted; make it longer"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    stdout, stderr = proc.stdout.read(), "".join(lines[1:])
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stdout.strip() == ""
    assert [line for line in stderr.splitlines() if line.strip()][-1].startswith("interrupted")
    assert everything_under(tmp_path) == [], everything_under(tmp_path)


def test_interrupt_while_writing_removes_staged_files(monkeypatch, tmp_path, case_dir, edge_onnx):
    """Ctrl-C after the probabilities and the report were staged: none of them is left."""
    from seg_edge.runtime import outputs as jobs  # the one writer of a case's outputs

    real = jobs.write_volume
    calls = []

    def interrupted_on_label_map(data, case, out, *rest):
        calls.append(out)
        if data.dtype == np.uint8:
            raise KeyboardInterrupt
        return real(data, case, out, *rest)

    monkeypatch.setattr(jobs, "write_volume", interrupted_on_label_map)
    out = tmp_path / "preds"
    result = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out),
                                 "--probabilities"])
    assert result.exit_code == 130, result.output
    assert len(calls) == 2  # probabilities were written to a staging file first
    assert not out.exists(), everything_under(out)


def test_existing_report_is_guarded_like_the_label_map(tmp_path, case_dir, edge_onnx):
    out = tmp_path / "preds"
    out.mkdir()
    report = out / f"{case_dir.name}.json"
    report.write_text('{"mine": true}')
    result = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out)])
    assert result.exit_code == 2
    assert str(report) in result.stderr and "exists" in result.stderr
    assert everything_under(out) == [report.name] and report.read_text() == '{"mine": true}'
    again = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out),
                                "--overwrite"])
    assert again.exit_code == 0, again.output
    assert json.loads(report.read_text())["case_id"] == case_dir.name


def test_two_concurrent_writers_one_wins_the_other_fails_cleanly(tmp_path, case_dir, edge_onnx):
    target = tmp_path / "shared" / "result.nii.gz"
    cmd = [str(_script()), "predict", str(case_dir), "--model", str(edge_onnx), "--out", str(target)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and str(target) in lines[0] and "Traceback" not in loser, loser
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json", "result.nii.gz"]
    report = json.loads((target.parent / "result.json").read_text())
    assert report["output"] == str(target)
    assert nib.load(str(target)).shape == nib.load(str(next(case_dir.glob("*_flair.nii.gz")))).shape


def test_live_lock_refuses_and_stale_lock_is_taken_over(tmp_path, case_dir, edge_onnx):
    import hashlib

    out = tmp_path / "preds"
    out.mkdir()
    label = f"{case_dir.name}.nii.gz"
    lock = out / f".seg-edge-{hashlib.sha1(label.encode()).hexdigest()[:16]}.lock"
    lock.write_text(str(os.getpid()))  # held by a live process (this one)
    held = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out)])
    assert held.exit_code == 2 and "another seg-edge process" in held.stderr, held.output
    assert everything_under(out) == [lock.name]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a writer that no longer exists
    taken = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out)])
    assert taken.exit_code == 0, taken.output
    assert everything_under(out) == sorted([label, f"{case_dir.name}.json"])


def test_batch_survives_a_non_project_exception(monkeypatch, tmp_path, cases_dir, edge_onnx):
    from seg_edge.runtime import jobs

    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    real = jobs.load_case

    def crash_on_second(source, *args, **kwargs):
        if Path(source).name == cases[1].name:
            raise MemoryError("cannot allocate 9 GiB")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(jobs, "load_case", crash_on_second)
    out = tmp_path / "preds"
    result = runner.invoke(app, ["predict", str(cases_dir), "--model", str(edge_onnx), "--out", str(out), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    status = {c["case_id"]: c["status"] for c in data["cases"]}
    assert status == {cases[0].name: "done", cases[1].name: "failed", cases[2].name: "done"}
    failed = next(c for c in data["cases"] if c["status"] == "failed")
    assert failed["error"] == "MemoryError: cannot allocate 9 GiB"
    assert data["summary"] == {"done": 2, "skipped": 0, "failed": 1}
    assert not any(out.glob(f"{cases[1].name}*"))
    table = runner.invoke(app, ["predict", str(cases_dir), "--model", str(edge_onnx), "--out", str(out)])
    assert table.exit_code == 1 and "batch summary" in table.stdout and "2 skipped, 1 failed" in table.stdout


def test_json_prints_nothing_on_stdout_for_a_failing_case(tmp_path, case_dir, edge_onnx):
    folder = _copy_case(case_dir, tmp_path / "broken")
    next(folder.glob("*_t2.nii.gz")).unlink()
    result = runner.invoke(app, ["predict", str(folder), "--model", str(edge_onnx), "--out", str(tmp_path / "o"),
                                 "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "t2" in result.stderr
