"""A session whose windows run on a Triton Inference Server (extra 'triton': tritonclient[grpc]).

Everything else stays on the client: reading, preprocessing, the sliding window, blending and
postprocessing. Only batches of windows (float32 [N, C, X, Y, Z]) go to the server over gRPC and
logits come back, so the server needs nothing but the network (``seg-edge export-triton`` writes its
model repository). A batch larger than the server model's ``max_batch_size`` is sent as several
requests at once; the server's dynamic batcher and instance groups decide how they run.

``--url HOST:PORT[/MODEL][?shm=system]``: Triton's gRPC port (8001 by default); MODEL defaults to the
name ``export-triton`` gives the model (``triton_model_name``). The server's model is checked against the
card when the session opens: its input and output names, FP32, channels and rank.

``?shm=system`` (client and server on one machine): windows and logits go through two system
shared-memory regions registered with the server instead of inside the gRPC messages; the regions grow
to the largest batch seen and are unregistered and removed when the session closes.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import ArtifactError, InputError, MissingExtra, SessionError
from seg_edge.runtime.sessions.base import SessionBase, graph_layout

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 600.0  # one request is at most max_batch_size windows
MAX_PARALLEL_REQUESTS = 4
RELEASE_WAIT_S = 5.0  # the server may hold a region for a moment after it has answered


def triton_model_name(card_name: str) -> str:
    """The Triton model (folder) name of a card: its name with characters other than ``[A-Za-z0-9_.-]`` as ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", card_name).strip(".")
    return name or "seg-edge"


def parse_url(url: str, default_model: str) -> tuple[str, str, bool]:
    """(``HOST:PORT``, model name, shared memory) of ``--url HOST:PORT[/MODEL][?shm=system]``; InputError else."""
    text, _, query = url.removeprefix("grpc://").partition("?")
    if query not in ("", "shm=system"):
        raise InputError(f"--url {url}: unknown option {query!r} (expected ?shm=system, or none)")
    if "://" in text:
        raise InputError(f"--url {url}: expected HOST:PORT[/MODEL] of Triton's gRPC endpoint (grpc:// or no "
                         "scheme; the HTTP endpoint is not used)")
    address, _, model = text.partition("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--url {url}: expected HOST:PORT[/MODEL], e.g. localhost:8001")
    if model and triton_model_name(model) != model:
        raise InputError(f"--url {url}: model name {model!r} (expected letters, digits, '_', '.', '-')")
    return address, model or default_model, query == "shm=system"


class Regions:
    """Two system shared-memory regions (windows in, logits out) registered with the server; grown on demand."""

    def __init__(self, client: Any, shm: Any, tag: str, error: type[Exception]) -> None:
        self._client, self._shm, self._tag, self._error = client, shm, tag, error
        self.handles: dict[str, object] = {}
        self.sizes: dict[str, int] = {}

    def name(self, role: str) -> str:
        return f"{self._tag}-{role}"

    def ensure(self, role: str, nbytes: int) -> str:
        """The name of region ``role`` ('in'/'out'), made at least ``nbytes`` long."""
        name = self.name(role)
        if self.sizes.get(role, 0) < nbytes:
            self._drop(role)
            self.handles[role] = self._shm.create_shared_memory_region(name, "/" + name, nbytes)
            self.sizes[role] = nbytes
            self._client.register_system_shared_memory(name, "/" + name, nbytes, client_timeout=CONNECT_TIMEOUT_S)
        return name

    def _drop(self, role: str) -> None:
        if role in self.handles:
            self._unregister(self.name(role))
            self._shm.destroy_shared_memory_region(self.handles.pop(role))
            self.sizes.pop(role)

    def _unregister(self, name: str) -> None:
        """Unregister ``name``, waiting up to RELEASE_WAIT_S while the server says it is still in use.

        Triton lets go of a request's regions after it has sent the response, so a region reused or
        grown right after an answer can still be 'in use' for a few milliseconds.
        """
        deadline, delay = time.monotonic() + RELEASE_WAIT_S, 0.005
        while True:
            try:
                self._client.unregister_system_shared_memory(name, client_timeout=CONNECT_TIMEOUT_S)
                return
            except self._error as exc:
                if "in use" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def close(self) -> None:
        for role in list(self.handles):
            try:
                self._drop(role)
            except Exception:  # the server may be gone: the local region is still removed
                self._shm.destroy_shared_memory_region(self.handles.pop(role))
                self.sizes.pop(role, None)


