"""TensorRT plans on this machine: what a plan is tied to, where cached plans live, the sidecar, the build.

A plan only loads on the GPU model and TensorRT version that built it; the sidecar ``<plan>.json``
records both (plus the card), and a stale or foreign plan is rebuilt, never loaded. The TensorRT
session needs all of this to open a model (an ONNX model's plan is built on first use), so it lives
in the runtime, the lowest layer; ``seg_edge.export.tensorrt`` (``seg-edge build-engine``) adds the
user's precision choice and the FP16-flag build with InstanceNorm pinned to FP32 on top.
``tensorrt`` and ``cuda`` load inside the functions: importing this module needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seg_edge.choices import EnginePrecision
from seg_edge.card import ModelCard
from seg_edge.artifact import file_sha256, load_artifact, sidecar_path
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError, MissingExtra
from seg_edge.runtime.atomic import write_bytes_atomic
from seg_edge.runtime.sessions.base import cache_root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """One optimization profile: min / opt / max of the network input, (N, C, X, Y, Z) or 2D (N, C, H, W)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def network_window(card: ModelCard) -> tuple[int, ...]:
    """The spatial size of what the runtime feeds the network: the patch (3D) or the slice size (2D)."""
    if card.inputs.spatial_dims == 2 and card.inputs.slice is not None:
        return tuple(card.inputs.slice.size)
    return tuple(card.patch_size)


def make_profile(card: ModelCard, batch: int = 1, min_xyz: tuple[int, ...] | None = None,
                 opt_xyz: tuple[int, ...] | None = None, max_xyz: tuple[int, ...] | None = None) -> Profile:
    """Default: exactly the windows the runtime feeds (the card's window, batch 1..``batch``).

    Sizes have as many entries as the card's ``spatial_dims`` (2D models: the slice's H, W).
    """
    window = network_window(card)
    dims = card.inputs.spatial_dims
    lo, opt, hi = tuple(min_xyz or window), tuple(opt_xyz or window), tuple(max_xyz or window)
    for name, sizes in (("min", lo), ("opt", opt), ("max", hi)):
        if len(sizes) != dims or any(d < 1 or d % card.size_divisor for d in sizes):
            raise InputError(f"--{name} {sizes} (expected {dims} sizes, each a multiple of {card.size_divisor}, "
                             f"for this {dims}D model)")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise InputError(f"profile min {lo} <= opt {opt} <= max {hi} does not hold")
    if not all(a <= p <= c for a, p, c in zip(lo, window, hi)):
        raise InputError(f"profile {lo}..{hi} excludes the card's window {window} that the runtime feeds")
    c = card.in_channels
    return Profile((1, c, *lo), (1, c, *opt), (batch, c, *hi))


def native_precision(card: ModelCard, trt_major: int) -> tuple[EnginePrecision, bool]:
    """(precision, strongly_typed) of the plan that runs a model as its ONNX types say.

    Q/DQ (int8) and FP16 models build strongly typed; an FP32 model builds strongly typed on
    TensorRT 11, which has no other mode, and with no precision flags on TensorRT 10.
    """
    precision = EnginePrecision(card.precision)
    return precision, precision is not EnginePrecision.fp32 or trt_major >= 11


@dataclass(frozen=True)
class Device:
    """A CUDA device as far as a plan cares: its name and compute capability."""

    name: str
    compute_capability: str


def gpu_device(index: int = 0) -> Device:
    """The CUDA device through NVIDIA's cuda-python (no torch); BackendUnavailable without one."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
    except ImportError as exc:
        raise MissingExtra("cuda", needed_for="the TensorRT backend") from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise BackendUnavailable(f"no CUDA GPU visible (cudaGetDeviceCount: {err})")
    err, props = cudart.cudaGetDeviceProperties(index)
    if int(err) != 0:
        raise BackendUnavailable(f"cannot query CUDA device {index}: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return Device(name.strip("\x00 "), f"{props.major}.{props.minor}")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10); BackendUnavailable naming how to get it otherwise."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (JetPack ships it; on x86: pip install tensorrt "
                                 "from NVIDIA's index); see docs/JETSON.md") from exc
    if trt_major(trt) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old (seg-edge needs >= 10)")
    return trt


def trt_major(trt: Any) -> int:
    """TensorRT's major version number."""
    return int(trt.__version__.split(".")[0])


