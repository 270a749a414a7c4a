"""seg-edge listen, the DICOM node: pynetdicom plays the PACS (it sends a study, and receives the SEG and SR on
a storage SCP of its own). The node runs here with a stand-in for segment_study that reads the study as the
real one does (scan, rules, voxels) and writes a minimal SEG and SR, and in a process of its own where it is
killed with SIGKILL. Studies: the ``raw_studies`` fixture as DICOM (``write_dicom_study``)."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pytest.importorskip("SimpleITK", reason="the preprocess extra is not installed")

import listen_helpers as lh  # noqa: E402
from seg_edge.dicom.inbox import Inbox, study_key  # noqa: E402
from seg_edge.serve.listen import KIND  # noqa: E402

HELPER = Path(lh.__file__)


@pytest.fixture(scope="module")
def study(raw_studies, tmp_path_factory) -> Path:
    """A classic (one file per slice) Siemens-style DICOM study with extra series (localiser, DWI, ADC, MPR)."""
    from seg_edge.synth.dicom import write_dicom_study

    return write_dicom_study(raw_studies[0], tmp_path_factory.mktemp("dicom"), vendor="siemens", seed=2207)


@pytest.fixture(scope="module")
def second_study(raw_studies, tmp_path_factory) -> Path:
    from seg_edge.synth.dicom import write_dicom_study

    return write_dicom_study(raw_studies[1], tmp_path_factory.mktemp("dicom2"), vendor="ge", seed=2207,
                             enhanced=True, extras=False)


@pytest.fixture()
def pacs():
    server = lh.Pacs()
    yield server
    server.close()


class Counter:
    """A stand-in segment_study that counts its completed calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.segment = functools.partial(lh.fake_segment, counter=path)

    def calls(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


@pytest.fixture()
def node(tmp_path, pacs):
    """A running node (quiet period lh.QUIET_S) and its counter; stopped afterwards."""
    counter = Counter(tmp_path / "calls.txt")
    running = lh.listener(tmp_path / "data", pacs.port, segment=counter.segment)
    running.start()
    running.counter = counter
    yield running
    running.stop()


def finished(node, count: int = 1):
    """Wait until ``count`` jobs are finished; the records."""
    def ready():
        jobs = node.jobs()
        return jobs if len(jobs) >= count and all(j["status"] in ("done", "failed") for j in jobs) else None
    return lh.wait_for(ready, 60, f"{count} finished job(s)")


def test_echo(node):
    assert lh.echo(node.port) == 0x0000


def test_a_study_is_segmented_once_and_its_seg_and_sr_come_back(node, pacs, study, caplog):
    caplog.set_level(logging.INFO)
    datasets = lh.read_study(study)
    statuses = lh.send(node.port, datasets)
    assert statuses == [0x0000] * len(datasets)
    [job] = finished(node)
    assert job["status"] == "done", job.get("error")
    assert job["kind"] == KIND and job["stage"] == "sent" and job["sent"] is True
    assert job["sent_to"] == f"PACS@127.0.0.1:{pacs.port}"
    assert job["instances"] == len(datasets) and job["attempts"] == 1
    assert job["sender"] == {"aet": "PACS", "address": "127.0.0.1"}
    assert job["study"] == study_key(str(datasets[0].StudyInstanceUID))
    assert len(node.counter.calls()) == 1
    lh.wait_for(lambda: len(pacs.received) == 2, 10, "SEG and SR at the PACS")
    assert pacs.classes() == sorted([lh.SEG_CLASS, lh.SR_CLASS])
    folder = node.store.folder(job["id"])
    lh.wait_for(lambda: not (folder / "inputs").exists(), 10, "inputs removed")  # sent: the results stay
    assert (folder / job["results"]["seg"]).is_file() and (folder / job["results"]["sr"]).is_file()
    assert not list((node.config.data / "incoming").iterdir())
    time.sleep(lh.QUIET_S)  # nothing runs a second time
    assert len(node.jobs()) == 1 and len(node.counter.calls()) == 1
    logged = caplog.text
    assert str(datasets[0].PatientName) not in logged and str(datasets[0].PatientID) not in logged
    assert job["study"] in logged


def test_instances_are_on_disk_before_the_store_is_acknowledged(tmp_path, pacs, study, monkeypatch):
    """The node's answer comes after the file is renamed into place; a write that fails is answered 0xA700."""
    seen: list[bool] = []
    original = Inbox.write

    def write(self, study_uid, instance_uid, payload, sender):
        path = original(self, study_uid, instance_uid, payload, sender)
        seen.append(path.is_file() and path.read_bytes() == payload)
        return path

    monkeypatch.setattr(Inbox, "write", write)
    node = lh.listener(tmp_path / "data", pacs.port, segment=lh.fake_segment, quiet=30)
    node.start()
    try:
        datasets = lh.read_study(study)[:3]
        assert lh.send(node.port, datasets) == [0] * 3 and seen == [True] * 3

        def full(self, *args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Inbox, "write", full)
        assert lh.send(node.port, lh.read_study(study)[3:5]) == [0xA700, 0xA700]
        assert lh.echo(node.port) == 0
    finally:
        node.stop()
    [folder] = (tmp_path / "data" / "incoming").iterdir()
    assert len(list(folder.glob("*.dcm"))) == 3


def test_a_calling_ae_not_allowed_is_rejected(tmp_path, pacs):
    node = lh.listener(tmp_path / "data", pacs.port, segment=lh.fake_segment, allow=("PACS",))
    node.start()
    try:
        assoc = lh.associate(node.port, [], aet="INTRUDER")
        assert assoc.is_rejected and not assoc.is_established
        assert lh.echo(node.port, aet="PACS") == 0
    finally:
        node.stop()


def test_a_sender_without_a_known_address_is_refused(tmp_path, pacs, study, caplog):
    """No --send-to and no --peer for the calling AE: the store is refused (0x0124) and logged, never
    received and dropped."""
    caplog.set_level(logging.INFO)
    node = lh.listener(tmp_path / "data", pacs.port, segment=lh.fake_segment, send_to=False)
    node.start()
    try:
        assert lh.send(node.port, lh.read_study(study)[:2], aet="STRANGER") == [0x0124, 0x0124]
        assert lh.echo(node.port, aet="STRANGER") == 0
    finally:
        node.stop()
    assert not list((tmp_path / "data" / "incoming").iterdir())
    assert "STRANGER" in caplog.text and "--peer STRANGER@HOST:PORT" in caplog.text


def test_the_size_cap_aborts_the_association_and_keeps_what_was_stored(tmp_path, pacs, study):
    datasets = lh.read_study(study)
    sizes = [len(open(p, "rb").read()) for p in sorted(study.rglob("*.dcm"))]
    cap = sum(sizes[:4]) + sizes[4] // 2  # past the cap inside the fifth instance
    node = lh.listener(tmp_path / "data", pacs.port, segment=lh.fake_segment, cap=cap, quiet=30)
    node.start()
    try:
        statuses = lh.send(node.port, datasets[:10], timeout=3, retry=False)
        stored = statuses.count(0)
        assert 3 <= stored <= 4 and all(s is None for s in statuses[stored + 1:]), statuses
        assert lh.echo(node.port) == 0  # still serving
        [folder] = (tmp_path / "data" / "incoming").iterdir()
        assert len(list(folder.glob("*.dcm"))) == stored
        assert lh.send(node.port, datasets[:2]) == [0, 0]  # the cap is per association
    finally:
        node.stop()


def test_bad_associations_leave_the_node_serving(node, pacs, study):
    """Raw bytes to the port, an A-ASSOCIATE-RQ cut short, a connection dropped mid-PDU, an A-ABORT mid-study:
    the node answers the next C-ECHO, keeps what was stored, and the aborted study still completes."""
    for payload in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(512), b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 10,
                    b"\x04\x00\x00\x01\x00\x00"):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as conn:
            conn.sendall(payload)
        assert lh.echo(node.port) == 0, payload
    datasets = lh.read_study(study)
    assert lh.send(node.port, datasets, abort_after=5) == [0] * 5
    assert lh.echo(node.port) == 0
    [job] = finished(node)
    assert job["instances"] == 5 and job["status"] == "failed"  # five slices of a study: refused, in one line
    assert "\n" not in job["error"] and job["failed_stage"] == "segmenting"
    assert lh.send(node.port, datasets) == [0] * len(datasets)
    jobs = finished(node, 2)
    assert jobs[1]["status"] == "done", jobs[1].get("error")