class TritonSession(SessionBase):
    """Runs windows on a Triton server's model; the client keeps the rest of the pipeline."""

    name = "triton"

    def __init__(self, artifact: Artifact, url: str):
        card = artifact.card
        super().__init__(card.in_channels, card.out_channels, card.inputs.spatial_dims,
                         channels_last=graph_layout(card))
        self.address, self.model, shared = parse_url(url, triton_model_name(card.name))
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise MissingExtra("tritonclient", needed_for="--backend triton") from None
        self._grpc, self._error = grpcclient, InferenceServerException
        self._client = grpcclient.InferenceServerClient(self.address)
        self._pool: ThreadPoolExecutor | None = None
        self._regions: Regions | None = None
        try:
            self._check_server(url)
            config = self._client.get_model_config(self.model, as_json=True, client_timeout=CONNECT_TIMEOUT_S)
        except InferenceServerException as exc:
            self._client.close()
            raise InputError(f"--url {url}: {_one_line(exc)}") from None
        except Exception:
            self._client.close()
            raise
        self._input, self._output = card.input_name, card.output_name
        self.max_batch = int(config["config"].get("max_batch_size", 0))
        self._fixed = self._check_model(config["config"], url)
        if shared:
            self._regions = self._open_regions(url)

    def _open_regions(self, url: str) -> Regions:
        import os

        import tritonclient.utils.shared_memory as shm

        regions = Regions(self._client, shm, f"seg-edge-{os.getpid()}-{id(self):x}", self._error)
        try:
            regions.ensure("in", 4)
        except self._error as exc:
            regions.close()
            self._client.close()
            raise InputError(f"--url {url}: the server refuses system shared memory ({_one_line(exc)}); is it on "
                             "this machine, with the shared-memory protocol allowed?") from None
        return regions

    def _check_server(self, url: str) -> None:
        try:
            live = self._client.is_server_live(client_timeout=CONNECT_TIMEOUT_S)
        except self._error as exc:
            raise InputError(f"--url {url}: no Triton server answers there ({_one_line(exc)})") from None
        if not live:
            raise InputError(f"--url {url}: the Triton server is not live")
        if not self._client.is_model_ready(self.model, client_timeout=CONNECT_TIMEOUT_S):
            try:
                index = self._client.get_model_repository_index(as_json=True, client_timeout=CONNECT_TIMEOUT_S)
                names = sorted(m.get("name", "?") for m in index.get("models", []))
                has = f" (it has: {', '.join(names) or 'none'})"
            except self._error:  # servers may restrict the repository API (PyTriton does)
                has = ""
            raise InputError(f"--url {url}: the server has no ready model {self.model!r}{has}; name it as "
                             "HOST:PORT/MODEL")

    def _check_model(self, config: dict[str, Any], url: str) -> tuple[int, ...] | None:
        """ArtifactError unless the server's model takes and gives what the card says; its fixed window, if any."""
        inputs = {t["name"]: t for t in config.get("input", [])}
        outputs = {t["name"]: t for t in config.get("output", [])}
        rank = 1 + self.spatial_dims  # without the batch axis
        problems = []
        for what, table, name, channels in (("input", inputs, self._input, self.in_channels),
                                            ("output", outputs, self._output, self.out_channels)):
            spec = table.get(name)
            if spec is None:
                problems.append(f"no {what} {name!r} (it has {', '.join(table) or 'none'})")
                continue
            dims = [int(d) for d in spec.get("dims", [])][0 if self.max_batch else 1:]
            if spec.get("data_type") != "TYPE_FP32" or len(dims) != rank or dims[0] not in (channels, -1):
                axes = ", ".join(["X", "Y", "Z"][:self.spatial_dims])
                problems.append(f"{what} {name!r} is {spec.get('data_type')} {dims} (expected TYPE_FP32 "
                                f"[{channels}, {axes}] without the batch axis)")
        if problems:
            raise ArtifactError(f"--url {url}: the server's model {self.model!r} does not match the card: "
                                + "; ".join(problems))
        window = [int(d) for d in inputs[self._input]["dims"]][-self.spatial_dims:]
        return None if any(d < 0 for d in window) else tuple(window)

    def _infer(self, chunk: np.ndarray, offsets: tuple[int, int] | None = None) -> np.ndarray:
        """Logits of ``chunk``; with ``offsets`` (bytes into the in/out regions) through shared memory."""
        data = self._grpc.InferInput(self._input, list(chunk.shape), "FP32")
        wanted = self._grpc.InferRequestedOutput(self._output)
        out_shape = [chunk.shape[0], self.out_channels, *chunk.shape[2:]]
        out_bytes = 4 * int(np.prod(out_shape))
        regions = self._regions  # offsets are given only when the regions are open
        if offsets is None or regions is None:
            data.set_data_from_numpy(np.ascontiguousarray(chunk))
        else:
            data.set_shared_memory(regions.name("in"), chunk.nbytes, offset=offsets[0])
            wanted.set_shared_memory(regions.name("out"), out_bytes, offset=offsets[1])
        try:
            result = self._client.infer(self.model, [data], outputs=[wanted], client_timeout=REQUEST_TIMEOUT_S)
        except self._error as exc:
            raise SessionError(f"triton server {self.address}, model {self.model}: {_one_line(exc)}") from None
        if offsets is None or regions is None:
            logits: np.ndarray = result.as_numpy(self._output)
            return logits
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(regions.handles["out"], np.float32, out_shape,
                                                  offset=offsets[1]), copy=True)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed is not None and tuple(batch.shape[2:]) != self._fixed:
            raise ArtifactError(f"triton model {self.model} takes windows of {list(self._fixed)}, got "
                                f"{list(batch.shape[2:])}: export it with dynamic sizes, or run the card's window")
        step = self.max_batch or 1  # max_batch_size 0: the dims include the batch axis, one window a request
        starts = list(range(0, batch.shape[0], step))
        per_in = batch[0].nbytes
        per_out = per_in // self.in_channels * self.out_channels
        if self._regions is not None:
            import tritonclient.utils.shared_memory as shm

            self._regions.ensure("in", batch.nbytes)
            self._regions.ensure("out", per_out * batch.shape[0])
            shm.set_shared_memory_region(self._regions.handles["in"], [np.ascontiguousarray(batch)])

        def part(start: int) -> np.ndarray:
            chunk = batch[start:start + step]
            offsets = None if self._regions is None else (start * per_in, start * per_out)
            return self._infer(chunk, offsets)

        if len(starts) == 1:
            return part(0)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_PARALLEL_REQUESTS, thread_name_prefix="seg-edge-triton")
        return np.concatenate(list(self._pool.map(part, starts)))

    def _release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._regions is not None:
            self._regions.close()
        self._client.close()



def _one_line(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text).split())[:300]
