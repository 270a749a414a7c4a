"""Helpers of the DICOM node's tests: a PACS played by pynetdicom (a storage SCP that receives the results, and
the SCU that sends a study), a stand-in for segment_study, and a node in a process of its own (``python
listen_helpers.py DATA PACS_PORT COUNTER [SLOW_S]``: the node with the stand-in, killed with SIGKILL by tests)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from seg_edge.dicom.node import NodeConfig, Peer
from seg_edge.serve.listen import ListenConfig, Listener

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"
SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
VERIFICATION = "1.2.840.10008.1.1"
# pynetdicom's requestor (the test PACS's sender) can lose a C-STORE response to its own reactor thread on a loaded
# machine ("Received unexpected C-STORE service message", about once in 1,500 stores here); it then waits out its
# DIMSE timeout and aborts, and send() stores that instance again on a new association, as a PACS retries. The
# quiet period must outlast that wait and the reconnection, or the node rightly completes the study in between:
# a store times out after 1 s (the node answers in milliseconds) and the tests' quiet period is 2 s.
STORE_TIMEOUT_S, QUIET_S = 1.0, 2.0


class Pacs:
    """A PACS's storage SCP (AE title PACS) on a free loopback port: keeps what it receives, in memory."""

    def __init__(self, aet: str = "PACS") -> None:
        self.received: list[Dataset] = []
        ae = AE(ae_title=aet)
        for uid in (SEG_CLASS, SR_CLASS):
            ae.add_supported_context(uid)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def classes(self) -> list[str]:
        return sorted(str(ds.SOPClassUID) for ds in self.received)

    def close(self) -> None:
        self.server.shutdown()


def read_study(folder: Path) -> list[Dataset]:
    """Every instance of a study folder, in a stable order."""
    return [pydicom.dcmread(path) for path in sorted(folder.rglob("*.dcm"))]


def associate(port: int, datasets: list[Dataset], aet: str = "PACS", timeout: float = 30):
    """An association to the node (AE title SEGEDGE) proposing the datasets' SOP classes (and verification).

    ``timeout`` is the DIMSE timeout (a store's answer). Negotiating the association keeps 30 s: on a loaded
    2-core machine the node's answer to an A-ASSOCIATE-RQ took over 1 s in CI (its worker reading a study), and
    a 1 s ACSE timeout failed a test that was about something else."""
    ae = AE(ae_title=aet)
    ae.dimse_timeout = timeout
    ae.acse_timeout = ae.network_timeout = max(timeout, 30.0)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets} | {VERIFICATION}):
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGEDGE")
    if assoc.is_established:  # as DCMTK-based PACS do: without it, each C-STORE waits ~40 ms on Nagle's algorithm
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def send(port: int, datasets: list[Dataset], aet: str = "PACS", abort_after: int | None = None,
         timeout: float = STORE_TIMEOUT_S, retry: bool = True) -> list[int | None]:
    """C-STORE the datasets over one association; the statuses (None: no answer, the association is gone).
    ``abort_after``: send that many, then abort the association (an A-ABORT mid-study). ``timeout``: how long
    a store waits for its answer (pynetdicom's SCU waits that long even after the peer aborted). ``retry``: a
    store left without an answer is sent again on a new association, as a PACS retries (STORE_TIMEOUT_S)."""
    assoc = associate(port, datasets, aet, timeout)
    if not assoc.is_established:
        raise AssertionError(f"association refused (rejected {assoc.is_rejected})")
    statuses: list[int | None] = []
    for index, ds in enumerate(datasets):
        if abort_after is not None and index == abort_after:
            assoc.abort()
            return statuses
        if not assoc.is_established:
            statuses.append(None)
            continue
        status = assoc.send_c_store(ds)
        if "Status" not in status and retry:
            assoc.abort()
            assoc = associate(port, datasets, aet, timeout)
            status = assoc.send_c_store(ds)
        statuses.append(int(status.Status) if "Status" in status else None)
    if assoc.is_established:
        assoc.release()
    return statuses


def echo(port: int, aet: str = "PACS") -> int | None:
    """A C-ECHO's status (None: the association was refused or broke)."""
    assoc = associate(port, [], aet)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if "Status" in status else None


def fake_segment(folder: Path, segmenter, *, out: Path, options, counter: Path | None = None,
                 slow_s: float = 0.0):
    """Stands in for segment_study: reads the study as it does (scan, rules, every chosen series' voxels, so a
    bad study fails as it would) and writes a SEG and an SR (minimal datasets of those SOP classes) beside
    ``out``. ``counter`` gets a line per completed call; ``slow_s`` sleeps first (time to kill the process)."""
    from seg_edge.dicom.rules import load_rules
    from seg_edge.dicom.select import select
    from seg_edge.dicom.series import scan
    from seg_edge.dicom.volume import read_series

    if slow_s:
        time.sleep(slow_s)
    series = scan(folder)
    chosen = select(series, load_rules())
    for info in chosen.chosen.values():
        read_series(info)
    study_uid = series[0].study_uid
    files = []
    for suffix, sop, modality in (("_seg.dcm", SEG_CLASS, "SEG"), ("_sr.dcm", SR_CLASS, "SR")):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), modality
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop, ds.SOPInstanceUID
        path = out.with_name(out.name.removesuffix(".nii.gz") + suffix)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    if counter is not None:
        with open(counter, "a") as handle:
            handle.write(f"{folder}\n")
    return SimpleNamespace(seg=files[0], sr=files[1], files=files, volumes_ml={"WT": 0.0})


def listener(data: Path, pacs_port: int, *, segment, quiet: float = QUIET_S, allow: tuple[str, ...] = (),
             cap: int = 1 << 30, send_to: bool = True, port: int = 0) -> Listener:
    """A node on a free loopback port (``port`` 0) sending results to the PACS at ``pacs_port``."""
    pacs = Peer("PACS", "127.0.0.1", pacs_port)
    node = NodeConfig(aet="SEGEDGE", port=port, allow=allow, max_association_bytes=cap,
                      send_to=pacs if send_to else None)
    return Listener(ListenConfig(node=node, data=data, model=MODEL, quiet_seconds=quiet), options=None,
                    segment=segment)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition()`` until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def main(argv: list[str]) -> None:
    """The node in this process until killed: prints its port, then serves."""
    import functools
    import logging

    data, pacs_port, counter = Path(argv[0]), int(argv[1]), Path(argv[2])
    slow = float(argv[3]) if len(argv) > 3 else 0.0
    port = int(argv[4]) if len(argv) > 4 else 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = listener(data, pacs_port, segment=functools.partial(fake_segment, counter=counter, slow_s=slow),
                    port=port)
    node.start()
    print(node.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
