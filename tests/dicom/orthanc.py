"""A real PACS for the tests: Debian's Orthanc started as a plain process on loopback (never the package's
system service), with a configuration and storage of its own in a temporary folder, free ports, no plugins,
and its log kept in a file that the tests show when they fail. The REST helpers cover what a round trip needs:
upload a folder of DICOM files, declare a modality, C-ECHO it, send a study to it (Orthanc's C-STORE SCU),
find a study, list its series by modality, download instances. Also a pynetdicom C-STORE SCU, to send files
to Orthanc (or to any node) the way a scanner would.

Used by tests/dicom/test_orthanc_roundtrip.py and benchmarks/dicom_node.py (a module name of its own, not a
conftest: ``conftest`` is tests/conftest.py's). Orthanc 1.10 (Debian 12) is what CI installs; the keys written
are the ones its own /etc/orthanc/orthanc.json documents. Orthanc 1.10 has no bind-address option for its DICOM
port (it listens on every interface); its HTTP server refuses other hosts (RemoteAccessAllowed false), and
the tests only ever talk to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc")  # Debian installs it in /usr/sbin, not on a user's PATH
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; the message holds the answer and the log's tail."""


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None where it is not installed."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_orthanc() -> str:
    """The Orthanc executable, or the calling test is skipped with the reason (CI installs it: .ci/run)."""
    import pytest

    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc; .ci/run installs it)")
    return binary


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice). Another process may take it before Orthanc binds it:
    ``running_orthanc`` tries again with new ports when Orthanc says a port is in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def config(folder: Path, *, http_port: int, dicom_port: int, aet: str, unknown_sop_class_accepted: bool = False,
           modalities: dict[str, list[Any]] | None = None, lua_scripts: list[Path] | None = None) -> dict[str, Any]:
    """An Orthanc 1.10 configuration for a test: its own storage under ``folder``, no plugins, no
    authentication (loopback only), every calling AE allowed to C-ECHO and C-STORE, jobs not saved."""
    storage = folder / "storage"
    return {
        "Name": "seg-edge test PACS",
        "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "Plugins": [],  # the package's DICOMweb, worklist and folder plugins are not needed
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpThreadsCount": 8,
        "DicomServerEnabled": True, "DicomAet": aet, "DicomPort": dicom_port, "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": unknown_sop_class_accepted,
        # usually declared per test with PUT /modalities/{id}, once the peer's port is known
        "DicomModalities": modalities or {}, "LuaScripts": [str(p) for p in lua_scripts or []],
        "DicomScuTimeout": 30, "DicomScpTimeout": 30,
        "SaveJobs": False, "ConcurrentJobs": 1, "StableAge": 60, "OverwriteInstances": False,
        "DeidentifyLogs": True, "LogExportedResources": False, "MetricsEnabled": False,
        "StorageCompression": False,
    }


