"""``seg-edge serve``'s HTTP API through FastAPI's test client: every endpoint, queue, restart."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from seg_edge.cli.app import app as cli_app
from seg_edge.errors import InputError
from seg_edge.serve.app import create_app
from seg_edge.serve.jobs import ServeConfig

from serve_helpers import case_files, client, leftovers, make_client, upload, wait_done  # noqa: F401


def nifti(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def labels_of(content: bytes) -> np.ndarray:
    return np.asarray(nifti(content).dataobj)


def cli_predict(case: Path, model: Path, out: Path) -> tuple[np.ndarray, dict]:
    result = CliRunner().invoke(cli_app, ["predict", str(case), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return np.asarray(nib.load(str(out)).dataobj), json.loads(out.with_name(out.name[:-7] + ".json").read_text())


def test_every_endpoint(client, case_dir, edge_onnx, tmp_path):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["workers_alive"] == 1
    model = client.get("/v1/model").json()
    assert model["name"] == "edge" and model["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert model["card"]["outputs"] and [row["name"] for row in model["legend"]] == ["NCR", "ED", "ET"]

    submitted = client.post("/v1/cases", files=upload(case_files(case_dir)), data={"probabilities": "true"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/v1/cases/{job_id}"
    record = wait_done(client, job_id)
    assert record["status"] == "done", record
    assert record["progress"] == 1.0 and record["timings_s"]["inference"] > 0 and record["case_id"] == case_dir.name
    assert set(record["volumes_ml"]) == {"WT", "TC", "ET", "NCR", "ED"}
    assert [c["id"] for c in client.get("/v1/cases").json()["cases"]] == [job_id]

    labels = client.get(f"/v1/cases/{job_id}/labels.nii.gz")
    assert labels.status_code == 200 and labels.headers["content-type"] == "application/gzip"
    expected, _ = cli_predict(case_dir, edge_onnx, tmp_path / "cli" / "case.nii.gz")
    assert np.array_equal(labels_of(labels.content), expected)
    report = client.get(f"/v1/cases/{job_id}/report.json")
    assert str(tmp_path) not in report.text  # no server path reaches a client
    assert report.json()["inputs"]["flair"] == f"{case_dir.name}_flair.nii.gz"
    preview = Image.open(io.BytesIO(client.get(f"/v1/cases/{job_id}/preview.png").content))
    assert preview.format == "PNG" and preview.width > 600
    probabilities = client.get(f"/v1/cases/{job_id}/probabilities.nii.gz")
    assert nifti(probabilities.content).shape == expected.shape + (3,)
    assert client.get(f"/v1/cases/{job_id}/secrets.txt").status_code == 404

    assert client.delete(f"/v1/cases/{job_id}").status_code == 204
    gone = client.get(f"/v1/cases/{job_id}")
    assert gone.status_code == 404 and "not found" in gone.json()["error"]
    assert leftovers(tmp_path / "data") == []


def test_page_manual_and_docs_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "not for clinical use" in page.text.lower()
    assert "niivue.umd.js" in page.text
    assert "synthetic" in client.get("/manual").text
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs
    for text in (page.text, docs, client.get("/manual").text):
        assert "https://" not in text.replace("https://fastapi.tiangolo.com", "")  # no CDN
    bundle = client.get("/static/vendor/niivue/niivue.umd.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
    assert "/v1/cases" in client.get("/openapi.json").json()["paths"]


def test_three_jobs_at_once_all_finish_identical_to_predict(make_client, cases_dir, edge_onnx, tmp_path):
    client = make_client(workers=2)
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda c: client.post("/v1/cases", files=upload(case_files(c))), cases))
    assert [r.status_code for r in responses] == [202, 202, 202]
    records = [wait_done(client, r.json()["id"]) for r in responses]
    assert [r["status"] for r in records] == ["done"] * 3
    for case, record in zip(cases, records):
        expected, report = cli_predict(case, edge_onnx, tmp_path / "cli" / f"{case.name}.nii.gz")
        got = labels_of(client.get(f"/v1/cases/{record['id']}/labels.nii.gz").content)
        assert np.array_equal(got, expected), case.name
        assert {k: round(v, 3) for k, v in record["volumes_ml"].items()} == report["volumes_ml"]
    # one case at a time per worker: the jobs a worker ran do not overlap in time
    for worker in (0, 1):
        spans = sorted((r["started"], r["finished"]) for r in records if r["worker"] == worker)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans


def test_restart_keeps_finished_jobs_and_runs_unfinished_ones(edge_onnx, case_dir, tmp_path):
    data = tmp_path / "data"
    config = ServeConfig(model=edge_onnx, data=data)
    with TestClient(create_app(config)) as client:
        job_id = client.post("/v1/cases", files=upload(case_files(case_dir))).json()["id"]
        assert wait_done(client, job_id)["status"] == "done"
        before = client.get(f"/v1/cases/{job_id}/labels.nii.gz").content
    # a job that was running when the server stopped: its record and uploaded inputs are on disk
    pending = data / "jobs" / ("f" * 32)
    for field, path in case_files(case_dir).items():
        (pending / "inputs" / field).mkdir(parents=True)
        shutil.copy(path, pending / "inputs" / field / path.name)
    record = {"id": pending.name, "status": "running", "case_id": "pending", "created": 0.0, "progress": 0.3,
              "options": {}, "names": {f: p.name for f, p in case_files(case_dir).items()},
              "inputs": {f: f"inputs/{f}/{p.name}" for f, p in case_files(case_dir).items()}, "legend": []}
    (pending / "job.json").write_text(json.dumps(record))
    (data / "jobs" / ("e" * 32)).mkdir()  # an upload that never finished: no record
    with TestClient(create_app(config)) as client:
        kept = client.get(f"/v1/cases/{job_id}").json()
        assert kept["status"] == "done"
        assert client.get(f"/v1/cases/{job_id}/labels.nii.gz").content == before
        rerun = wait_done(client, pending.name)
        assert rerun["status"] == "done"
        assert np.array_equal(labels_of(client.get(f"/v1/cases/{pending.name}/labels.nii.gz").content),
                              labels_of(before))
    assert not (data / "jobs" / ("e" * 32)).exists() and not (pending / "inputs").exists()


def test_one_server_per_data_folder(edge_onnx, tmp_path):
    config = ServeConfig(model=edge_onnx, data=tmp_path / "data")
    first = create_app(config)
    with pytest.raises(InputError, match="another seg-edge server uses this data folder"):
        create_app(config)
    first.state.pool.close()
    first.state.store.close()
    create_app(config).state.store.close()  # free again


@pytest.mark.parametrize("kind", ["nii.gz", "npy"])
def test_stack_upload_matches_separate_files(client, case_dir, tmp_path, kind):
    """A stack in a stated order that is not the card's gives the labels of the four files."""
    order = ("t2", "flair", "t1ce", "t1")
    files = case_files(case_dir)
    ref = nib.load(str(files["flair"]))
    stack = np.stack([np.asarray(nib.load(str(files[m])).dataobj) for m in order], axis=-1)
    path = tmp_path / f"stack.{kind}"
    if kind == "npy":
        np.save(path, np.moveaxis(stack, -1, 0))
    else:
        nib.save(nib.Nifti1Image(stack, ref.affine, ref.header), str(path))
    stacked = client.post("/v1/cases", files={"stack": (path.name, path.read_bytes())},
                          data={"modalities": ",".join(order)})
    separate = client.post("/v1/cases", files=upload(files))
    a, b = (wait_done(client, r.json()["id"]) for r in (stacked, separate))
    assert a["status"] == b["status"] == "done" and a["case_id"] == "stack"
    assert client.get(f"/v1/cases/{a['id']}/labels.nii.gz").content != b""
    assert np.array_equal(labels_of(client.get(f"/v1/cases/{a['id']}/labels.nii.gz").content),
                          labels_of(client.get(f"/v1/cases/{b['id']}/labels.nii.gz").content))


