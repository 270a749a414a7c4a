"""TensorRT engines: optimization profile, build (TensorRT 10.x / 11.x Python API), cache, sidecar.

INT8 comes from a Q/DQ ONNX built as a strongly typed network (TensorRT ≥ 10.1 deprecates
calibrators, 11 removes them). FP16: on TensorRT 10 the FP16 builder flag with every
InstanceNorm layer pinned to FP32; on TensorRT 11 (always strongly typed, no precision flags)
the FP16 ONNX from ``seg-edge quantize --precision fp16``. A plan is tied to its GPU and
TensorRT version; the sidecar ``<plan>.json`` records both, and the cache rebuilds on mismatch.
No GPU is needed to import this module: ``tensorrt`` and ``cuda`` load inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from seg_edge.artifact import ModelCard, file_sha256, load_artifact, sidecar_path
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError
from seg_edge.runtime.io import default_file_mode

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (N, C, X, Y, Z) min / opt / max of the network input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def make_profile(card: ModelCard, batch: int = 1, min_xyz=None, opt_xyz=None, max_xyz=None) -> Profile:
    """Default: exactly the windows the runtime feeds (the card's patch, batch 1..``batch``)."""
    patch = tuple(card.patch_size)
    lo, opt, hi = tuple(min_xyz or patch), tuple(opt_xyz or patch), tuple(max_xyz or patch)
    for name, dims in (("min", lo), ("opt", opt), ("max", hi)):
        if len(dims) != 3 or any(d < 1 or d % card.size_divisor for d in dims):
            raise InputError(f"--{name} {dims} (expected 3 sizes, each a multiple of {card.size_divisor})")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise InputError(f"profile min {lo} <= opt {opt} <= max {hi} does not hold")
    if not all(a <= p <= c for a, p, c in zip(lo, patch, hi)):
        raise InputError(f"profile {lo}..{hi} excludes the card's window {patch} that the runtime feeds")
    c = card.in_channels
    return Profile((1, c, *lo), (1, c, *opt), (batch, c, *hi))


def build_precision(card: ModelCard, requested: str, trt_major: int) -> tuple[str, bool]:
    """(precision, strongly_typed) for this ONNX on this TensorRT major version; InputError if impossible."""
    if requested not in PRECISIONS:
        raise InputError(f"--precision {requested} (expected one of {', '.join(PRECISIONS)})")
    if requested == "int8":
        if card.precision != "int8":
            raise InputError("INT8 engines are built from a Q/DQ model: run 'seg-edge quantize --precision int8' "
                             f"first (this model's precision is {card.precision})")
        return "int8", True
    if card.precision == "int8":
        raise InputError(f"a Q/DQ (int8) model builds only as --precision int8, not {requested}")
    if requested == "fp16":
        if card.precision == "fp16":
            return "fp16", True
        if trt_major >= 11:
            raise InputError("TensorRT 11 has no FP16 builder flag: build from the FP16 ONNX of "
                             "'seg-edge quantize --precision fp16'")
        return "fp16", False  # FP16 flag, InstanceNorm pinned to FP32
    if card.precision == "fp16":
        return "fp16", True
    return "fp32", trt_major >= 11


@dataclass(frozen=True)
class Device:
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
        raise BackendUnavailable("cuda-python is not installed: pip install 'seg-edge[tensorrt]'") from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise BackendUnavailable(f"no CUDA GPU visible (cudaGetDeviceCount: {err})")
    err, props = cudart.cudaGetDeviceProperties(index)
    if int(err) != 0:
        raise BackendUnavailable(f"cannot query CUDA device {index}: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return Device(name.strip("\x00 "), f"{props.major}.{props.minor}")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (JetPack ships it; on x86: pip install tensorrt "
                                 "from NVIDIA's index); see docs/JETSON.md") from exc
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old (seg-edge needs >= 10)")
    return trt


def cache_key(onnx_sha: str, precision: str, profile: Profile, device: Device, trt_version: str) -> str:
    """Everything a plan depends on; a change in any part means a different plan."""
    text = json.dumps({"onnx": onnx_sha, "precision": precision, "profile": asdict(profile),
                       "gpu": device.name, "cc": device.compute_capability, "trt": trt_version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> Path:
    from seg_edge.runtime.sessions.base import cache_root

    return cache_root() / "engines"


def sidecar(card: ModelCard, trt_version: str, device: Device, precision: str, profile: Profile,
            build_s: float, onnx_sha: str) -> dict:
    return {"card": json.loads(card.to_json()),
            "tensorrt": {"version": trt_version, "gpu": device.name, "compute_capability": device.compute_capability,
                         "precision": precision, "profile": asdict(profile), "build_seconds": round(build_s, 2),
                         "onnx_sha256": onnx_sha}}


def read_sidecar(plan: Path) -> dict:
    path = sidecar_path(plan)
    try:
        data = json.loads(path.read_text())
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


def write_plan(data: bytes, meta: dict, out: Path) -> None:
    """Plan bytes unchanged (plain TensorRT loads it) plus ``<plan>.json``, both written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for target, payload in ((sidecar_path(out), json.dumps(meta, indent=1).encode()), (out, data)):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)



@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    workspace_gb: float = 2.0
    profile: Profile | None = None  # default: make_profile(card)
    timing_cache: Path | None = None


def _pin_instance_norm_fp32(trt, network, norm_names: set[str]) -> int:
    """TensorRT 10 FP16 builds: keep every layer parsed from an InstanceNorm node in FP32.

    Exported node names are '<module path>/<op>_<k>'; TensorRT names layers after the node
    (plus suffixes for helper layers), so a layer belongs to a norm when its name starts with a
    norm's module path or equals a native InstanceNormalization node's name.
    """
    prefixes = tuple(sorted({n.split("/")[0] + "/" for n in norm_names if "/" in n}))
    exact = {n for n in norm_names if "/" not in n}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if (prefixes and layer.name.startswith(prefixes)) or layer.name in exact:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            pinned += 1
    return pinned


def _parse(trt, onnx_path: Path, strongly_typed: bool, logger):
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    return builder, network


def build_engine(onnx_path: Path, out: Path, options: BuildOptions = BuildOptions(), log=print) -> dict:
    """Build and write ``out`` + sidecar; returns the sidecar dict. Needs TensorRT and a GPU."""
    import onnx

    from seg_edge.export.graph import instance_norm_nodes

    artifact = load_artifact(onnx_path)
    if artifact.kind != "onnx":
        raise InputError(f"{onnx_path}: build-engine needs an ONNX model")
    trt = import_tensorrt()
    device = gpu_device()
    major = int(trt.__version__.split(".")[0])
    precision, strongly_typed = build_precision(artifact.card, options.precision, major)
    profile = options.profile or make_profile(artifact.card)
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network = _parse(trt, onnx_path, strongly_typed, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        norms = set(instance_norm_nodes(onnx.load(str(onnx_path), load_external_data=False)))
        log(f"FP16 flag; {_pin_instance_norm_fp32(trt, network, norms)} InstanceNorm layers pinned to FP32")
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(artifact.card.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    blob = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailable(f"{onnx_path}: TensorRT could not build the engine (see its log above); "
                                 f"'could not find any implementation' usually means too little memory: "
                                 f"lower --workspace-gb (now {options.workspace_gb}) or the profile's max shape")
    build_s = time.perf_counter() - started
    if options.timing_cache:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = sidecar(artifact.card, trt.__version__, device, precision, profile, build_s, file_sha256(onnx_path))
    write_plan(bytes(plan), meta, out)
    return meta


def cached_engine(onnx_path: Path, precision: str | None = None, log=print) -> Path:
    """The cached plan for this ONNX here (built on first use; stale or foreign plans rebuilt)."""
    artifact = load_artifact(onnx_path)
    trt = import_tensorrt()
    device = gpu_device()
    precision = precision or artifact.card.precision
    profile = make_profile(artifact.card)
    key = cache_key(file_sha256(onnx_path), precision, profile, device, trt.__version__)
    plan = cache_dir() / f"{key}.plan"
    why = plan_is_current(plan, trt.__version__, device)
    if why:
        log(f"building TensorRT engine for {onnx_path.name} ({precision}; {why}) → {plan}")
        build_engine(onnx_path, plan, BuildOptions(precision=precision, timing_cache=cache_dir() / "timing.cache"),
                     log)
    return plan
