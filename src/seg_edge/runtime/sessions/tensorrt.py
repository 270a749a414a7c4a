"""TensorRT session: deserialize a plan, set input shapes per window batch, ``execute_async_v3``.

Device memory and copies go through NVIDIA's cuda-python (not torch), so the runtime stays
torch-free. Given an ONNX model, the plan comes from the engine cache (built on first use, in
``cache_dir`` if given); ``plans`` holds the cache and the compatibility rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import BackendUnavailable, SegEdgeError, SessionError
from seg_edge.runtime.sessions.base import SessionBase, graph_layout
from seg_edge.runtime.sessions.plans import cached_plan, gpu_device, import_tensorrt, plan_is_current


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _check(result: Any, error: type[SegEdgeError] = SessionError) -> Any:
    """The values of a cuda-python call, or ``error`` (BackendUnavailable while loading) naming its status."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise error(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTSession(SessionBase):
    """One engine, one execution context, one CUDA stream; buffers grow as window batches need."""

    name = "tensorrt"

    def __init__(self, artifact: Artifact, threads: int | None = None, cache_dir: Path | None = None):
        super().__init__(artifact.card.in_channels, artifact.card.out_channels, artifact.card.inputs.spatial_dims,
                         channels_last=graph_layout(artifact.card))
        trt = import_tensorrt()
        device = gpu_device()
        plan = artifact.path if artifact.kind == "tensorrt" else cached_plan(artifact.path, cache_dir)
        why = plan_is_current(plan, trt.__version__, device)
        if why:
            raise BackendUnavailable(f"{plan}: {why}; rebuild it with 'seg-edge build-engine'")
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # kept: a runtime must outlive its engines
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(f"{plan}: TensorRT could not deserialize the plan")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), BackendUnavailable)
        self._input, self._output = artifact.card.input_name, artifact.card.output_name
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device pointer, bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        host_in = np.ascontiguousarray(batch, dtype=np.float32)
        self._context.set_input_shape(self._input, host_in.shape)
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        host_out = np.empty(out_shape, dtype=np.float32)
        d_in = self._device_buffer(self._input, host_in.nbytes)
        d_out = self._device_buffer(self._output, host_out.nbytes)
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes, kind_h2d, self._stream))
        self._context.set_tensor_address(self._input, d_in)
        self._context.set_tensor_address(self._output, d_out)
        if not self._context.execute_async_v3(self._stream):
            raise SessionError(f"TensorRT execute_async_v3 failed for input {host_in.shape} (see TensorRT's log)")
        _check(cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, kind_d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return host_out

    def _release(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None):
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        # TensorRT objects go in reverse order of creation: context, engine, runtime
        self._context = None
        self._engine = None
        self._runtime = None
