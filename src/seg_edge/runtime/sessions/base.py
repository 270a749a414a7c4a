"""The Session protocol: logits for a batch of windows, whatever runs them."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.card import ModelCard
from seg_edge.errors import ArtifactError, InputError, SessionError

class AutoReport(NamedTuple):
    """What ``--backend auto`` chose and why each faster backend was skipped (the CLI prints it)."""

    chosen: str
    skipped: list[tuple[str, str]]


# backend name → (module, class); modules are imported only when asked for.
BACKENDS = {
    "onnxruntime": ("seg_edge.runtime.sessions.onnxruntime", "OrtSession"),
    "ort-cuda": ("seg_edge.runtime.sessions.onnxruntime", "OrtCudaSession"),
    "ort-trt": ("seg_edge.runtime.sessions.onnxruntime", "OrtTensorrtSession"),
    "tensorrt": ("seg_edge.runtime.sessions.tensorrt", "TensorRTSession"),
    "openvino": ("seg_edge.runtime.sessions.openvino", "OpenVINOSession"),
    "triton": ("seg_edge.runtime.sessions.triton", "TritonSession"),
}
HINTED = {"openvino"}  # backends that take a precision hint
REMOTE = {"triton"}  # backends whose network runs on a server at ``url``
STREAMED = {"onnxruntime", "openvino"}  # backends that run a batch's windows in parallel streams


def cache_root() -> Path:
    """Where compiled engines and caches live: $SEG_EDGE_CACHE, else $XDG_CACHE_HOME/seg-edge."""
    root = os.environ.get("SEG_EDGE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "seg-edge")
    return Path(root).expanduser()


@runtime_checkable
class Session(Protocol):
    """run(float32[N, C, X, Y, Z]) → float32[N, K, X, Y, Z] logits; a context manager."""

    name: str
    auto_report: AutoReport | None
    isa_cap: str | None

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


class SessionBase:
    """Shared input and output checks and the lifecycle of concrete sessions.

    Subclasses implement ``_run`` and, if they hold resources, ``_release``; ``run`` refuses a
    closed session and ``close`` may be called any number of times.
    """

    name = "base"
    # what --backend auto decided (chosen backend, skipped ones with their reasons); None when named
    auto_report: AutoReport | None = None
    # the CPU kernel set a backend is capped at (OpenVINO under ONEDNN_MAX_CPU_ISA); None when uncapped
    isa_cap: str | None = None

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, *,
                 channels_last: tuple[bool, bool] = (False, False)):
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        # the graph's input / output is N, *spatial, C (a card's layout "channels_last"): ``run`` still
        # takes and gives N, C, *spatial, like every session, and moves the axes for the graph
        self.channels_last = channels_last
        self.closed = False

    def check_batch(self, batch: np.ndarray) -> None:
        """InputError unless ``batch`` is float32 [N, C, *spatial] with this model's C and rank."""
        if batch.dtype != np.float32 or batch.ndim != 2 + self.spatial_dims or batch.shape[1] != self.in_channels:
            axes = ", ".join("XYZ"[:self.spatial_dims]) if self.spatial_dims == 3 else "H, W"
            raise InputError(f"{self.name} session: got {batch.dtype} array of shape {batch.shape} "
                             f"(expected float32 [N, {self.in_channels}, {axes}])")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits float32 [N, K, X, Y, Z] for ``batch``; ArtifactError if the model's output disagrees with its card."""
        if self.closed:
            raise SessionError(f"{self.name} session is closed; open a new one to run more batches")
        self.check_batch(batch)
        last_in, last_out = self.channels_last
        out = self._run(np.ascontiguousarray(np.moveaxis(batch, 1, -1)) if last_in else batch)
        if last_out:
            out = np.moveaxis(out, -1, 1)
        expected = (batch.shape[0], self.out_channels, *batch.shape[2:])
        if tuple(out.shape) != expected:
            # the backend loaded and ran: a wrong shape is the model's (or its card's) defect, not a missing backend
            raise ArtifactError(f"{self.name} session: the model returned shape {tuple(out.shape)} for input "
                                f"{tuple(batch.shape)}; its card expects {expected} ([N, {self.out_channels} "
                                f"regions, X, Y, Z])")
        return np.asarray(out, dtype=np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources; later ``run`` calls raise SessionError. Safe to call again."""
        if not self.closed:
            self.closed = True
            self._release()

    def _release(self) -> None:
        """Free what the backend holds; the default holds nothing."""

    def __enter__(self) -> SessionBase:
        if self.closed:
            raise SessionError(f"{self.name} session is closed; open a new one")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def graph_layout(card: ModelCard) -> tuple[bool, bool]:
    """(input, output) of the card's graph channels-last: what ``SessionBase(channels_last=...)`` takes."""
    return card.inputs.layout == "channels_last", card.outputs.layout == "channels_last"


def open_session(artifact: Artifact, backend: str = "onnxruntime", threads: int | None = None,
                 cache_dir: Path | None = None, precision_hint: str | None = None, streams: int = 1,
                 url: str | None = None) -> Session:
    """Open ``backend`` on ``artifact``; BackendUnavailable (never a fallback) if it cannot load.

    ``streams`` > 1 (CPU backends): the windows of a batch run in parallel, one per stream, the
    threads shared out among them. ``url``: the server of a remote backend (triton: HOST:PORT[/MODEL])."""
    if backend == "auto":  # checked like a named backend: nothing asked for is dropped
        if url is not None:
            raise InputError(f"--url {url} applies to --backend triton; --backend auto chooses among the local "
                             "backends (give --backend triton to use the server)")
        if streams < 1:
            raise InputError(f"streams {streams} (expected 1 or more)")
        from seg_edge.runtime.sessions.auto import open_auto

        return open_auto(artifact, threads, cache_dir, precision_hint, streams)
    if backend not in BACKENDS:
        raise InputError(f"backend '{backend}' (expected one of auto, {', '.join(BACKENDS)})")
    if precision_hint not in (None, "f32") and backend not in HINTED:
        raise InputError(f"--precision-hint {precision_hint} applies to {', '.join(sorted(HINTED))}, not {backend}")
    if streams != 1 and (streams < 1 or backend not in STREAMED):
        raise InputError(f"streams {streams} with {backend} (expected 1, or more on {', '.join(sorted(STREAMED))})")
    if (url is not None) != (backend in REMOTE):
        raise InputError(f"--url {url} applies to --backend triton, not {backend}" if url is not None
                         else f"--backend {backend} needs --url HOST:PORT (the server's gRPC port)")
    if backend in REMOTE:
        if threads or streams != 1 or cache_dir is not None:
            raise InputError(f"--threads/streams apply to local backends; the {backend} server sets its own")
        module_name, class_name = BACKENDS[backend]
        remote: Session = getattr(importlib.import_module(module_name), class_name)(artifact, url)
        return remote
    module_name, class_name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    extra = {"streams": streams} if streams != 1 else {}
    hint = {"precision_hint": precision_hint} if backend in HINTED else {}
    session: Session = cls(artifact, threads=threads, cache_dir=cache_dir, **hint, **extra)
    return session