@dataclass
class Orthanc:
    """A running Orthanc: its ports, AE title, log file and a small REST client."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    log_path: Path
    _opened: list[Any] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://{HOST}:{self.http_port}"

    def log_tail(self, lines: int = 40, *, since: int = 0) -> str:
        """The last ``lines`` lines of Orthanc's log (from byte ``since``)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(log unreadable: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def log_size(self) -> int:
        """The log's size now in bytes (a mark for ``log_tail(since=...)``)."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def request(self, method: str, path: str, body: bytes | None = None, *,
                content_type: str = "application/json", timeout: float = 120.0) -> bytes:
        """One REST call; an HTTP error or no answer raises OrthancError with the answer and the log's tail."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                data: bytes = answer.read()
                return data
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise OrthancError(f"{method} {path}: HTTP {e.code}: {detail}\n--- Orthanc log ---\n"
                               f"{self.log_tail()}") from None
        except (urllib.error.URLError, OSError) as e:
            raise OrthancError(f"{method} {path}: no answer ({e})\n--- Orthanc log ---\n{self.log_tail()}") from None

    def get(self, path: str) -> Any:
        """GET, JSON answer."""
        return json.loads(self.request("GET", path))

    def post(self, path: str, data: Any, *, timeout: float = 120.0) -> Any:
        """POST a JSON body, JSON answer."""
        return json.loads(self.request("POST", path, json.dumps(data).encode(), timeout=timeout) or b"{}")

    def upload_file(self, path: Path) -> dict[str, Any]:
        """POST /instances with one DICOM file: Orthanc's answer (ID, Status, ParentStudy, ...)."""
        answer: dict[str, Any] = json.loads(self.request("POST", "/instances", Path(path).read_bytes(),
                                                         content_type="application/dicom"))
        return answer

    def upload_folder(self, folder: Path) -> list[dict[str, Any]]:
        """Every file under ``folder`` (any depth, sorted) through POST /instances; their answers."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        if not files:
            raise OrthancError(f"{folder}: no files to upload")
        return [self.upload_file(p) for p in files]

    def add_modality(self, name: str, *, aet: str, host: str = HOST, port: int) -> None:
        """Declare (or replace) the remote modality ``name`` (PUT /modalities/{name}; kept in memory)."""
        self.request("PUT", f"/modalities/{name}", json.dumps({"AET": aet, "Host": host, "Port": port}).encode())

    def echo(self, name: str) -> None:
        """C-ECHO from Orthanc to the modality ``name``; OrthancError when it does not answer."""
        self.request("POST", f"/modalities/{name}/echo", b"{}")

    def send(self, name: str, resources: list[str], *, timeout: float = 600.0) -> dict[str, Any]:
        """Orthanc's C-STORE SCU: send ``resources`` (Orthanc IDs of studies, series or instances) to the
        modality ``name`` and wait until sent; the job's answer (InstancesCount, FailedInstancesCount, ...)."""
        answer: dict[str, Any] = self.post(f"/modalities/{name}/store",
                                           {"Resources": resources, "Synchronous": True}, timeout=timeout)
        return answer

    def find_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc ID of the study with this StudyInstanceUID, or None (POST /tools/find)."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}})
        return str(found[0]) if found else None

    def series_by_modality(self, study_id: str) -> dict[str, list[dict[str, Any]]]:
        """The study's series (GET /studies/{id}/series) grouped by their Modality tag."""
        out: dict[str, list[dict[str, Any]]] = {}
        for series in self.get(f"/studies/{study_id}/series"):
            out.setdefault(str(series["MainDicomTags"].get("Modality", "")), []).append(series)
        return out

    def instances(self, series_id: str) -> list[dict[str, Any]]:
        """A series' instances (GET /series/{id}/instances)."""
        found: list[dict[str, Any]] = self.get(f"/series/{series_id}/instances")
        return found

    def download(self, instance_id: str, path: Path) -> Path:
        """The instance's DICOM file (GET /instances/{id}/file) written to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.request("GET", f"/instances/{instance_id}/file"))
        return path

    def stop(self, *, graceful: bool = False) -> int | None:
        """Kill Orthanc and wait for it: the process is gone when this returns (its exit status). SIGKILL by
        default: its storage is a test's throwaway, and a graceful stop (SIGTERM, then SIGKILL if it hangs)
        takes ~3 s, its HTTP and DICOM servers' polling loops winding down (measured)."""
        return stop_process(self.process, self._opened, timeout=STOP_TIMEOUT_S if graceful else None)


def stop_process(process: subprocess.Popen[bytes], opened: list[Any], *, timeout: float | None) -> int | None:
    """Stop a test's server process and wait for it (its exit status); close the files it was given. With a
    ``timeout``: SIGTERM first, SIGKILL if it has not ended by then; without: SIGKILL at once."""
    if process.poll() is None:
        if timeout is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            process.kill()
        process.wait()
    for f in opened:
        f.close()
    opened.clear()
    return process.returncode


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25,
              explain: Callable[[], str] = lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy (returned); TimeoutError naming ``what`` (and
    ``explain()``, the logs) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{explain()}")
        time.sleep(interval)


