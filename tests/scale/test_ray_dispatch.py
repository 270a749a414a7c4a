"""The Ray engine's dispatch loop without Ray: at most ``in_flight`` cases queued per actor, results in job
order, finished cases skipped, a lost worker fails only its own case."""

from __future__ import annotations

from types import SimpleNamespace

from seg_edge.engines.ray import _dispatch
from seg_edge.runtime.jobs import Job
from seg_edge.runtime.runner import CaseResult, OutputPolicy


class RayError(Exception):
    pass


class Ref:
    def __init__(self, index: int, job: Job):
        self.index, self.job = index, job


class FakeRay:
    """Runs each submitted case when the driver waits for it; counts cases queued per actor."""

    exceptions = SimpleNamespace(RayError=RayError)

    def __init__(self, lost: set[str]):
        self.lost, self.queued, self.peak = lost, {}, 0

    def actor(self, index: int):
        def submit(job: Job, policy: OutputPolicy):
            self.queued[index] = self.queued.get(index, 0) + 1
            self.peak = max(self.peak, self.queued[index])
            return Ref(index, job)
        return SimpleNamespace(run=SimpleNamespace(remote=submit))

    def wait(self, refs, num_returns: int):
        return refs[-1:], refs[:-1]  # the newest first: completion order differs from job order

    def get(self, ref):
        self.queued[ref.index] -= 1
        if ref.job.case_id in self.lost:
            raise RayError("The actor died unexpectedly before finishing this task. Worker exit type: SYSTEM_ERROR")
        return CaseResult(ref.job, "done")


def test_dispatch_bounds_the_queue_keeps_order_and_isolates_a_lost_worker(tmp_path):
    jobs = [Job(f"c{i}", tmp_path / f"c{i}", tmp_path / "out" / f"c{i}.nii.gz") for i in range(9)]
    (tmp_path / "out").mkdir()
    jobs[4].out.write_bytes(b"finished earlier")
    ray = FakeRay(lost={"c6"})
    seen = []
    results = _dispatch(ray, [ray.actor(0), ray.actor(1)], jobs, OutputPolicy(), 2, seen.append)
    assert [r.job for r in results] == jobs
    assert [r.status for r in results] == ["done"] * 4 + ["skipped", "done", "failed", "done", "done"]
    assert results[4].reason == "output exists (use --overwrite)"
    assert results[6].reason.startswith("Ray worker lost while on this case (RayError: The actor died")
    assert ray.peak == 2 and all(n == 0 for n in ray.queued.values())
    assert sorted(r.job.case_id for r in seen) == sorted(j.case_id for j in jobs)
