"""ONNX Runtime CPU session."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError
from seg_edge.runtime.machine import cores
from seg_edge.runtime.sessions.base import SessionBase, cache_root, graph_layout


class OrtSession(SessionBase):
    """Runs an ONNX artifact with ONNX Runtime's CPU execution provider (subclasses: GPU providers)."""

    name = "onnxruntime"
    provider = "CPUExecutionProvider"

    def __init__(self, artifact: Artifact, threads: int | None = None, cache_dir: Path | None = None,
                 streams: int = 1):
        super().__init__(artifact.card.in_channels, artifact.card.out_channels, artifact.card.inputs.spatial_dims,
                         channels_last=graph_layout(artifact.card))
        self.streams = streams
        if streams > 1 and self.provider != "CPUExecutionProvider":
            raise InputError(f"{self.name}: streams {streams} (parallel windows are for the CPU providers)")
        if artifact.kind != "onnx":
            raise BackendUnavailable(f"{artifact.path}: {self.name} needs an ONNX model, got a {artifact.kind} plan")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{self.name}: this onnxruntime lacks {self.provider} (has "
                                     f"{', '.join(ort.get_available_providers())}){self.install_hint}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads or streams > 1:  # streams: the threads are shared out, one window per stream
            options.intra_op_num_threads = max(1, (threads or cores()) // streams)
        providers = [(self.provider, self.provider_options(cache_dir))]
        try:
            self._session = ort.InferenceSession(str(artifact.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types, not exported stably
            raise ArtifactError(f"{artifact.path}: ONNX Runtime cannot load the model ({exc})") from exc
        if self._session.get_providers()[0] != self.provider:  # ORT falls back silently; we do not
            raise BackendUnavailable(f"{self.name}: {self.provider} did not load (ORT fell back to "
                                     f"{self._session.get_providers()[0]}); is a GPU visible?")
        self._input = artifact.card.input_name
        self._output = artifact.card.output_name
        self._pool: ThreadPoolExecutor | None = None

    install_hint = ""

    def provider_options(self, cache_dir: Path | None) -> dict[str, Any]:
        """Options of this session's execution provider (the CPU provider takes none)."""
        return {}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.streams > 1 and batch.shape[0] > 1:  # ORT sessions may run from several threads at once
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="seg-edge-ort")
            parts = self._pool.map(lambda i: self._session.run([self._output], {self._input: batch[i:i + 1]})[0],
                                   range(batch.shape[0]))
            return np.concatenate(list(parts))
        logits: np.ndarray = self._session.run([self._output], {self._input: batch})[0]
        return logits

    def _release(self) -> None:
        self._session = None
        if self._pool is not None:
            self._pool.shutdown()


class OrtCudaSession(OrtSession):
    """ONNX Runtime's CUDA execution provider (onnxruntime-gpu)."""

    name = "ort-cuda"
    provider = "CUDAExecutionProvider"
    install_hint = "; pip install onnxruntime-gpu (instead of onnxruntime)"


class OrtTensorrtSession(OrtSession):
    """ONNX Runtime's TensorRT execution provider, with engine and timing caches on disk."""

    name = "ort-trt"
    provider = "TensorrtExecutionProvider"
    install_hint = "; pip install onnxruntime-gpu and TensorRT"

    def provider_options(self, cache_dir: Path | None) -> dict[str, Any]:
        folder = Path(cache_dir or cache_root() / "ort-trt")
        folder.mkdir(parents=True, exist_ok=True)
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder),
                "trt_fp16_enable": False, "trt_int8_enable": False}
