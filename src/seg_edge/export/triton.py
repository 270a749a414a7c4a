"""A Triton Inference Server model repository for a seg-edge model (``seg-edge export-triton``).

    REPO/<name>/config.pbtxt          the model configuration (protobuf text, Triton's ModelConfig)
    REPO/<name>/seg-edge-card.json    the model card, for clients and people (Triton ignores it)
    REPO/<name>/1/model.onnx          backend onnxruntime or openvino (the same ONNX file)
    REPO/<name>/1/model.plan          backend tensorrt_plan (a plan from ``seg-edge build-engine``)

The configuration names the card's input and output tensors (FP32), their dims without the batch
axis (channels, then the spatial sizes: -1 where the graph or the plan's profile lets them vary,
else the fixed window), ``max_batch_size`` with dynamic batching, and the instance group. The ONNX
Runtime backend on a GPU gets ONNX Runtime's TensorRT execution accelerator. Field names follow
Triton's model_configuration.md and the onnxruntime/openvino/tensorrt backends' READMEs; the tests
parse every variant with Triton's own ``model_config.proto`` (from tritonclient).

The repository is written into a temporary folder beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from seg_edge.artifact import Artifact, load_artifact, sidecar_path
from seg_edge.choices import TritonBackend, TritonDevice
from seg_edge.errors import InputError
from seg_edge.runtime.atomic import TEMP_PREFIX
from seg_edge.runtime.sessions.triton import triton_model_name

CARD_FILE = "seg-edge-card.json"


FILES = {TritonBackend.onnxruntime: "model.onnx", TritonBackend.tensorrt_plan: "model.plan",
         TritonBackend.openvino: "model.onnx"}


@dataclass(frozen=True)
class TritonOptions:
    """What ``export-triton`` writes; ``device`` None: gpu, except openvino (CPU only)."""

    backend: TritonBackend = TritonBackend.onnxruntime
    max_batch: int = 4
    instances: int = 1
    device: TritonDevice | None = None
    name: str | None = None  # default: the card's name (triton_model_name)
    queue_delay_us: int = 100  # how long the dynamic batcher waits to fill a batch
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.max_batch < 0:
            raise InputError(f"--max-batch {self.max_batch} (expected 0, no batching, or more)")
        if self.instances < 1:
            raise InputError(f"--instances {self.instances} (expected 1 or more)")
        if self.name is not None and triton_model_name(self.name) != self.name:
            raise InputError(f"--name {self.name!r} (expected letters, digits, '_', '.', '-')")
        if self.backend == TritonBackend.openvino and self.device == TritonDevice.gpu:
            raise InputError("--backend openvino runs on the CPU (Triton's OpenVINO backend has no GPU instances)")

    @property
    def kind(self) -> str:
        device = self.device or (TritonDevice.cpu if self.backend == TritonBackend.openvino else TritonDevice.gpu)
        return "KIND_GPU" if device == TritonDevice.gpu else "KIND_CPU"


def _onnx_dims(artifact: Artifact, name: str) -> list[int | str | None] | None:
    info = next((t for t in (*artifact.inputs, *artifact.outputs) if t.name == name), None)
    return None if info is None or info.dims is None else list(info.dims)


def tensor_dims(artifact: Artifact, options: TritonOptions) -> tuple[list[int], list[int]]:
    """(input dims, output dims) without the batch axis: channels, then -1 or the fixed spatial size."""
    card = artifact.card
    spatial = card.inputs.spatial_dims
    if artifact.kind == "tensorrt":
        profile = json.loads(sidecar_path(artifact.path).read_text()).get("tensorrt", {}).get("profile", {})
        lo, hi = profile.get("min"), profile.get("max")
        if not lo or not hi:
            raise InputError(f"{artifact.path}: its sidecar has no TensorRT profile "
                             "(rebuild it with seg-edge build-engine)")
        window = [a if a == b else -1 for a, b in zip(lo[2:], hi[2:])]
        if options.max_batch > hi[0]:
            raise InputError(f"--max-batch {options.max_batch}: the plan's profile allows batches up to {hi[0]} "
                             "(build it with a larger batch, or lower --max-batch)")
        return [card.in_channels, *window], [card.out_channels, *window]
    dims = _onnx_dims(artifact, card.input_name) or [None] * (2 + spatial)
    if options.max_batch and isinstance(dims[0], int) and dims[0] > 0:
        raise InputError(f"{artifact.path}: the graph's batch axis is fixed at {dims[0]}; use --max-batch 0")
    window = [d if isinstance(d, int) and d > 0 else -1 for d in dims[2:]]
    return [card.in_channels, *window], [card.out_channels, *window]


def _tensor(name: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def config_text(artifact: Artifact, options: TritonOptions, name: str) -> str:
    """The ``config.pbtxt`` of ``artifact`` served as ``name``."""
    card = artifact.card
    in_dims, out_dims = tensor_dims(artifact, options)
    if options.max_batch == 0:  # no batching: the batch axis is part of the dims
        in_dims, out_dims = [-1, *in_dims], [-1, *out_dims]
    # TensorRT plans are named by 'platform' (Triton's TensorRT backend reads no 'backend' field)
    served_by = ('platform: "tensorrt_plan"' if options.backend == TritonBackend.tensorrt_plan
                 else f'backend: "{options.backend.value}"')
    lines = [f'name: "{name}"', served_by, f"max_batch_size: {options.max_batch}",
             f"input [\n{_tensor(card.input_name, in_dims)}\n]", f"output [\n{_tensor(card.output_name, out_dims)}\n]"]
    if options.max_batch > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]")
    lines.append(f'default_model_filename: "{FILES[options.backend]}"')
    if options.backend == TritonBackend.onnxruntime and options.kind == "KIND_GPU":
        precision = "FP16" if card.precision == "fp16" else "FP32"
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                     '        name: "tensorrt"\n'
                     f'        parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                     '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                     '        parameters { key: "trt_engine_cache_enable" value: "1" }\n'
                     "      }\n    ]\n  }\n}")
    return "\n".join(lines) + "\n"


def _check_kind(artifact: Artifact, backend: TritonBackend) -> None:
    if backend == TritonBackend.tensorrt_plan and artifact.kind != "tensorrt":
        raise InputError(f"{artifact.path}: --backend tensorrt_plan needs a TensorRT plan with its card "
                         "(seg-edge build-engine MODEL.onnx --out model.plan, on the serving GPU)")
    if backend != TritonBackend.tensorrt_plan and artifact.kind != "onnx":
        raise InputError(f"{artifact.path}: --backend {backend.value} needs an ONNX model, got a TensorRT plan")


def write_triton_repo(model: Path, repo: Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write ``repo/<name>/`` for ``model``; returns that folder. InputError if it exists (without overwrite)."""
    artifact = load_artifact(model)
    _check_kind(artifact, options.backend)
    name = options.name or triton_model_name(artifact.card.name)
    target = Path(repo) / name
    if target.exists() and not options.overwrite:
        raise InputError(f"{target}: exists (use --overwrite to replace it)")
    if Path(repo).exists() and not Path(repo).is_dir():
        raise InputError(f"{repo}: exists and is not a folder (expected a model repository folder)")
    text = config_text(artifact, options, name)
    try:
        Path(repo).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=repo))
    except OSError as exc:
        raise InputError(f"{repo}: cannot write the model repository there ({exc.strerror})") from None
    try:
        (staging / "1").mkdir()
        shutil.copyfile(artifact.path, staging / "1" / FILES[options.backend])
        (staging / "config.pbtxt").write_text(text)
        (staging / CARD_FILE).write_text(artifact.card.to_json())
        os.chmod(staging, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
