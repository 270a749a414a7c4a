"""A folder of cases on Ray actors (extra 'ray'): one Segmenter per actor, outputs written by the actors.

Each actor opens the model once and runs whole cases with ``runner.run_cases``, the one function every
caller runs cases with, so a case's outputs follow the same rules as on one machine: checked before any
work, staged, renamed into place with the label map last (its presence marks a finished case), one case's
failure recorded and the others run. The driver only lists the cases, skips the finished ones (by the
same rule, ``jobs.finished``), hands the others out and collects the actors' ``CaseResult``s (the report,
volumes, the files written): images and label maps never travel through Ray, so the output folder
must be one that every node sees (shared storage), and so must the model and the cases.

Backpressure: at most ``in_flight`` cases are queued per actor (one running, the next waiting), the
rest stay in the driver's listing; an actor holds one case's arrays at a time.

Ctrl-C stops the batch: the actors are ended where they stand, so a case in flight leaves no label
map (a re-run redoes it) but may leave its temporary ``.seg-edge-*`` files in the output folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge import errors
from seg_edge.errors import InputError, MissingExtra
from seg_edge.runtime.jobs import Job, failure_reason, finished
from seg_edge.runtime.machine import cores
from seg_edge.runtime import runner
from seg_edge.runtime.runner import SKIPPED, CaseResult, OutputPolicy
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
ACTORS_START_TIMEOUT_S = 600.0  # placing the actors and loading a model on each


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """How each actor opens its Segmenter (``Segmenter.open_profiled``'s arguments)."""

    model: Path
    backend: str | None = None
    threads: int | None = None
    options: SegmenterOptions = field(default_factory=SegmenterOptions)
    precision_hint: str | None = None
    use_profile: bool = True
    url: str | None = None  # --backend triton: the server

    def open(self) -> Segmenter:
        return Segmenter.open_profiled(self.model, self.backend, self.threads, self.options, self.precision_hint,
                                       self.use_profile, url=self.url)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` None starts a local Ray instance on this machine."""

    address: str | None = None
    actors: int = 2
    cpus_per_actor: float = 1.0
    in_flight: int = 2  # cases queued per actor

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise InputError(f"--actors {self.actors} (expected 1 or more)")
        if not self.cpus_per_actor > 0:
            raise InputError(f"--actor-cpus {self.cpus_per_actor} (expected more than 0)")
        if self.in_flight < 1:
            raise InputError(f"in-flight cases per actor {self.in_flight} (expected 1 or more)")


class SegmenterActor:
    """One loaded model on a Ray worker; ``ray.remote`` wraps it when the engine runs."""

    def __init__(self, spec: ModelSpec):
        self.segmenter: Segmenter | None = None
        self.error: tuple[str, str] | None = None
        try:
            self.segmenter = spec.open()
        except errors.SegEdgeError as exc:  # handed to the driver, which raises it as its own
            self.error = (type(exc).__name__, str(exc))

    def ready(self) -> dict:
        """The model's state on this actor: an error, or its backend and the node it runs on."""
        import ray

        if self.error is not None or self.segmenter is None:
            return {"error": self.error}
        return {"backend": self.segmenter.session.name, "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "note": self.segmenter.profile_note}

    def run(self, job: Job, policy: OutputPolicy) -> CaseResult:
        """One case through ``run_cases``; a failure comes back as a failed result (its reason, not the
        exception object, which need not survive pickling)."""
        if self.segmenter is None:  # the driver stops at ready()'s error before handing out cases
            return CaseResult(job, "failed", f"this actor's model did not load: {self.error}")
        [result] = runner.run_cases([job], self.segmenter, policy)
        return dataclasses.replace(result, error=None)


def _import_ray(local: bool):
    if local and "ray" not in sys.modules:
        # Ray reads this once, at import: off, a Ray instance is single-node and binds only loopback
        # (127.0.0.1) instead of the machine's network address; a cluster (--address) needs it on.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise MissingExtra("ray", needed_for="--engine ray") from None
    return ray


def _probe(address: str) -> None:
    """InputError unless something accepts a TCP connection at ``address`` (HOST:PORT, or ray://HOST:PORT)."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address!r} (expected HOST:PORT of a Ray head node, e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"--address {address}: no Ray cluster answers there ({reason}); start one with "
                         "'ray start --head', or leave --address out to use this machine") from None


def connect(ray, options: RayOptions, note: Callable[[str], None]) -> bool:
    """Join ``options.address`` or start a local instance; True if this call started Ray (and must stop it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if options.address is None:
        cpus = max(cores(), int(np.ceil(options.actors * options.cpus_per_actor)))
        note(f"engine ray: no --address, starting a local Ray instance on this machine ({cpus} CPUs, loopback only)")
        ray.init(address="local", num_cpus=cpus, object_store_memory=100 * 2**20, **quiet)
        return True
    _probe(options.address)
    try:
        ray.init(address=options.address, **quiet)
    except Exception as exc:  # ConnectionError, AuthenticationError (a token cluster), version mismatches
        first = " ".join(str(exc).split())[:300]
        raise InputError(f"--address {options.address}: cannot join this Ray cluster ({type(exc).__name__}: "
                         f"{first}); a cluster with token authentication needs RAY_AUTH_MODE=token and its "
                         "RAY_AUTH_TOKEN here too") from None
    note(f"engine ray: joined the Ray cluster at {options.address}")
    return True


def _check_room(ray, options: RayOptions) -> None:
    """InputError if the cluster cannot place every actor (they would wait for CPUs forever)."""
    have = ray.cluster_resources().get("CPU", 0)
    need = options.actors * options.cpus_per_actor
    if need > have:
        raise InputError(f"--actors {options.actors} × --actor-cpus {options.cpus_per_actor:g} needs {need:g} CPUs; "
                         f"the Ray cluster has {have:g}")


def start_actors(ray, spec: ModelSpec, options: RayOptions, note: Callable[[str], None]) -> list:
    """The actors, each with its model loaded; the first actor's load error is raised here, as is."""
    remote = ray.remote(num_cpus=options.cpus_per_actor, max_restarts=1)(SegmenterActor)
    actors = [remote.remote(spec) for _ in range(options.actors)]
    try:
        states = ray.get([a.ready.remote() for a in actors], timeout=ACTORS_START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise errors.SegEdgeError(f"the {len(actors)} Ray actor(s) did not start within {ACTORS_START_TIMEOUT_S:g} s "
                                  "(no node with the CPUs they ask for, or the model is slow to load)") from None
    for state in states:
        if "error" in state:
            name, message = state["error"]
            raise getattr(errors, name, errors.SegEdgeError)(message)
    nodes = {s["node"] for s in states}
    note(f"engine ray: {len(actors)} actor(s) on {len(nodes)} node(s), backend {states[0]['backend']}, "
         f"at most {options.in_flight} case(s) queued per actor")
    if states[0]["note"]:
        note(states[0]["note"])
    return actors


def run_on_ray(spec: ModelSpec, jobs: list[Job], policy: OutputPolicy, options: RayOptions,
               on_case: Callable[[CaseResult], None] | None = None,
               note: Callable[[str], None] = log.info) -> list[CaseResult]:
    """Every job on Ray actors; results in job order, finished cases skipped, failures recorded."""
    ray = _import_ray(options.address is None)
    started = connect(ray, options, note)
    actors: list = []
    try:
        _check_room(ray, options)
        actors = start_actors(ray, spec, options, note)
        return _dispatch(ray, actors, jobs, policy, options.in_flight, on_case)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def _dispatch(ray, actors: list, jobs: list[Job], policy: OutputPolicy, in_flight: int,
              on_case: Callable[[CaseResult], None] | None) -> list[CaseResult]:
    """Keep each actor ``in_flight`` cases deep until the listing is done; collect as they finish."""
    results: dict[int, CaseResult] = {}
    todo: deque[int] = deque()
    for i, job in enumerate(jobs):
        if finished(job, policy.overwrite):
            results[i] = CaseResult(job, "skipped", SKIPPED)
            if on_case:
                on_case(results[i])
        else:
            todo.append(i)
    pending: dict = {}  # ObjectRef → (index of the job, actor index)
    queued = [0] * len(actors)
    while todo or pending:
        for a, actor in enumerate(actors):
            while queued[a] < in_flight and todo:
                i = todo.popleft()
                pending[actor.run.remote(jobs[i], policy)] = (i, a)
                queued[a] += 1
        [ref], _ = ray.wait(list(pending), num_returns=1)
        i, a = pending.pop(ref)
        queued[a] -= 1
        results[i] = _collect(ray, ref, jobs[i])
        if on_case:
            on_case(results[i])
    return [results[i] for i in range(len(jobs))]


def _collect(ray, ref, job: Job) -> CaseResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the actor died (killed, out of memory) while on this case
        log.debug("case %s lost", job.case_id, exc_info=True)
        first = failure_reason(exc).split(". ")[0]
        return CaseResult(job, "failed", f"Ray worker lost while on this case ({first[:200]})")