def test_a_study_whose_quiet_period_elapsed_while_down_is_segmented_once_at_start(tmp_path, pacs, study):
    data = tmp_path / "data"
    counter = Counter(tmp_path / "calls.txt")
    node = lh.listener(data, pacs.port, segment=counter.segment, quiet=60)
    node.start()
    datasets = lh.read_study(study)
    try:
        assert lh.send(node.port, datasets) == [0] * len(datasets)
    finally:
        node.stop()
    assert node.jobs() == [] and counter.calls() == []
    (data / "incoming" / "stray").mkdir()  # an empty folder (a crash before the first file): removed
    later = time.time() - 120
    for path in (data / "incoming").rglob("*.dcm"):
        os.utime(path, (later, later))
    node = lh.listener(data, pacs.port, segment=counter.segment, quiet=60)
    node.start()
    try:
        [job] = finished(node)
        assert job["status"] == "done" and job["instances"] == len(datasets)
        assert len(counter.calls()) == 1 and not (data / "incoming" / "stray").exists()
    finally:
        node.stop()


def test_a_study_segmented_but_not_sent_is_sent_after_a_restart(tmp_path, pacs, study):
    """Stopped while sending (the worker left it running on disk): the restart sends without segmenting."""
    data = tmp_path / "data"
    counter = Counter(tmp_path / "calls.txt")
    release = __import__("threading").Event()

    def stuck(*args, **kwargs):
        release.wait(30)
        raise ConnectionError("stopped")  # the node is stopped while this waits

    node = lh.listener(data, pacs.port, segment=counter.segment)
    node.send = stuck
    node.start()
    try:
        assert lh.send(node.port, lh.read_study(study)) == [0] * len(lh.read_study(study))
        lh.wait_for(lambda: node.jobs() and node.jobs()[0]["stage"] == "sending", 60, "sending")
    finally:
        node.stop()
        release.set()
    [job] = node.jobs()
    assert job["segmented"] and job["status"] == "running" and len(counter.calls()) == 1
    node = lh.listener(data, pacs.port, segment=counter.segment)
    node.start()
    try:
        [job] = finished(node)
        assert job["status"] == "done" and job["attempts"] == 1 and len(counter.calls()) == 1
        lh.wait_for(lambda: len(pacs.received) == 2, 10, "SEG and SR at the PACS")
    finally:
        node.stop()


