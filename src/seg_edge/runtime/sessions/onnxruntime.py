"""ONNX Runtime CPU session."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import ArtifactError, BackendUnavailable
from seg_edge.runtime.sessions.base import SessionBase


class OrtSession(SessionBase):
    """Runs an ONNX artifact with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"
    provider = "CPUExecutionProvider"

    def __init__(self, artifact: Artifact, threads: int | None = None, cache_dir: Path | None = None):
        super().__init__(artifact.card.in_channels, len(artifact.card.regions))
        if artifact.kind != "onnx":
            raise BackendUnavailable(f"{artifact.path}: onnxruntime needs an ONNX model, got a {artifact.kind} plan")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime here lacks {self.provider} "
                                     f"(has {', '.join(ort.get_available_providers())})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(artifact.path), options, providers=[self.provider])
        except Exception as exc:  # ORT raises its own exception types, not exported stably
            raise ArtifactError(f"{artifact.path}: ONNX Runtime cannot load the model ({exc})") from exc
        self._input = artifact.card.input_name
        self._output = artifact.card.output_name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def close(self) -> None:
        self._session = None
