"""A session whose windows run on a Triton Inference Server (extra 'triton': tritonclient[grpc]).

Everything else stays on the client: reading, preprocessing, the sliding window, blending and
postprocessing. Only batches of windows (float32 [N, C, X, Y, Z]) go to the server over gRPC and
logits come back, so the server needs nothing but the network (``seg-edge export-triton`` writes its
model repository). A batch larger than the server model's ``max_batch_size`` is sent as several
requests at once; the server's dynamic batcher and instance groups decide how they run.

``--url HOST:PORT[/MODEL]``: Triton's gRPC port (8001 by default); MODEL defaults to the name
``export-triton`` gives the model (``triton_model_name``). The server's model is checked against the
card when the session opens: its input and output names, FP32, channels and rank.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from seg_edge.artifact import Artifact
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError, SessionError
from seg_edge.runtime.sessions.base import SessionBase

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 600.0  # one request is at most max_batch_size windows
MAX_PARALLEL_REQUESTS = 4


def triton_model_name(card_name: str) -> str:
    """The Triton model (folder) name of a card: its name with characters other than ``[A-Za-z0-9_.-]`` as ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", card_name).strip(".")
    return name or "seg-edge"


def parse_url(url: str, default_model: str) -> tuple[str, str]:
    """(``HOST:PORT``, model name) of ``--url HOST:PORT[/MODEL]``; InputError for another form."""
    text = url.removeprefix("grpc://")
    if "://" in text:
        raise InputError(f"--url {url}: expected HOST:PORT[/MODEL] of Triton's gRPC endpoint (grpc:// or no "
                         "scheme; the HTTP endpoint is not used)")
    address, _, model = text.partition("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--url {url}: expected HOST:PORT[/MODEL], e.g. localhost:8001")
    if model and triton_model_name(model) != model:
        raise InputError(f"--url {url}: model name {model!r} (expected letters, digits, '_', '.', '-')")
    return address, model or default_model


class TritonSession(SessionBase):
    """Runs windows on a Triton server's model; the client keeps the rest of the pipeline."""

    name = "triton"

    def __init__(self, artifact: Artifact, url: str):
        card = artifact.card
        super().__init__(card.in_channels, card.out_channels, card.inputs.spatial_dims)
        self.address, self.model = parse_url(url, triton_model_name(card.name))
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise BackendUnavailable(f"--backend triton needs tritonclient: pip install 'seg-edge[triton]' "
                                     f"({exc})") from None
        self._grpc, self._error = grpcclient, InferenceServerException
        self._client = grpcclient.InferenceServerClient(self.address)
        self._pool: ThreadPoolExecutor | None = None
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

    def _check_model(self, config: dict, url: str) -> tuple[int, ...] | None:
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
                problems.append(f"{what} {name!r} is {spec.get('data_type')} {dims} (expected TYPE_FP32 "
                                f"[{channels}, {', '.join(['X', 'Y', 'Z'][:self.spatial_dims])}] without the batch axis)")
        if problems:
            raise ArtifactError(f"--url {url}: the server's model {self.model!r} does not match the card: "
                                + "; ".join(problems))
        window = [int(d) for d in inputs[self._input]["dims"]][-self.spatial_dims:]
        return None if any(d < 0 for d in window) else tuple(window)

    def _request(self, chunk: np.ndarray) -> np.ndarray:
        if not self.max_batch:  # the model's dims include the batch axis: one window per request
            return np.concatenate([self._infer(chunk[i:i + 1]) for i in range(chunk.shape[0])])
        return self._infer(chunk)

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        data = self._grpc.InferInput(self._input, list(chunk.shape), "FP32")
        data.set_data_from_numpy(np.ascontiguousarray(chunk))
        wanted = self._grpc.InferRequestedOutput(self._output)
        try:
            result = self._client.infer(self.model, [data], outputs=[wanted], client_timeout=REQUEST_TIMEOUT_S)
        except self._error as exc:
            raise SessionError(f"triton server {self.address}, model {self.model}: {_one_line(exc)}") from None
        return result.as_numpy(self._output)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed is not None and tuple(batch.shape[2:]) != self._fixed:
            raise ArtifactError(f"triton model {self.model} takes windows of {list(self._fixed)}, got "
                                f"{list(batch.shape[2:])}: export it with dynamic sizes, or run the card's window")
        step = self.max_batch or batch.shape[0]
        chunks = [batch[i:i + step] for i in range(0, batch.shape[0], step)]
        if len(chunks) == 1:
            return self._request(chunks[0])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_PARALLEL_REQUESTS, thread_name_prefix="seg-edge-triton")
        return np.concatenate(list(self._pool.map(self._request, chunks)))

    def _release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._client.close()


def _one_line(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text).split())[:300]
