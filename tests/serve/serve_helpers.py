"""Helpers and fixtures of the server's tests: an app on the tiny model with a fresh job store, uploads."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")

from fastapi.testclient import TestClient  # noqa: E402

from seg_edge.serve.app import create_app  # noqa: E402
from seg_edge.serve.jobs import ServeConfig  # noqa: E402

MODALITIES = ("flair", "t1", "t1ce", "t2")


def case_files(case: Path) -> dict[str, Path]:
    return {m: case / f"{case.name}_{m}.nii.gz" for m in MODALITIES}


def upload(files: dict[str, Path]) -> dict[str, tuple[str, bytes]]:
    """The ``files=`` argument of a multipart POST: field → (the file's name, its bytes)."""
    return {field: (path.name, path.read_bytes()) for field, path in files.items()}


def wait_done(client: TestClient, job_id: str, timeout: float = 120.0) -> dict:
    """Poll a job until it is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/v1/cases/{job_id}").json()
        if record["status"] in ("done", "failed"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {record['status']} after {timeout} s")


def leftovers(data: Path) -> list[str]:
    """Everything in the job store besides its lock file, relative to it."""
    return sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.name != "serve.lock" and p != data / "jobs")


@pytest.fixture()
def make_client(edge_onnx, tmp_path):
    """``make_client(data=..., **config)`` → a started TestClient (stopped at the end of the test)."""
    with contextlib.ExitStack() as stack:
        def make(data: Path | None = None, **config) -> TestClient:
            app = create_app(ServeConfig(model=edge_onnx, data=data or tmp_path / "data", **config))
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture()
def client(make_client) -> TestClient:
    return make_client()
