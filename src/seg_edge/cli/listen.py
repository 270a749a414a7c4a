"""``seg-edge listen``: a DICOM node a PACS sends studies to; each complete study is segmented and its SEG and SR
sent back (``seg_edge.serve.listen``). Needs the ``dicom`` extra (pydicom, highdicom, pynetdicom) and the
``preprocess`` one (SimpleITK: a study's series are raw scanner series)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import typer

from seg_edge.cli.console import err, guarded
from seg_edge.cli.options import THREADS_OPTION, Backend, model_path
from seg_edge.errors import InputError, MissingExtra


def default_data() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "seg-edge" / "listen"


def _require_extras() -> None:
    for module in ("pydicom", "highdicom", "pynetdicom", "SimpleITK"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtra(module, needed_for="seg-edge listen") from None


def _log_to_stderr() -> None:
    """Progress and failures, one line each, on stderr (seg-edge's own loggers; pynetdicom's warnings reach
    stderr through logging's last-resort handler)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("seg_edge")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@guarded
def listen(
    aet: str = typer.Option("SEGEDGE", "--aet", help="This node's AE title (the called AE title a PACS uses)."),
    port: int = typer.Option(11112, "--port", min=0, max=65535, help="DICOM port to listen on (0: a free one, "
                             "printed when the node starts)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (the node has no TLS: keep it on "
                             "localhost or a trusted network)."),
    send_to: str = typer.Option(None, "--send-to", help="Send every SEG and SR to this AET@HOST:PORT (default: "
                                "back to the sender, by its calling AE title in --peer)."),
    peer: list[str] = typer.Option([], "--peer", help="A PACS's AET@HOST:PORT (repeatable): where results go "
                                   "back to when that AE title sends a study. A sender neither here nor covered "
                                   "by --send-to has its stores refused (0x0124)."),
    allow: str = typer.Option(None, "--allow", help="Calling AE titles accepted, comma-separated (default: any); "
                              "others are rejected at association."),
    quiet_seconds: float = typer.Option(5.0, "--quiet-seconds", min=0.05, help="A study is complete when no "
                                        "instance of it has arrived for this long (and its associations closed)."),
    max_association_mb: float = typer.Option(4096.0, "--max-association-mb", min=0.001, help="Bytes received on "
                                             "one association, at most; beyond, it is aborted (what was stored "
                                             "before stays)."),
    data: Path = typer.Option(None, "--data", help="Received studies and the job store (default: "
                              "$XDG_DATA_HOME/seg-edge/listen). Unfinished work resumes after a restart."),
    model: Path = typer.Option(None, "--model", "-m", help="ONNX model with a seg-edge card (default: shipped)."),
    backend: Backend = typer.Option(None, "--backend", help="Inference backend (default: as predict chooses)."),
    reference: bool = typer.Option(False, "--reference", help="Run the card's own configuration, not its tuned "
                                   "profile (seg-edge tune)."),
    rules: Path = typer.Option(None, "--rules", help="A site's series selection rules (JSON; default: shipped)."),
    threads: int = THREADS_OPTION,
) -> None:
    """Receive DICOM studies (C-STORE SCP, C-ECHO), segment each complete study, send its SEG and SR back."""
    _require_extras()
    from seg_edge.cli.predict_raw import raw_options
    from seg_edge.dicom.node import NodeConfig, Peer, check_aet
    from seg_edge.artifact import load_artifact
    from seg_edge.dicom.study import StudyOptions, check_card, model_identity
    from seg_edge.preprocess.study import RawOutputs
    from seg_edge.serve.listen import ListenConfig, Listener

    folder = data or default_data()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder (expected a folder for the node's data)")
    if rules is not None and not rules.is_file():
        raise InputError(f"--rules {rules}: not a file (expected a selection rules JSON file)")
    peers = {p.aet: p for p in (Peer.parse(text, "--peer") for text in peer)}
    if not send_to and not peers:
        raise InputError("no destination for the results: give --send-to AET@HOST:PORT, or --peer AET@HOST:PORT "
                         "for each PACS that sends studies (its calling AE title, and where it listens)")
    allowed = tuple(check_aet(a.strip(), "--allow") for a in allow.split(",")) if allow else ()
    node = NodeConfig(aet=check_aet(aet, "--aet"), host=host, port=port, allow=allowed,
                      max_association_bytes=int(max_association_mb * 1024 * 1024),
                      send_to=Peer.parse(send_to, "--send-to") if send_to else None, peers=peers)
    options = StudyOptions(rules=rules, raw=raw_options(None, None, None, threads),
                           outputs=RawOutputs(overwrite=True))
    card = load_artifact(model_path(model)).card
    check_card(card)
    model_identity(card)  # a model the SEG cannot name is refused now, not at every study
    config = ListenConfig(node=node, data=folder, model=model_path(model), quiet_seconds=quiet_seconds,
                          backend=backend.value if backend else None, threads=threads, use_profile=not reference)
    _log_to_stderr()
    listener = Listener(config, options=options)
    listener.start()
    where = f"to {node.send_to}" if node.send_to else "back to " + ", ".join(str(p) for p in peers.values())
    err.print(f"seg-edge listen: {node.aet} on {host}:{listener.port}; results {where}; calling AE titles "
              f"{', '.join(allowed) if allowed else 'any'}; complete after {quiet_seconds:g} s quiet; data in "
              f"{folder} (synthetic-data model, not for clinical use)", markup=False, highlight=False)
    try:
        threading.Event().wait()  # until Ctrl-C or SIGTERM (seg-edge's entry point turns it into Ctrl-C)
    except KeyboardInterrupt:
        err.print("seg-edge listen: stopped (unfinished studies resume at the next start)", markup=False,
                  highlight=False)
    finally:
        listener.stop()


def register(app: typer.Typer) -> None:
    app.command("listen")(listen)
