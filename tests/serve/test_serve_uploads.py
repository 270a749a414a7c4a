"""Bad uploads: each answered 4xx with one line naming the client's file, nothing left on disk."""

from __future__ import annotations

import gzip
import select
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app as cli_app

from serve_helpers import case_files, client, leftovers, make_client, upload  # noqa: F401

LIMIT_MB = 1.0


def _nifti(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _bad_forms(case: Path, other: Path, tmp: Path) -> dict[str, tuple[dict, dict, int, str]]:
    """name → (files as field → (name, bytes), text fields, expected status, expected words in the error)."""
    good = upload(case_files(case))
    flair = nib.load(str(case_files(case)["flair"]))
    shape = flair.shape
    raw = gzip.decompress(case_files(case)["t2"].read_bytes())
    nan = np.asarray(flair.dataobj, dtype=np.float32)
    nan[3, 3, 3] = np.nan

    def with_(**files):
        return {**good, **files}

    def without(*fields):
        return {k: v for k, v in good.items() if k not in fields}

    stack3 = _nifti(np.zeros(shape + (3,), np.float32) + 1, tmp / "three.nii.gz", flair.affine)
    return {
        "truncated gzip": (with_(t2=("cut_t2.nii.gz", good["t2"][1][:2000])), {}, 422, "cut_t2.nii.gz"),
        "truncated .nii": (with_(t2=("cut_t2.nii", raw[:len(raw) // 2])), {}, 422, "cut_t2.nii"),
        "three modalities": (without("t2"), {}, 422, "field t2 missing"),
        "oversize": (with_(flair=("big_flair.nii.gz", b"\0" * int(LIMIT_MB * 2**20 + 10))), {}, 413,
                     "exceeds the limit"),
        "not a NIfTI": (with_(t1=("notes_t1.nii.gz", b"this is a text file, not an image\n" * 50)), {}, 422,
                        "notes_t1.nii.gz"),
        "wrong suffix": (with_(t1=("scan_t1.dcm", b"DICM")), {}, 415, "scan_t1.dcm"),
        "mismatched shapes": (with_(t1=("other_t1.nii.gz", case_files(other)["t1"].read_bytes()
                                        if nib.load(str(case_files(other)["t1"])).shape != shape
                                        else _nifti(np.ones((9, 9, 9), np.float32), tmp / "o_t1.nii.gz").read_bytes())),
                              {}, 422, "differs from"),
        "2D image": (with_(t1ce=("flat_t1ce.nii.gz", _nifti(np.ones((8, 8), np.float32),
                                                            tmp / "flat.nii.gz").read_bytes())), {}, 422, "2D"),
        "all zero": (with_(t2=("zero_t2.nii.gz", _nifti(np.zeros(shape, np.float32), tmp / "z.nii.gz",
                                                          flair.affine).read_bytes())), {}, 422, "all zero"),
        "NaN voxels": (with_(t2=("nan_t2.nii.gz", _nifti(nan, tmp / "nan.nii.gz", flair.affine).read_bytes())), {},
                       422, "NaN"),
        "stack without modalities": ({"stack": ("s.nii.gz", stack3.read_bytes())}, {}, 422,
                                    "s.nii.gz: a stack's volume order is not stated (give a modalities field"),
        "stack of three volumes": ({"stack": ("three.nii.gz", stack3.read_bytes())},
                                   {"modalities": "flair,t1,t1ce,t2"}, 422, "3 volumes"),
        "stack and files": ({**good, "stack": ("s.nii.gz", stack3.read_bytes())}, {"modalities": "flair,t1,t1ce,t2"},
                            422, "given together"),
        "unknown field": (with_(t3=("x_t3.nii.gz", good["t2"][1])), {}, 422, "unknown file field 't3'"),
        "bad label scheme": (good, {"label_scheme": "brats2019"}, 422, "brats2021"),
        "bad overlap": (good, {"overlap": "1.5"}, 422, "0 <= overlap < 1"),
        "bad modalities": ({"stack": ("s.nii.gz", stack3.read_bytes())}, {"modalities": "flair,t1,t1,t2"}, 422,
                           "distinct names"),
        "no files": ({"overlap": (None, b"0.5")}, {}, 422, "no files uploaded"),
    }


@pytest.fixture(scope="module")
def bad_forms(cases_dir, tmp_path_factory):
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir())
    return _bad_forms(cases[0], cases[1], tmp_path_factory.mktemp("bad"))


def test_bad_uploads_get_one_line_4xx_and_leave_nothing(make_client, bad_forms, tmp_path):
    client = make_client(max_upload_mb=LIMIT_MB)
    assert len(bad_forms) >= 10
    for name, (files, data, status, words) in bad_forms.items():
        response = client.post("/v1/cases", files=files or None, data=data or None)
        body = response.json()
        assert response.status_code == status, (name, response.status_code, body)
        assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"], name
        assert words in body["error"], (name, body["error"])
        assert str(tmp_path) not in body["error"], (name, body["error"])  # no server path
        assert leftovers(tmp_path / "data") == [], name
    assert client.get("/healthz").json()["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}


def test_not_multipart_and_cut_off_forms(client, case_dir, tmp_path):
    plain = client.post("/v1/cases", content=b"flair=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert plain.status_code == 415 and "expected multipart/form-data" in plain.json()["error"]
    head = (b'--B\r\nContent-Disposition: form-data; name="flair"; filename="a_flair.nii.gz"\r\n\r\n' +
            case_files(case_dir)["flair"].read_bytes()[:5000])
    cut = client.post("/v1/cases", content=head, headers={"content-type": "multipart/form-data; boundary=B"})
    assert cut.status_code == 400 and "cut off" in cut.json()["error"]
    twice = (b'--B\r\nContent-Disposition: form-data; name="overlap"\r\n\r\n0.5\r\n'
             b'--B\r\nContent-Disposition: form-data; name="overlap"\r\n\r\n0.6\r\n--B--\r\n')
    dup = client.post("/v1/cases", content=twice, headers={"content-type": "multipart/form-data; boundary=B"})
    assert dup.status_code == 422 and "given twice" in dup.json()["error"]
    assert leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("bad", ["truncated gzip", "mismatched shapes", "NaN voxels"])
def test_file_defects_read_as_the_cli_says_them(bad, make_client, bad_forms, edge_onnx, tmp_path):
    """The API's line is the CLI's line for the same files, the client's file name in place of the path."""
    files, _, _, _ = bad_forms[bad]
    folder = tmp_path / "cli"
    folder.mkdir()
    args = ["predict", "--model", str(edge_onnx), "--out", str(tmp_path / "out.nii.gz")]
    for field, (name, content) in files.items():
        (folder / name).write_bytes(content)
        args += [f"--{field}", str(folder / name)]
    cli = CliRunner().invoke(cli_app, args)
    assert cli.exit_code == 2
    line = cli.stderr.strip().removeprefix("input error: ").replace(f"{folder}/", "")
    api = make_client().post("/v1/cases", files=files).json()["error"]
    assert api == " ".join(line.split())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_oversize_upload_is_cut_off_while_streaming(edge_onnx, tmp_path):
    """Through a real uvicorn: the 413 comes back long before the client has sent the whole body."""
    import uvicorn

    from seg_edge.serve.app import create_app
    from seg_edge.serve.jobs import ServeConfig

    port = _free_port()
    app = create_app(ServeConfig(model=edge_onnx, data=tmp_path / "data", max_upload_mb=LIMIT_MB))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        sent, answer = _stream_until_answered(port, total_mb=200)
    finally:
        server.should_exit = True
        thread.join(30)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the limit" in answer
    assert sent < 20 * 2**20, f"{sent / 2**20:.1f} MB sent of 200 MB before the answer"
    assert leftovers(tmp_path / "data") == []


def _stream_until_answered(port: int, total_mb: int) -> tuple[int, bytes]:
    """Send a chunked multipart upload of ``total_mb`` MB until the server answers; (bytes sent, answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/cases HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
    part = b'--B\r\nContent-Disposition: form-data; name="flair"; filename="huge_flair.nii.gz"\r\n\r\n'
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    chunk, sent = b"\0" * 65536, 0
    try:
        while sent < total_mb * 2**20 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:  # the server answered and closed the connection while we were sending
        pass
    answer = b""
    try:
        while data := sock.recv(65536):
            answer += data
            sock.settimeout(0.5)  # the rest of a short answer comes at once
    except OSError:
        pass
    sock.close()
    return sent, answer


def test_a_client_leaving_mid_upload_leaves_nothing(edge_onnx, tmp_path):
    """Through a real uvicorn: the connection closes halfway through a file; its folder goes, no 500 logged."""
    import logging

    import uvicorn

    from seg_edge.serve.app import create_app
    from seg_edge.serve.jobs import ServeConfig

    port = _free_port()
    app = create_app(ServeConfig(model=edge_onnx, data=tmp_path / "data"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("seg_edge.serve.app").addHandler(handler)
    try:
        while not server.started:
            time.sleep(0.02)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/cases HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
                     b'--B\r\nContent-Disposition: form-data; name="flair"; filename="a_flair.nii.gz"\r\n\r\n'
                     + b"\0" * 20000)
        deadline = time.monotonic() + 10
        while not (tmp_path / "data" / "jobs").exists() or not any((tmp_path / "data" / "jobs").iterdir()):
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.02)
        sock.close()
        while any((tmp_path / "data" / "jobs").iterdir()):
            assert time.monotonic() < deadline, leftovers(tmp_path / "data")
            time.sleep(0.05)
    finally:
        logging.getLogger("seg_edge.serve.app").removeHandler(handler)
        server.should_exit = True
        thread.join(30)
    assert not [r for r in records if r.levelno >= logging.ERROR]