def cache_key(onnx_sha: str, precision: str, profile: Profile, device: Device, trt_version: str) -> str:
    """Everything a plan depends on; a change in any part means a different plan."""
    text = json.dumps({"onnx": onnx_sha, "precision": precision, "profile": asdict(profile),
                       "gpu": device.name, "cc": device.compute_capability, "trt": trt_version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """Where cached plans (and the shared timing cache) live: ``<cache root>/engines``."""
    return cache_root() / "engines"


def sidecar(card: ModelCard, trt_version: str, device: Device, precision: str, profile: Profile,
            build_s: float, onnx_sha: str) -> dict[str, Any]:
    """The ``<plan>.json`` content: the card, and what the plan was built with and for."""
    return {"card": json.loads(card.to_json()),
            "tensorrt": {"version": trt_version, "gpu": device.name, "compute_capability": device.compute_capability,
                         "precision": precision, "profile": asdict(profile), "build_seconds": round(build_s, 2),
                         "onnx_sha256": onnx_sha}}


def read_sidecar(plan: Path) -> dict[str, Any]:
    """The sidecar of ``plan``; ArtifactError if it is missing or not seg-edge's format."""
    path = sidecar_path(plan)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        ModelCard.from_json(json.dumps(data["card"]), str(path))
        data["tensorrt"]["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a seg-edge TensorRT sidecar ({exc})") from exc
    return data


def plan_is_current(plan: Path, trt_version: str, device: Device) -> str | None:
    """None if ``plan`` was built here with this TensorRT; otherwise why it must be rebuilt."""
    if not plan.is_file():
        return "no cached plan"
    try:
        info = read_sidecar(plan)["tensorrt"]
    except ArtifactError as exc:
        return str(exc)
    if info["version"] != trt_version:
        return f"plan built with TensorRT {info['version']}, this is {trt_version}"
    if (info.get("gpu"), info.get("compute_capability")) != (device.name, device.compute_capability):
        return f"plan built for {info.get('gpu')} (sm {info.get('compute_capability')}), this is {device.name}"
    return None


def write_plan(data: bytes, meta: dict[str, Any], out: Path) -> None:
    """Plan bytes unchanged (plain TensorRT loads it) plus ``<plan>.json``, both written atomically.

    The sidecar goes first: a plan without its sidecar would be taken for a foreign plan.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(sidecar_path(out), json.dumps(meta, indent=1).encode())
    write_bytes_atomic(out, data)


@dataclass(frozen=True)
class BuildSpec:
    """One plan to build: its precision (recorded), strong typing, profile, workspace and timing cache."""

    precision: EnginePrecision
    strongly_typed: bool
    profile: Profile
    workspace_gb: float = 2.0
    timing_cache: Path | None = None


# configure(trt, network, builder_config): flags and layer precisions beyond the spec (FP16 flag path)
Configure = Callable[[Any, Any, Any], None]


def _parse(trt: Any, onnx_path: Path, strongly_typed: bool, trt_logger: Any) -> tuple[Any, Any, Any]:
    builder = trt.Builder(trt_logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    return builder, network, parser


def _serialize(trt: Any, builder: Any, network: Any, config: Any, onnx_path: Path, spec: BuildSpec) -> bytes:
    blob = spec.timing_cache.read_bytes() if spec.timing_cache and spec.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailable(f"{onnx_path}: TensorRT could not build the engine (see its log above); "
                                 f"'could not find any implementation' usually means too little memory: "
                                 f"lower --workspace-gb (now {spec.workspace_gb}) or the profile's max shape")
    if spec.timing_cache:
        spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(spec.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_plan(onnx_path: Path, out: Path, spec: BuildSpec, configure: Configure | None = None) -> dict[str, Any]:
    """Build ``out`` and its sidecar from an ONNX model; returns the sidecar. Needs TensorRT and a GPU."""
    artifact = load_artifact(onnx_path)
    if artifact.kind != "onnx":
        raise InputError(f"{onnx_path}: a TensorRT engine is built from an ONNX model, not a {artifact.kind} plan")
    trt = import_tensorrt()
    device = gpu_device()
    trt_logger = trt.Logger(trt.Logger.WARNING)  # TensorRT writes its log to stderr
    builder, network, _parser = _parse(trt, onnx_path, spec.strongly_typed, trt_logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    if configure is not None:
        configure(trt, network, config)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(artifact.card.input_name, spec.profile.min, spec.profile.opt, spec.profile.max)
    config.add_optimization_profile(trt_profile)
    started = time.perf_counter()
    plan = _serialize(trt, builder, network, config, onnx_path, spec)
    meta = sidecar(artifact.card, trt.__version__, device, spec.precision.value, spec.profile,
                   time.perf_counter() - started, file_sha256(onnx_path))
    write_plan(plan, meta, out)
    return meta


def cached_plan(onnx_path: Path, folder: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The plan of this ONNX model for this GPU and TensorRT, from ``folder`` (default: ``cache_dir()``).

    Built on first use, and rebuilt when stale or foreign. A build takes minutes, so it is announced
    through ``log`` (default: a warning on this module's logger, which reaches stderr even where
    logging is not configured; never stdout, which belongs to ``--json``).
    """
    artifact = load_artifact(onnx_path)
    trt = import_tensorrt()
    device = gpu_device()
    precision, strongly_typed = native_precision(artifact.card, trt_major(trt))
    profile = make_profile(artifact.card)
    folder = Path(folder) if folder is not None else cache_dir()
    key = cache_key(file_sha256(onnx_path), precision.value, profile, device, trt.__version__)
    plan = folder / f"{key}.plan"
    why = plan_is_current(plan, trt.__version__, device)
    if why:
        (log or logger.warning)(f"building TensorRT engine for {onnx_path.name} ({precision.value}; {why}) → {plan}")
        build_plan(onnx_path, plan, BuildSpec(precision, strongly_typed, profile,
                                              timing_cache=folder / "timing.cache"))
    return plan