def test_label_scheme_and_results_before_done(client, case_dir):
    job = client.post("/v1/cases", files=upload(case_files(case_dir)), data={"label_scheme": "brats2023"}).json()
    early = client.get(f"/v1/cases/{job['id']}/labels.nii.gz")
    assert early.status_code in (200, 409)  # 409 while queued or running, never a partial file
    if early.status_code == 409:
        assert "its results exist once it is done" in early.json()["error"]
    record = wait_done(client, job["id"])
    assert record["labels"]["ET"] == 3 and [r["value"] for r in record["legend"]] == [1, 2, 3]
    values = set(np.unique(labels_of(client.get(f"/v1/cases/{job['id']}/labels.nii.gz").content)).tolist())
    assert values <= {0, 1, 2, 3}


def test_delete_a_queued_job_and_a_running_one(edge_onnx, case_dir, tmp_path):
    app = create_app(ServeConfig(model=edge_onnx, data=tmp_path / "data"))
    client = TestClient(app)  # outside a ``with``: no lifespan, the workers do not start and jobs stay queued
    store, pool = app.state.store, app.state.pool
    try:
        queued = client.post("/v1/cases", files=upload(case_files(case_dir))).json()
        assert queued["status"] == "queued" and (store.folder(queued["id"]) / "inputs").is_dir()
        assert client.delete(f"/v1/cases/{queued['id']}").status_code == 204
        assert leftovers(tmp_path / "data") == []

        running = client.post("/v1/cases", files=upload(case_files(case_dir))).json()
        store.update(running["id"], status="running")
        answer = client.delete(f"/v1/cases/{running['id']}")
        assert answer.status_code == 202 and answer.json()["status"] == "deleting"
        pool._run(0, store.get(running["id"]))  # what the worker does with it: stops at the first window
        assert store.get(running["id"]) is None and leftovers(tmp_path / "data") == []
    finally:
        pool.close()
        store.close()


