"""Serve an ONNX model through a real Triton server on this machine, with NVIDIA's PyTriton.

PyTriton (``nvidia-pytriton``) ships the Triton Inference Server binary and binds a Python callable to
it as a model; here the callable is an ONNX Runtime CPU session on the model file, so the server speaks
Triton's HTTP/gRPC protocols (KServe v2) with dynamic batching while the network runs on the CPU. It
is how seg-edge's ``--backend triton`` session is tested and measured without a GPU or a Triton
container (tests/serve/test_triton_session.py, benchmarks/scale.py).

PyTriton pins ``numpy<2``, so it lives in its own virtual environment (``make install-pytriton``:
``.venv-pytriton``), apart from seg-edge's. This script imports only numpy, onnxruntime and pytriton.

    .venv-pytriton/bin/python tools/pytriton_server.py MODEL.onnx --name seg-edge-edge \\
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--max-batch 4] [--threads N] [--shared-memory]

It prints ``READY <grpc port>`` on stdout once the model is loaded and serves until SIGTERM or SIGINT, then
stops the server and removes its shared-memory regions.
"""

from __future__ import annotations

import argparse
import signal
import sys


def _session(model: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _match_libpython() -> None:
    """Make Triton's Python-backend stub load this interpreter's libpython.

    The stub is linked against ``libpython3.X.so.1.0`` and finds the first one on the library path; where
    that is another build of 3.X than this interpreter (here Debian's 3.11.2 beside pyenv's 3.11.7) the
    stub runs this interpreter's standard library on the other's C core and fails while loading the model
    (``'_thread.RLock' object has no attribute '_recursion_count'``). The server and its stub inherit
    the environment, so this interpreter's LIBDIR goes first on LD_LIBRARY_PATH."""
    import os
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlib.endswith(".so") and os.path.isfile(os.path.join(libdir, ldlib)):
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *[p for p in paths if p != libdir]])


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True, help="Triton model name")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workspace", default=None, help="PyTriton's workspace folder (default: a temporary one)")
    parser.add_argument("--shared-memory", action="store_true", help="let clients register system shared memory "
                        "(PyTriton restricts that protocol to holders of its access token by default)")
    args = parser.parse_args(argv)

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    _match_libpython()
    # PyTriton cleans up (its server, its /dev/shm regions) when serve() is interrupted; SIGTERM as well as SIGINT
    signal.signal(signal.SIGTERM, _interrupt)
    session = _session(args.model, args.threads)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    in_shape = [d if isinstance(d, int) else -1 for d in inp.shape[1:]]  # without the batch axis
    out_shape = [d if isinstance(d, int) else -1 for d in outp.shape[1:]]

    @batch
    def infer(**inputs):
        return {outp.name: session.run([outp.name], {inp.name: inputs[inp.name]})[0]}

    config = TritonConfig(grpc_address="127.0.0.1", http_address="127.0.0.1", metrics_address="127.0.0.1",
                          grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                          log_verbose=0)
    security = None
    if args.shared_memory:
        security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS
                                                              if e != "shared-memory"])
    with Triton(config=config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(model_name=args.name, infer_func=infer,
                    inputs=[Tensor(name=inp.name, dtype=np.float32, shape=tuple(in_shape))],
                    outputs=[Tensor(name=outp.name, dtype=np.float32, shape=tuple(out_shape))],
                    config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher()), strict=True)
        print(f"READY {args.grpc_port}", flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
