"""The other half of the PACS round trip: ``seg-edge listen`` as its own process on loopback, and reading what
comes back (the SEG's labels on the reference series' frames, the SR's volumes). Used by
tests/dicom/test_orthanc_roundtrip.py and benchmarks/dicom_node.py beside tests/dicom/orthanc.py (a module name
of its own, not a conftest)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthanc import HOST, Orthanc, free_port, start_until_bound, stop_process, wait_for

LISTEN_START_TIMEOUT_S = 60.0  # a cold start imports pydicom, pynetdicom, onnxruntime, SimpleITK on a busy 2-core box
LISTEN_STOP_TIMEOUT_S = 15.0


@dataclass
class Listener:
    """A running ``seg-edge listen``: its AE title, port, data folder and log."""

    process: subprocess.Popen[bytes]
    aet: str
    port: int
    data: Path
    log_path: Path
    _opened: list[Any] = field(default_factory=list, repr=False)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the listener's output (stdout and stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            return f"(log unreadable: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM (the node stops as a user's Ctrl-C would stop it), SIGKILL if it hangs; waited for."""
        return stop_process(self.process, self._opened, timeout=LISTEN_STOP_TIMEOUT_S)


def listen_command(*, aet: str, port: int, send_to: str, data: Path, quiet_seconds: float,
                   model: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The command line that starts the node (``python -m seg_edge listen ...``)."""
    command = [sys.executable, "-m", "seg_edge", "listen", "--aet", aet, "--port", str(port), "--send-to", send_to,
               "--quiet-seconds", f"{quiet_seconds:g}", "--data", str(data)]
    if model is not None:
        command += ["--model", str(model)]
    return command + list(extra)


@contextlib.contextmanager
def running_listener(folder: Path, orthanc: Orthanc, *, aet: str = "SEGEDGE", quiet_seconds: float = 2.0,
                     model: Path | None = None, extra: Sequence[str] = (), modality: str = "segedge",
                     attempts: int = 3) -> Iterator[Listener]:
    """Start ``seg-edge listen`` (results sent to ``orthanc``), declare it in Orthanc as ``modality``, and yield
    it once Orthanc's C-ECHO reaches it; stopped and waited for on the way out, whatever happened inside. A
    port taken before the node bound it (the node exits): new port, up to ``attempts``."""
    def start(attempt: int) -> Listener:
        started = _start(folder / f"listen{attempt}", orthanc, aet=aet, quiet_seconds=quiet_seconds, model=model,
                         extra=extra)
        orthanc.add_modality(modality, aet=aet, port=started.port)
        return started

    listener: Listener = start_until_bound(
        start, lambda lst: wait_for(lambda: _answers(orthanc, modality, lst), timeout=LISTEN_START_TIMEOUT_S,
                                    what="seg-edge listen answering Orthanc's C-ECHO", interval=0.5,
                                    explain=lambda: f"--- seg-edge listen output ---\n{lst.log_tail()}"),
        taken="in use", errors=(RuntimeError, TimeoutError), attempts=attempts)
    try:
        yield listener
    finally:
        listener.stop()


def _start(folder: Path, orthanc: Orthanc, *, aet: str, quiet_seconds: float, model: Path | None,
           extra: Sequence[str]) -> Listener:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "listen.log"
    log = log_path.open("ab")
    command = listen_command(aet=aet, port=port, send_to=f"{orthanc.aet}@{HOST}:{orthanc.dicom_port}",
                             data=folder / "data", quiet_seconds=quiet_seconds, model=model, extra=extra)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Listener(process=process, aet=aet, port=port, data=folder / "data", log_path=log_path, _opened=[log])


def _answers(orthanc: Orthanc, modality: str, listener: Listener) -> bool:
    from orthanc import OrthancError

    if listener.process.poll() is not None:
        raise RuntimeError(f"seg-edge listen exited with status {listener.process.returncode} while starting\n"
                           f"--- seg-edge listen output ---\n{listener.log_tail()}")
    try:
        orthanc.echo(modality)
    except OrthancError:
        return False
    return True


def results_in_orthanc(orthanc: Orthanc, study_uid: str, listener: Listener | None = None) -> dict[str, str] | None:
    """The Orthanc instance IDs of the study's SEG and SR once both have arrived (one instance each), else None.
    With ``listener``: RuntimeError at once when the node has exited or logged a failed job (no point waiting)."""
    if listener is not None:
        failed = [line for line in listener.log_tail(200).splitlines() if "failed while" in line]
        if failed or listener.process.poll() is not None:
            raise RuntimeError(f"seg-edge listen: {failed[-1] if failed else 'exited'}\n--- seg-edge listen "
                               f"output ---\n{listener.log_tail()}")
    study = orthanc.find_study(study_uid)
    if study is None:
        return None
    by_modality = orthanc.series_by_modality(study)
    found = {}
    for modality in ("SEG", "SR"):
        instances = [i for s in by_modality.get(modality, []) for i in orthanc.instances(s["ID"])]
        if not instances:
            return None
        found[modality] = str(instances[-1]["ID"])
    return found


def reference_datasets(seg_path: Path, study_dir: Path) -> list[Any]:
    """The headers of the series the SEG was derived from (its ReferencedSeriesSequence), read from
    ``study_dir``, in frame order (along the slice normal: ``seg_edge.dicom.seg.frame_order``)."""
    import pydicom

    from seg_edge.dicom.seg import frame_order

    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    datasets = []
    for path in sorted(p for p in Path(study_dir).rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(ds.get("SeriesInstanceUID", "")) == series_uid:
            datasets.append(ds)
    if not datasets:
        raise RuntimeError(f"{seg_path}: its reference series {series_uid} is not in {study_dir}")
    return frame_order(datasets)


def seg_labels(seg_path: Path, source: Sequence[Any], *, label_scheme: str) -> Any:
    """The SEG's label map (frames, rows, cols) on ``source``'s frames, read by highdicom
    (``seg_edge.dicom.seg.labels_from_seg``)."""
    import pydicom

    from seg_edge.dicom.seg import labels_from_seg

    return labels_from_seg(pydicom.dcmread(seg_path), source, label_scheme=label_scheme)


def sr_volumes(sr_path: Path) -> dict[str, float]:
    """Each region's volume (mL) in a TID 1500 SR written by ``seg_edge.dicom.sr.write_sr``, read by highdicom:
    NCR/ED/ET from the volumetric ROI groups, WT/TC from the image measurement groups."""
    import highdicom as hd

    report = hd.sr.srread(sr_path).content
    found: dict[str, float] = {}
    groups = [*report.get_volumetric_roi_measurement_groups(), *report.get_image_measurement_groups()]
    for group in groups:
        (measurement,) = group.get_measurements()
        if (measurement.name.value, measurement.unit.value) != ("118565006", "mL"):
            raise RuntimeError(f"{sr_path}: measurement {measurement.name} in {measurement.unit} (expected "
                               "SCT 118565006 Volume in mL)")
        found[group.tracking_identifier.split(":")[0]] = float(measurement.value)
    return found