def test_the_server_runs_the_tuned_profile_as_predict_does(edge_onnx, case_dir, tmp_path):
    """Issue 21: the server's workers opened the model without its tuned profile, so the page ran another
    (slower) configuration than predict. Now the same one, said in the job's record and report."""
    from seg_edge.artifact import load_artifact
    from seg_edge.card import CARD_KEY, InferenceProfile
    from seg_edge.onnxproto import with_metadata
    from seg_edge.runtime.machine import this_machine

    card = load_artifact(edge_onnx).card
    profile = InferenceProfile(this_machine(("onnxruntime",)), "onnxruntime", threads=1, overlap=0.25,
                               batch_size=2, tta=False)
    tuned = tmp_path / "tuned.onnx"
    tuned.write_bytes(with_metadata(edge_onnx, CARD_KEY, card.replace(profile=profile).to_json()))
    with TestClient(create_app(ServeConfig(model=tuned, data=tmp_path / "data"))) as client:
        record = wait_done(client, client.post("/v1/cases", files=upload(case_files(case_dir))).json()["id"])
        report = client.get(f"/v1/cases/{record['id']}/report.json").json()
        labels = labels_of(client.get(f"/v1/cases/{record['id']}/labels.nii.gz").content)
    assert record["status"] == "done", record
    assert record["configuration"].startswith("tuned profile: onnxruntime, window card patch, overlap 0.25")
    assert report["configuration"] == record["configuration"]
    expected, cli_report = cli_predict(case_dir, tuned, tmp_path / "cli" / "case.nii.gz")
    assert cli_report["configuration"] == record["configuration"]
    assert np.array_equal(labels, expected)
    with TestClient(create_app(ServeConfig(model=tuned, data=tmp_path / "ref", use_profile=False))) as client:
        record = wait_done(client, client.post("/v1/cases", files=upload(case_files(case_dir))).json()["id"])
    assert record["configuration"].startswith("tuned profile not used (--reference)")
