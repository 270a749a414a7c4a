"""The machine a tuned profile is measured on, and whether it is the one running now.

A profile's speed figures hold for one CPU model (its name and, where the name hides it, its
family/model/stepping), its ISA (AVX2 vs AVX-512, VNNI, BF16, AMX change
which kernels run), the cores the process may use and the backend versions; its accuracy holds for
the backend's kernels. ``predict`` applies a profile only where all of these match.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from seg_edge.card import Machine

# ISA flags (as /proc/cpuinfo names them) that change which compute kernels the backends pick
COMPUTE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# backend → the distribution whose version is recorded
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "ort-cuda": ("onnxruntime-gpu",),
                 "ort-trt": ("onnxruntime-gpu",), "openvino": ("openvino",), "tensorrt": ("tensorrt",)}


# /proc/cpuinfo keys that tell CPU generations apart where the model name does not: cloud VMs often
# report only "AMD EPYC", while Zen 4 and Zen 5 (family 25 vs 26) run the same AVX-512 code at
# different speeds; ARM boards (Jetson) name the core by implementer and part
GENERATION_KEYS = (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
                   ("CPU implementer", "implementer"), ("CPU part", "part"))


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    name, flags, generation = "", set[str](), dict[str, str]()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in dict(GENERATION_KEYS) and key not in generation:
                    generation[key] = value.strip()
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    name = name or platform.processor() or platform.machine()
    tags = [f"{label} {generation[key]}" for key, label in GENERATION_KEYS if generation.get(key)]
    return (f"{name} ({', '.join(tags)})" if tags else name), flags


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def backend_version(backend: str) -> str | None:
    """The installed version of ``backend``'s package, or None (nothing is imported). OpenVINO's
    carries the oneDNN ISA cap in force (``ONEDNN_MAX_CPU_ISA``): it changes which kernels run."""
    for dist in DISTRIBUTIONS.get(backend, ()):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        cap = onednn_isa_cap()
        return f"{version} ({ONEDNN_ISA_ENV}={cap})" if backend == "openvino" and cap else version
    return None


def onednn_isa_cap() -> str | None:
    """The ISA cap oneDNN (in OpenVINO's CPU plugin) reads from the environment when it loads, or None."""
    cap = os.environ.get(ONEDNN_ISA_ENV, "").strip().upper()
    return cap if cap and cap != "ALL" else None


def this_machine(backends: tuple[str, ...] = ("onnxruntime",)) -> Machine:
    """This machine: CPU model, compute flags, usable cores, versions of ``backends``."""
    name, flags = _cpuinfo()
    versions = {b: v for b in backends if (v := backend_version(b)) is not None}
    return Machine(name, tuple(f for f in COMPUTE_FLAGS if f in flags), cores(), versions)


def mismatch(measured: Machine, backend: str) -> str | None:
    """Why a profile measured on ``measured`` for ``backend`` does not apply here, or None if it does."""
    here = this_machine((backend,))
    if measured.cpu != here.cpu:
        return f"measured on {measured.cpu!r}, this CPU is {here.cpu!r}"
    if tuple(measured.flags) != here.flags:
        return f"measured with CPU flags {' '.join(measured.flags)}, this CPU has {' '.join(here.flags)}"
    if measured.cores != here.cores:
        return f"measured on {measured.cores} cores, this process may use {here.cores}"
    want, have = measured.versions.get(backend), here.versions.get(backend)
    if have is None:
        return f"{backend} is not installed here"
    if want is not None and want != have:
        return f"measured with {backend} {want}, this is {have}"
    return None
