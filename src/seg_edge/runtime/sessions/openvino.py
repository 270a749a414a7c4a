"""OpenVINO CPU session (extra 'openvino'): the same ONNX file, compiled per window shape.

``INFERENCE_NUM_THREADS`` from ``--threads``, the latency hint (``streams`` > 1: that many parallel
inference streams sharing the threads, each window of a batch on its own), and ``--precision-hint f32|bf16``
as OpenVINO's ``INFERENCE_PRECISION_HINT`` (bf16 only where the CPU reports BF16; otherwise
BackendUnavailable, never a silent downgrade). The export's InstanceNorm subgraphs run as OpenVINO's
fused MVN (``openvino_graph.py``; ``fuse_norms=False`` keeps them as written). Compiled models are cached
in ``CACHE_DIR`` so a second run starts fast.

oneDNN, inside OpenVINO's CPU plugin, honours its ``ONEDNN_MAX_CPU_ISA`` environment variable, read
once when the plugin loads in a process. ``ONEDNN_MAX_CPU_ISA=AVX2`` runs AVX2 kernels on an AVX-512
CPU: 8 float32 lanes instead of 16, which fills the vectors of 8-channel convolutions (measured in
docs/BENCHMARKS.md). The session says when the cap is in force (``isa_cap``, the kernels it compiled),
refuses bf16 under a cap without BF16 kernels, and the cap is part of the recorded OpenVINO version,
so a profile tuned with it applies only with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError, MissingExtra
from seg_edge.runtime.machine import ONEDNN_ISA_ENV as ISA_ENV, onednn_isa_cap
from seg_edge.runtime.sessions.base import SessionBase, cache_root, graph_layout
from seg_edge.runtime.sessions.openvino_graph import fuse_instance_norms

HINTS = ("f32", "bf16")
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")  # caps that keep BF16 kernels
KEEP_COMPILED = 3  # compiled input shapes kept per session


class OpenVINOSession(SessionBase):
    """Compiles the ONNX model for the CPU once per input shape (the runtime feeds one shape)."""

    name = "openvino"

    def __init__(self, artifact: Artifact, threads: int | None = None, cache_dir: Path | None = None,
                 precision_hint: str | None = None, streams: int = 1, fuse_norms: bool = True):
        super().__init__(artifact.card.in_channels, artifact.card.out_channels, artifact.card.inputs.spatial_dims,
                         channels_last=graph_layout(artifact.card))
        hint = precision_hint or "f32"
        if hint not in HINTS:
            raise InputError(f"--precision-hint {hint} (expected one of {', '.join(HINTS)})")
        if artifact.kind != "onnx":
            raise BackendUnavailable(f"{artifact.path}: openvino needs an ONNX model, got a {artifact.kind} plan")
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingExtra("openvino", needed_for="--backend openvino") from exc
        self._core = ov.Core()
        caps = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if hint == "bf16" and "BF16" not in caps:
            raise BackendUnavailable(f"this CPU has no BF16 support (OpenVINO reports {', '.join(caps)}); "
                                     "use --precision-hint f32")
        self.isa_cap = onednn_isa_cap()
        if hint == "bf16" and self.isa_cap and not self.isa_cap.startswith(BF16_ISAS):
            raise BackendUnavailable(f"{ISA_ENV}={self.isa_cap} leaves OpenVINO no BF16 kernels; "
                                     "use --precision-hint f32, or unset it")
        cache = Path(cache_dir or cache_root() / "openvino")
        cache.mkdir(parents=True, exist_ok=True)
        self._config: dict[str, str | int] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                                              "CACHE_DIR": str(cache)}
        self.streams = streams
        if streams > 1:  # windows are independent: one per stream, no synchronisation inside a window
            self._config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams})
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._model = self._core.read_model(str(artifact.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with its own text
            raise ArtifactError(f"{artifact.path}: OpenVINO cannot read the model ({exc})") from exc
        # the export's stable InstanceNorm subgraphs as OpenVINO's fused MVN (openvino_graph.py)
        self.fused_norms = fuse_instance_norms(self._model, artifact.card.inputs.spatial_dims) if fuse_norms else 0
        self.hint = hint
        self.name = "openvino" if hint == "f32" else f"openvino-{hint}"
        self._input = artifact.card.input_name
        self._compiled: dict[tuple[Any, ...], Any] = {}

    def _remember(self, key: tuple[Any, ...], compiled: Any) -> None:
        """Keep the ``KEEP_COMPILED`` most recent shapes: whole-crop windows differ per case, and each
        compiled shape holds its own buffers (the on-disk cache makes a recompile cheap)."""
        self._compiled[key] = compiled
        while len(self._compiled) > KEEP_COMPILED:
            self._compiled.pop(next(iter(self._compiled)))

    def _request(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            model = self._model.clone()
            model.reshape({self._input: list(shape)})
            compiled = self._check_kernels(self._core.compile_model(model, "CPU", self._config))
            self._remember(shape, compiled.create_infer_request())
        return self._compiled[shape]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.streams > 1 and batch.shape[0] > 1:
            return self._run_streams(batch)
        request = self._request(tuple(batch.shape))
        request.infer({self._input: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def _run_streams(self, batch: np.ndarray) -> np.ndarray:
        """Each window of ``batch`` as its own request, ``streams`` of them in flight at once."""
        import openvino as ov

        shape = (1,) + tuple(batch.shape[1:])
        if ("queue",) + shape not in self._compiled:
            model = self._model.clone()
            model.reshape({self._input: list(shape)})
            compiled = self._check_kernels(self._core.compile_model(model, "CPU", self._config))
            self._remember(("queue",) + shape, ov.AsyncInferQueue(compiled, self.streams))
        queue = self._compiled[("queue",) + shape]
        outputs: list[np.ndarray | None] = [None] * batch.shape[0]

        def done(request: Any, index: int) -> None:
            outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        queue.set_callback(done)
        for i in range(batch.shape[0]):
            queue.start_async({self._input: batch[i:i + 1]}, i)
        queue.wait_all()
        return np.concatenate(cast("list[np.ndarray]", outputs))  # wait_all: every window has its output

    def _check_kernels(self, compiled: Any) -> Any:
        """The compiled model, if its convolution kernels obey the ISA cap asked for (the cap is read
        once, when the CPU plugin loads: a cap set later in the process would be silently ignored)."""
        kernels = {str(op.get_rt_info()["primitiveType"].astype(str))
                   for op in compiled.get_runtime_model().get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
        wide = sorted(k for k in kernels if "avx512" in k or "amx" in k)
        if self.isa_cap and not self.isa_cap.startswith(("AVX512", "AVX10")) and wide:
            raise BackendUnavailable(f"{ISA_ENV}={self.isa_cap} was set after OpenVINO's CPU plugin loaded in this "
                                     f"process: it compiled {', '.join(wide)} (set it before seg-edge starts)")
        self.kernels = sorted(kernels)
        return compiled

    def _release(self) -> None:
        self._compiled.clear()
