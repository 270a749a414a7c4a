"""``seg-edge serve`` refuses what it cannot serve with one line, before it listens."""

from __future__ import annotations

from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.serve.store import JobStore

import serve_helpers  # noqa: F401  (skips without the serve extra)

runner = CliRunner()


def _serve(*args):
    return runner.invoke(app, ["serve", *map(str, args)])


def test_data_that_is_a_file_is_refused(tmp_path, edge_onnx):
    data = tmp_path / "data"
    data.write_text("not a folder")
    result = _serve("--model", edge_onnx, "--data", data)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"input error: {data}: exists and is not a folder "
                                     "(expected a folder for the job store)")


def test_a_model_that_is_not_one_is_refused(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not onnx")
    result = _serve("--model", model, "--data", tmp_path / "data")
    assert result.exit_code == 2 and result.stderr.startswith("model error:") and "\n" not in result.stderr.strip()


def test_a_data_folder_in_use_is_refused(tmp_path, edge_onnx):
    held = JobStore(tmp_path / "data")
    try:
        result = _serve("--model", edge_onnx, "--data", tmp_path / "data")
    finally:
        held.close()
    assert result.exit_code == 2 and "another seg-edge server uses this data folder" in result.stderr