def _start(binary: str, folder: Path, aet: str, unknown_sop_class_accepted: bool, tcp_nodelay: bool,
           extra: dict[str, Any]) -> Orthanc:
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config(folder, http_port=http_port, dicom_port=dicom_port, aet=aet,
                                     unknown_sop_class_accepted=unknown_sop_class_accepted, **extra), indent=1))
    log_path = folder / "orthanc.log"
    log = log_path.open("ab")
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"  # DCMTK's switch (FAQ #48): off by default since DCMTK 3.6.2
    # --verbose: associations and REST calls in the log, which is what a failing round trip needs to show.
    # Its own process group, so that a Ctrl-C in the terminal reaches pytest, which then stops Orthanc itself.
    process = subprocess.Popen([binary, "--verbose", str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder, start_new_session=True, env=env)
    return Orthanc(process=process, http_port=http_port, dicom_port=dicom_port, aet=aet, folder=folder,
                   log_path=log_path, _opened=[log])


def _ready(orthanc: Orthanc) -> bool:
    if orthanc.process.poll() is not None:
        raise OrthancError(f"Orthanc exited with status {orthanc.process.returncode} while starting\n"
                           f"--- Orthanc log ---\n{orthanc.log_tail()}")
    try:
        system = orthanc.get("/system")
    except OrthancError:
        return False
    return bool(system.get("DicomPort") == orthanc.dicom_port)


@contextlib.contextmanager
def running_orthanc(folder: Path, *, aet: str = "ORTHANC", unknown_sop_class_accepted: bool = False,
                    tcp_nodelay: bool = True, modalities: dict[str, list[Any]] | None = None,
                    lua_scripts: list[Path] | None = None, attempts: int = 3) -> Iterator[Orthanc]:
    """Start Orthanc with its config, storage and log under ``folder``, yield it once its REST API answers,
    and stop it (and wait for it) on the way out, whatever happened inside. Skips the test where Orthanc is
    not installed. A port taken between choosing it and Orthanc binding it: new ports, up to ``attempts``.

    ``tcp_nodelay`` sets DCMTK's TCP_NODELAY=1 in Orthanc's environment. Without it, DCMTK ≥ 3.6.2 leaves
    Nagle's algorithm on, and a small instance Orthanc sends waits on the receiver's delayed ACK: measured on
    loopback here, 20 MR instances of 64x64 from Orthanc to a pynetdicom SCP took 0.97 s without it and 0.13 s
    with it; a full-size study (795 instances of 256x256 and more, 95 MB) 10.7 s and 11.6 s, no gain. A PACS's
    setting, not the node's (benchmarks/dicom_node.py measures both)."""
    binary = require_orthanc()
    orthanc = start_until_bound(
        lambda attempt: _start(binary, folder / f"run{attempt}", aet, unknown_sop_class_accepted, tcp_nodelay,
                               {"modalities": modalities, "lua_scripts": lua_scripts}),
        lambda o: wait_for(lambda: _ready(o), timeout=START_TIMEOUT_S, what="Orthanc's REST API", interval=0.1,
                           explain=o.log_tail),
        taken="already in use", errors=(OrthancError, TimeoutError), attempts=attempts)
    try:
        yield orthanc
    finally:
        orthanc.stop()


def start_until_bound(start: Callable[[int], Any], ready: Callable[[Any], object], *, taken: str,
                      errors: tuple[type[BaseException], ...], attempts: int) -> Any:
    """``start(attempt)`` a server process (it has ``stop()`` and ``log_tail()``) and return it once ``ready``
    returns; a port taken between choosing it and the server binding it (its log says ``taken``): stopped and
    started again on new ports, up to ``attempts`` times. Any other failure is raised at once."""
    if attempts < 1:
        raise ValueError(f"attempts={attempts}: expected at least one try")
    for attempt in range(attempts):
        server = start(attempt)
        try:
            ready(server)
            return server
        except errors:
            server.stop()
            if taken not in server.log_tail() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def logs_on_failure(request: Any, logs: dict[str, Callable[[], str]]) -> Iterator[None]:
    """Around a test (in a function-scoped fixture): when the test failed, write each log (a name and a
    function returning its text) to the terminal after it. pytest's own capture would not show them: they
    are read at teardown, after the failing call has been reported."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for name, read in logs.items():
        text = read()
        if reporter is not None:
            reporter.write_sep("-", f"{request.node.name}: {name}")
            reporter.write_line(text)


LOST_RESPONSE_RETRIES = 2
DIMSE_TIMEOUT_S = 10.0  # loopback: a response later than this is lost, not slow


def c_store(files: list[Path], *, port: int, called_aet: str, calling_aet: str = "SEGEDGE-TEST",
            host: str = HOST) -> list[int]:
    """Send DICOM files with pynetdicom's C-STORE SCU, as a scanner would: the status of each (0 = success).
    Raises OrthancError when the association is refused (with the rejected presentation contexts) or a file's
    SOP class has no accepted presentation context.

    pynetdicom 3.0.4's requestor has a race: its association thread can take a C-STORE response off the
    queue before ``send_c_store`` waits for it (logged "Received unexpected C-STORE service message"; seen
    here once in ~10 associations of 20 stores on the loaded 2-core machine, then a DIMSE timeout and an
    abort). The instances not yet answered are sent again on a new association, at most
    ``LOST_RESPONSE_RETRIES`` times (storing an instance twice is harmless: Orthanc keeps one). pynetdicom also
    leaves Nagle's algorithm on, which makes each store wait ~45 ms for the peer's delayed ACK; that wait also
    makes the race rarer, so it is left on."""
    from pydicom import dcmread

    datasets = [dcmread(p) for p in files]
    statuses: list[int] = []
    for _ in range(LOST_RESPONSE_RETRIES + 1):
        statuses += _store_on_one_association(datasets[len(statuses):], files[len(statuses):], port=port,
                                              called_aet=called_aet, calling_aet=calling_aet, host=host)
        if len(statuses) == len(datasets):
            return statuses
    raise OrthancError(f"C-STORE to {called_aet}@{host}:{port}: no response for {files[len(statuses)]} after "
                       f"{LOST_RESPONSE_RETRIES + 1} associations")


def _store_on_one_association(datasets: list[Any], files: list[Path], *, port: int, called_aet: str,
                              calling_aet: str, host: str) -> list[int]:
    """Statuses of the files stored on one association, up to the first response that never came."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID) for ds in datasets
                                             if str(ds.SOPClassUID) == sop_class][:1])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        rejected = "; ".join(f"{cx.abstract_syntax} rejected ({cx.status})" for cx in assoc.rejected_contexts)
        raise OrthancError(f"C-STORE to {called_aet}@{host}:{port}: association not established"
                           f"{': ' + rejected if rejected else ''}")
    statuses = []
    try:
        for ds, path in zip(datasets, files):
            try:
                status = assoc.send_c_store(ds)
            except ValueError as e:  # pynetdicom: no accepted presentation context for this SOP class
                raise OrthancError(f"C-STORE of {path} to {called_aet}: {e}") from None
            if "Status" not in status:  # no response: pynetdicom has aborted the association
                break
            statuses.append(int(status.Status))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


@dataclass
class ReceivedByScp:
    """What ``storage_scp`` received: C-ECHOs counted, C-STOREd instances written to ``folder``."""

    folder: Path
    port: int
    echoes: int = 0
    stored: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def storage_scp(folder: Path, *, aet: str = "PYSCP") -> Iterator[ReceivedByScp]:
    """A pynetdicom C-ECHO and C-STORE SCP on a free loopback port (every storage SOP class), writing each
    instance to ``folder``; shut down on the way out."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

    folder.mkdir(parents=True, exist_ok=True)
    received = ReceivedByScp(folder=folder, port=free_port())

    def on_echo(event: Any) -> int:
        received.echoes += 1
        return 0x0000

    def on_store(event: Any) -> int:
        path = folder / f"{len(received.stored):05d}.dcm"
        event.dataset.file_meta = event.file_meta
        event.dataset.save_as(path, enforce_file_format=True)
        received.stored.append(path)
        return 0x0000

    ae = AE(ae_title=aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server((HOST, received.port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        if server is not None:
            server.shutdown()
