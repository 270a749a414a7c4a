"""The DICOM node's networking (pynetdicom): a C-ECHO and C-STORE SCP that files what a PACS sends, and the
C-STORE SCU that sends the SEG and SR back.

Receiving (``Node``):

- Every storage SOP class is accepted at association and every instance kept (MR Image Storage, classic and
  enhanced, is what gets segmented; series selection skips the rest). Refusing a presentation context makes
  many PACS fail the whole transfer, so nothing is refused by SOP class.
- An instance is filed durably (``Inbox.write``: temporary file, fsync, rename) *before* the C-STORE is
  answered 0x0000. A write that fails is answered 0xA700 (out of resources), so the sender keeps the instance
  and retries; a dataset that cannot be decoded, or has no StudyInstanceUID, is answered 0xC000.
- A calling AE title outside ``allow`` (when given) is rejected at association. A store from a calling AE
  whose results have nowhere to go (no ``send_to`` and no ``peers`` entry for it) is refused with 0x0124
  (not authorised), logged, so the PACS shows the failure rather than the study vanishing.
- ``max_association_bytes``: the bytes of PDUs received on one association; past it the association is
  aborted (A-ABORT) at once; instances already filed stay.
- Logs name a study by its key (``inbox.study_key``) and a peer by AE title and address; never a patient.

Sending (``send_files``): one association to the destination, one C-STORE per file; any failure is a
``SendError`` in one line.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from seg_edge.dicom.inbox import Inbox, Sender, study_key
from seg_edge.errors import InputError, SegEdgeError

log = logging.getLogger(__name__)

SUCCESS, NOT_AUTHORISED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0124, 0xA700, 0xC000
WARNINGS = (0xB000, 0xB006, 0xB007)  # stored, with coercion or elements discarded: still stored
VERIFICATION = "1.2.840.10008.1.1"
MAX_PDU = 1 << 20  # the largest PDU we announce: bounds what one receive holds before the size cap looks at it


class SendError(SegEdgeError):
    """Results could not be sent: the destination refused the association or a C-STORE, or did not answer."""

    label = "send error"
    exit_code = 1


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity on the network: AE title, host, port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, option: str) -> Peer:
        """``AET@HOST:PORT`` (InputError naming ``option`` and the value otherwise)."""
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise InputError(f"{option} {text!r} (expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242)")
        return cls(check_aet(aet, option), host.strip("[]"), int(port))


def check_aet(aet: str, option: str) -> str:
    """An AE title as DICOM allows it: 1-16 characters, no backslash or control characters, not all spaces."""
    if not 0 < len(aet) <= 16 or not aet.strip() or "\\" in aet or not aet.isprintable() or not aet.isascii():
        raise InputError(f"{option}: AE title {aet!r} (expected 1-16 printable ASCII characters, no backslash)")
    return aet.strip()


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """How the node listens and where results go. ``port`` 0 picks a free port (tests); ``allow`` empty:
    any calling AE title is accepted at association."""

    aet: str = "SEGEDGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allow: tuple[str, ...] = ()
    max_association_bytes: int = 4 << 30
    send_to: Peer | None = None
    peers: dict[str, Peer] = field(default_factory=dict)

    def reply_address(self, calling_aet: str) -> Peer | None:
        """Where a study's results go: ``send_to`` if given, else the sender's entry in ``peers`` (looked up
        by its calling AE title: a PACS's listening port cannot be learnt from its association)."""
        return self.send_to or self.peers.get(calling_aet.strip())


@dataclass
class _Association:
    received: int = 0
    over: bool = False
    closed: bool = False
    studies: set[str] = field(default_factory=set)


class Node:
    """The storage SCP: ``start`` binds and serves in background threads, ``stop`` closes every association."""

    def __init__(self, config: NodeConfig, inbox: Inbox, on_stored: Callable[[str], None] | None = None) -> None:
        self.config, self.inbox, self.on_stored = config, inbox, on_stored
        # keyed by the association object itself, weakly: its state lives exactly as long as it does, and an event
        # that comes after the connection closed (a store queued before an abort) still sees ``over``
        self._associations: weakref.WeakKeyDictionary[Any, _Association] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._server: Any = None
        self._ae: Any = None

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one picked for port 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> None:
        """Bind and serve; InputError in one line when the address cannot be bound."""
        ae = AE(ae_title=self.config.aet)
        for uid in (c.abstract_syntax for c in AllStoragePresentationContexts):
            if uid is not None:  # (never None in pynetdicom's list; the type allows it)
                ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        ae.require_calling_aet = list(self.config.allow)
        ae.maximum_pdu_size = MAX_PDU
        handlers: list[Any] = [(evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
                               (evt.EVT_DATA_RECV, self._count), (evt.EVT_ACCEPTED, self._accepted),
                               (evt.EVT_REJECTED, self._rejected), (evt.EVT_RELEASED, self._closed),
                               (evt.EVT_ABORTED, self._closed), (evt.EVT_CONN_CLOSE, self._closed)]
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise InputError(f"--host {self.config.host} --port {self.config.port}: cannot listen there "
                             f"({exc.strerror or exc}; expected a free port on an address of this machine)") from None
        self._ae = ae

    def stop(self) -> None:
        """Stop accepting, abort open associations, release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    def _state(self, event: Any) -> _Association:
        with self._lock:
            state = self._associations.get(event.assoc)
            if state is None:
                state = self._associations[event.assoc] = _Association()
            return state

    def _accepted(self, event: Any) -> None:
        log.info("association from %s (%s) accepted", *_who(event))

    def _rejected(self, event: Any) -> None:
        aet, address = _who(event)
        why = "calling AE title not in --allow" if self.config.allow and aet not in self.config.allow \
            else "too many associations at once"
        log.warning("association from %s (%s) rejected: %s", aet, address, why)

    def _closed(self, event: Any) -> None:
        """Released, aborted or dropped (pynetdicom may report more than one of these): the studies it sent are
        let go once."""
        state = self._state(event)
        with self._lock:
            if state.closed:
                return
            state.closed = True
        for key in state.studies:
            self.inbox.closed(key)

    def _echo(self, event: Any) -> int:
        return SUCCESS

    def _count(self, event: Any) -> None:
        """Bytes received on the association (every PDU, before it is decoded); past the cap, abort."""
        state = self._state(event)
        state.received += len(event.data)
        if state.received > self.config.max_association_bytes and not state.over:
            state.over = True
            log.warning("association from %s (%s) aborted: %d bytes received, over the cap of %d "
                        "(--max-association-mb); instances stored before it are kept", *_who(event),
                        state.received, self.config.max_association_bytes)
            event.assoc.abort(block=False)  # queued for the reactor: this runs on the association's own thread

    def _store(self, event: Any) -> int:
        state, (aet, address) = self._state(event), _who(event)
        if state.over or state.closed:
            return OUT_OF_RESOURCES
        if self.config.reply_address(aet) is None:
            log.warning("C-STORE from %s (%s) refused (0x0124): no address to send results to (give --send-to, "
                        "or --peer %s@HOST:PORT)", aet, address, aet)
            return NOT_AUTHORISED
        try:
            dataset = event.dataset
            study_uid = str(dataset.StudyInstanceUID)
            instance_uid = str(event.request.AffectedSOPInstanceUID)
            payload = event.encoded_dataset()
        except Exception as exc:  # anything a malformed dataset raises while decoding: refused, never a crash
            log.warning("C-STORE from %s (%s) refused (0xC000): dataset not decodable or without "
                        "StudyInstanceUID (%s)", aet, address, type(exc).__name__)
            return CANNOT_UNDERSTAND
        key = study_key(study_uid)
        if key not in state.studies:
            state.studies.add(key)
            self.inbox.opened(key)
            log.info("study %s: receiving from %s (%s)", key, aet, address)
        try:
            self.inbox.write(study_uid, instance_uid, payload, Sender(aet, address))
        except OSError as exc:
            log.error("study %s: an instance could not be written (%s): answered 0xA700, the sender keeps it",
                      key, exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        if self.on_stored is not None:
            self.on_stored(key)
        return SUCCESS


def _who(event: Any) -> tuple[str, str]:
    """The association's calling AE title and the peer's address (known once the request is decoded)."""
    requestor = event.assoc.requestor
    return str(requestor.ae_title).strip(), str(requestor.address)


def send_files(files: list[Path], dest: Peer, *, calling_aet: str, timeout_s: float = 30.0) -> None:
    """C-STORE each file to ``dest`` over one association (as ``calling_aet``); SendError in one line on any
    failure: association refused or not answered, a store answered with a failure status, the link lost. A
    store left without an answer is tried once more on a new association (the same SOP instances: a PACS keeps
    one copy): pynetdicom's requestor can lose a response to its own reactor thread on a loaded machine."""
    datasets = [pydicom.dcmread(path) for path in files]
    try:
        _send_once(files, datasets, dest, calling_aet, timeout_s)
    except _NoAnswer as exc:
        log.warning("%s; sending again on a new association", exc)
        _send_once(files, datasets, dest, calling_aet, timeout_s)


class _NoAnswer(SendError):
    """A C-STORE got no answer within the timeout (the association was up when it was sent)."""


def _send_once(files: list[Path], datasets: list[Any], dest: Peer, calling_aet: str, timeout_s: float) -> None:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for ds in datasets:
        syntaxes = list(dict.fromkeys([str(ds.file_meta.TransferSyntaxUID), "1.2.840.10008.1.2.1",
                                       "1.2.840.10008.1.2"]))
        ae.add_requested_context(str(ds.SOPClassUID), syntaxes)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    connection = assoc.dul.socket.socket if assoc.is_established and assoc.dul.socket is not None else None
    if connection is not None:  # each C-STORE would otherwise wait on Nagle's algorithm (measured ~45 ms a store)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "aborted the association" if assoc.is_aborted \
            else "did not answer (nothing listening, or not DICOM)"
        raise SendError(f"{dest}: {why}; {len(files)} result file(s) not sent")
    try:
        for path, ds in zip(files, datasets):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise _NoAnswer(f"{dest}: no answer to the C-STORE of {path.name} within {timeout_s:g} s")
            if code not in (SUCCESS, *WARNINGS):
                raise SendError(f"{dest}: the C-STORE of {path.name} was answered 0x{code:04X} (expected 0x0000)")
    finally:
        if assoc.is_established:
            assoc.release()
