"""``--backend auto``: the fastest backend that loads here, in a documented order, said out loud.

Order: tensorrt → ort-trt → ort-cuda (NVIDIA GPU), then openvino → onnxruntime (CPU). OpenVINO
comes before ONNX Runtime on the CPU because it ran the same ONNX file faster on the machines this
project measured (docs/BENCHMARKS.md). Each backend that does not load is skipped with its reason;
the returned session carries ``auto_report`` (``AutoReport(chosen, skipped)``) and the CLI prints it.
``streams`` > 1 is applied to the chosen backend: those that cannot run parallel streams are skipped
with that reason, never opened with the streams silently dropped.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from seg_edge.artifact import Artifact
from seg_edge.errors import BackendUnavailable

if TYPE_CHECKING:  # base imports this module when auto is asked for
    from seg_edge.runtime.sessions.base import Session

ORDER = ("tensorrt", "ort-trt", "ort-cuda", "openvino", "onnxruntime")


def open_auto(artifact: Artifact, threads: int | None, cache_dir: Path | None, precision_hint: str | None,
              streams: int = 1) -> Session:
    """The first backend of ``ORDER`` that loads here (and runs ``streams`` parallel streams), with its report."""
    from seg_edge.runtime.sessions.base import HINTED, STREAMED, AutoReport, open_session

    skipped: list[tuple[str, str]] = []
    for name in ORDER:
        if artifact.kind == "tensorrt" and name != "tensorrt":
            skipped.append((name, "the model is a TensorRT plan"))
            continue
        if streams != 1 and name not in STREAMED:
            skipped.append((name, f"runs no parallel streams ({streams} asked; {', '.join(sorted(STREAMED))} do)"))
            continue
        try:
            session = open_session(artifact, name, threads, cache_dir,
                                   precision_hint if name in HINTED else None, streams)
        except BackendUnavailable as exc:
            skipped.append((name, str(exc)))
            continue
        session.auto_report = AutoReport(name, skipped)
        return session
    raise BackendUnavailable("no backend loads here: " + "; ".join(f"{n}: {why}" for n, why in skipped))