def test_a_record_written_before_its_study_moved_in_is_dropped_and_the_study_completes(tmp_path, pacs, study):
    data = tmp_path / "data"
    counter = Counter(tmp_path / "calls.txt")
    node = lh.listener(data, pacs.port, segment=counter.segment, quiet=60)
    node.start()
    try:
        lh.send(node.port, lh.read_study(study))
        store = node.store
        job_id, _ = store.create()  # what _complete writes first; the crash comes before the rename
        store.add({"id": job_id, "kind": KIND, "status": "queued", "stage": "queued", "created": 0.0,
                   "study": "x", "sender": {"aet": "PACS", "address": "127.0.0.1"}})
    finally:
        node.stop()
    node = lh.listener(data, pacs.port, segment=counter.segment)
    node.start()
    try:
        time.sleep(lh.QUIET_S)  # the inbox study's files are older than the quiet period: complete at once
        [job] = finished(node)
        assert job["id"] != job_id and job["status"] == "done" and len(counter.calls()) == 1
    finally:
        node.stop()


def _start_process(data: Path, pacs_port: int, counter: Path, slow_s: float = 0.0, port: int = 0):
    proc = subprocess.Popen([sys.executable, str(HELPER), str(data), str(pacs_port), str(counter), str(slow_s),
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=HELPER.parent)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise AssertionError(f"the node did not start: {proc.communicate()[1][-2000:]}")
    return proc, int(line)


def _records(data: Path) -> list[dict]:
    import json

    return sorted((json.loads(p.read_text()) for p in (data / "jobs").glob("*/job.json")),
                  key=lambda r: r["created"])


def test_killed_mid_study_then_restarted_loses_nothing_and_segments_once(tmp_path, pacs, study):
    """SIGKILL while a study is arriving: every acknowledged instance is on disk; the PACS sends the study again
    (as it retries a failed transfer), one job, segmented once. SIGKILL while segmenting: segmented again at the
    restart (the first run completed nothing), once."""
    data, counter = tmp_path / "data", tmp_path / "calls.txt"
    datasets = lh.read_study(study)
    proc, port = _start_process(data, pacs.port, counter)
    try:
        assoc = lh.associate(port, datasets)
        acked = []
        for ds in datasets[: len(datasets) // 2]:
            status = assoc.send_c_store(ds)
            if "Status" in status and status.Status == 0:
                acked.append(str(ds.SOPInstanceUID))
        os.kill(proc.pid, signal.SIGKILL)  # mid-study: the association is still open
        proc.wait(10)
        assoc.abort()
    finally:
        proc.kill()
    [folder] = (data / "incoming").iterdir()
    on_disk = {p.name.removesuffix(".dcm") for p in folder.glob("*.dcm")}
    # none lost; at most one more than acknowledged (stored, its answer lost: the sender's race, helpers' note)
    assert acked and set(acked) <= on_disk and len(on_disk - set(acked)) <= 1
    assert not list(folder.glob(".seg-edge-*"))  # no half-written file, and every file whole
    import pydicom

    sent = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for uid in on_disk:
        assert pydicom.dcmread(folder / f"{uid}.dcm").PixelData == sent[uid].PixelData
    proc, port = _start_process(data, pacs.port, counter, slow_s=3.0)
    try:
        assert lh.send(port, datasets) == [0] * len(datasets)
        lh.wait_for(lambda: [r for r in _records(data) if r["stage"] == "segmenting"], 30, "segmenting")
        os.kill(proc.pid, signal.SIGKILL)  # mid-segmentation
        proc.wait(10)
    finally:
        proc.kill()
    assert not counter.exists()
    proc, port = _start_process(data, pacs.port, counter)
    try:
        lh.wait_for(lambda: [r for r in _records(data) if r["status"] == "done"], 60, "the job done")
        assert lh.echo(port) == 0
    finally:
        proc.kill()
        proc.wait(10)
    [record] = _records(data)
    assert record["instances"] == len(datasets) and record["attempts"] == 2
    assert len(counter.read_text().splitlines()) == 1
    lh.wait_for(lambda: len(pacs.received) == 2, 10, "SEG and SR at the PACS")


@pytest.mark.slow
def test_seg_edge_listen_in_a_process_of_its_own_segments_a_study(tmp_path, pacs, study):
    """The command as a PACS meets it: seg-edge listen on a free port, a study sent, the real segment_study
    (raw pipeline, shipped model), the SEG and SR back at the PACS, on the study's own instances. Minutes on a
    loaded 2-core machine: slow."""
    import re

    pytest.importorskip("highdicom")
    proc = subprocess.Popen([sys.executable, "-m", "seg_edge", "listen", "--port", "0", "--quiet-seconds", "1",
                             "--send-to", f"PACS@127.0.0.1:{pacs.port}", "--data", str(tmp_path / "data")],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "seg-edge listen:" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "seg-edge listen did not start"
        port = int(re.search(r"on 127\.0\.0\.1:(\d+);", line).group(1))
        datasets = lh.read_study(study)
        assert lh.send(port, datasets) == [0] * len(datasets)
        lh.wait_for(lambda: len(pacs.received) >= 2, 900, "SEG and SR at the PACS")
    finally:
        proc.terminate()
        stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, stderr[-2000:]
    assert pacs.classes() == sorted([lh.SEG_CLASS, lh.SR_CLASS])
    study_uid = str(datasets[0].StudyInstanceUID)
    assert all(str(ds.StudyInstanceUID) == study_uid for ds in pacs.received)
    [record] = _records(tmp_path / "data")
    assert record["status"] == "done" and record["attempts"] == 1, record
    assert "stopped (unfinished studies resume at the next start)" in stderr
    assert str(datasets[0].PatientID) not in stderr and str(datasets[0].PatientName) not in stderr


# tests/dicom/bad_dicom.py's studies that a PACS can send (every file reads as a dataset): the node separates
# studies by StudyInstanceUID, so "two patients" is built here inside one study (the corpus' case puts the other
# patient in another study, which the node files apart)
SENT_BAD_CASES = ("truncated_pixels", "no_pixel_data", "inconsistent_orientation", "duplicate_position",
                  "non_mr_flair", "secondary_capture_only", "one_slice")


def _two_patients_in_one_study(bad, folder: Path) -> str:
    import pydicom

    path = bad.good_study(folder)["t2"][3]
    ds = pydicom.dcmread(path)
    ds.PatientID = "BAD-DICOM-0002"
    ds.save_as(path, enforce_file_format=True)
    return "holds instances of at least 2 patients"


def test_bad_studies_fail_in_one_line_and_the_node_keeps_serving(node, tmp_path):
    """Each bad study of the corpus, sent in turn: its job fails with the one line predict would print (the
    stand-in reads the study as segment_study does), the node answers the next study; a good one is done."""
    import pydicom

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
    import bad_dicom as bad

    cases = [(name, functools.partial(bad.CASES[name])) for name in SENT_BAD_CASES]
    cases.append(("two_patients_in_one_study", functools.partial(_two_patients_in_one_study, bad)))
    for done, (name, build) in enumerate(cases):
        folder = tmp_path / name
        folder.mkdir()
        fragment = build(folder)
        datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
        assert lh.send(node.port, datasets) == [0] * len(datasets), name
        job = finished(node, done + 1)[-1]
        assert job["status"] == "failed" and job["failed_stage"] == "segmenting", (name, job)
        assert fragment in job["error"] and "\n" not in job["error"], (name, job["error"])
        assert str(folder) not in job["error"] and "BAD-DICOM" not in job["error"]
        assert lh.echo(node.port) == 0
    good = tmp_path / "good"
    good.mkdir()
    bad.good_study(good)
    datasets = [pydicom.dcmread(p) for p in sorted(good.rglob("*.dcm"))]
    assert lh.send(node.port, datasets) == [0] * len(datasets)
    job = finished(node, len(cases) + 1)[-1]
    assert job["status"] == "done", job.get("error")
