"""The Session protocol: logits for a batch of windows, whatever runs them."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import BackendUnavailable, InputError

# backend name → (module, class); modules are imported only when asked for.
BACKENDS = {
    "onnxruntime": ("seg_edge.runtime.sessions.onnxruntime", "OrtSession"),
    "ort-cuda": ("seg_edge.runtime.sessions.onnxruntime", "OrtCudaSession"),
    "ort-trt": ("seg_edge.runtime.sessions.onnxruntime", "OrtTensorrtSession"),
    "tensorrt": ("seg_edge.runtime.sessions.tensorrt", "TensorRTSession"),
    "openvino": ("seg_edge.runtime.sessions.openvino", "OpenVINOSession"),
}
HINTED = {"openvino"}  # backends that take a precision hint


def cache_root() -> Path:
    """Where compiled engines and caches live: $SEG_EDGE_CACHE, else $XDG_CACHE_HOME/seg-edge."""
    root = os.environ.get("SEG_EDGE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "seg-edge")
    return Path(root).expanduser()


@runtime_checkable
class Session(Protocol):
    """run(float32[N, C, X, Y, Z]) → float32[N, K, X, Y, Z] logits; a context manager."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


class SessionBase:
    """Shared input checks and lifecycle for concrete sessions."""

    name = "base"

    def __init__(self, in_channels: int, out_channels: int):
        self.in_channels = in_channels
        self.out_channels = out_channels

    def check_batch(self, batch: np.ndarray) -> None:
        if batch.dtype != np.float32 or batch.ndim != 5 or batch.shape[1] != self.in_channels:
            raise InputError(f"{self.name} session: got {batch.dtype} array of shape {batch.shape} "
                             f"(expected float32 [N, {self.in_channels}, X, Y, Z])")

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = self._run(batch)
        if out.shape[:2] != (batch.shape[0], self.out_channels) or out.shape[2:] != batch.shape[2:]:
            raise BackendUnavailable(f"{self.name} session returned shape {out.shape} for input "
                                     f"{batch.shape} (expected [N, {self.out_channels}, X, Y, Z])")
        return np.asarray(out, dtype=np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources; the default holds none."""

    def __enter__(self) -> SessionBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(artifact: Artifact, backend: str = "onnxruntime", threads: int | None = None,
                 cache_dir: Path | None = None, precision_hint: str | None = None) -> Session:
    """Open ``backend`` on ``artifact``; BackendUnavailable (never a fallback) if it cannot load."""
    if backend == "auto":
        from seg_edge.runtime.sessions.auto import open_auto

        return open_auto(artifact, threads, cache_dir, precision_hint)
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{backend}' (available: auto, {', '.join(BACKENDS)})")
    if precision_hint not in (None, "f32") and backend not in HINTED:
        raise InputError(f"--precision-hint {precision_hint} applies to {', '.join(sorted(HINTED))}, not {backend}")
    module_name, class_name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    if backend in HINTED:
        return cls(artifact, threads=threads, cache_dir=cache_dir, precision_hint=precision_hint)
    return cls(artifact, threads=threads, cache_dir=cache_dir)
