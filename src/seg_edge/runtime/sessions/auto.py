"""``--backend auto``: the fastest backend that loads here, in a documented order, said out loud.

Order: tensorrt → ort-trt → ort-cuda (NVIDIA GPU), then openvino → onnxruntime (CPU). OpenVINO
comes before ONNX Runtime on the CPU because it ran the same ONNX file faster on the machines this
project measured (docs/BENCHMARKS.md). Each backend that does not load is skipped with its reason;
the returned session carries ``auto_report = (chosen, skipped)`` and the CLI prints it.
"""

from __future__ import annotations

from pathlib import Path

from seg_edge.artifact import Artifact
from seg_edge.errors import BackendUnavailable

ORDER = ("tensorrt", "ort-trt", "ort-cuda", "openvino", "onnxruntime")


def open_auto(artifact: Artifact, threads: int | None, cache_dir: Path | None, precision_hint: str | None):
    from seg_edge.runtime.sessions.base import open_session

    skipped: list[tuple[str, str]] = []
    for name in ORDER:
        if artifact.kind == "tensorrt" and name != "tensorrt":
            skipped.append((name, "the model is a TensorRT plan"))
            continue
        try:
            session = open_session(artifact, name, threads, cache_dir,
                                   precision_hint if name == "openvino" else None)
        except BackendUnavailable as exc:
            skipped.append((name, str(exc)))
            continue
        session.auto_report = (name, skipped)
        return session
    raise BackendUnavailable("no backend loads here: " + "; ".join(f"{n}: {why}" for n, why in skipped))
