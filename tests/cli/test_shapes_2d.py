"""``--shape`` (bench) and ``--min/--opt/--max`` (build-engine) take as many sizes as the model has spatial axes.

A 2D model (imported with ``seg-edge import onnx``) is given C,H,W / H,W; a wrong count is a one-line
input error naming the option, the value and what a model of that dimensionality expects.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "importers"))

from importer_fixtures import import_2d_seed, run_ok  # noqa: E402

from seg_edge.artifact import load_artifact  # noqa: E402
from seg_edge.cli.app import app  # noqa: E402
from seg_edge.cli.build_engine import profile_sizes  # noqa: E402
from seg_edge.cli.options import parse_sizes  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402
from seg_edge.runtime.sessions.plans import make_profile  # noqa: E402


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory) -> Path:
    out = import_2d_seed(tmp_path_factory.mktemp("shapes2d"))
    assert load_artifact(out).card.inputs.spatial_dims == 2
    return out


def _one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_bench_2d_shape_runs(model_2d):
    result = run_ok("bench", model_2d, "--shape", "2,128,128", "--iters", "1", "--warmup", "0", "--runs", "1",
                    "--json")
    net = json.loads(result.stdout)["network"][0]
    assert net["shape"] == [1, 2, 128, 128] and len(net["latencies_s"]) == 1


@pytest.mark.parametrize("shape", ["2,128", "2,128,128,128", "2,x,128", "2,0,128"])
def test_bench_2d_wrong_shape_is_one_line_error(model_2d, shape):
    result = CliRunner().invoke(app, ["bench", str(model_2d), "--shape", shape, "--iters", "1", "--warmup", "0"])
    _one_line_error(result, f"--shape '{shape}'", "expected 3 positive integers C,H,W for this 2D model")


def test_parse_sizes_counts_follow_the_model():
    assert parse_sizes("2,128,128", 2, "--shape", channels=True) == (2, 128, 128)
    assert parse_sizes("5,96,96,96", 3, "--shape", channels=True) == (5, 96, 96, 96)
    assert parse_sizes("128,96", 2, "--min") == (128, 96)
    assert parse_sizes("64,64,64", 3, "--min") == (64, 64, 64)
    with pytest.raises(InputError, match=r"^--shape '2,128' \(expected 3 positive integers C,H,W for this 2D model\)$"):
        parse_sizes("2,128", 2, "--shape", channels=True)
    # 3D models keep their wording
    with pytest.raises(InputError, match=r"^--shape '4,32,32' \(expected 4 positive integers like 5,96,96,96\)$"):
        parse_sizes("4,32,32", 3, "--shape", channels=True)
    with pytest.raises(InputError, match=r"^--max '64,64' \(expected 3 positive integers like 240,240,155\)$"):
        parse_sizes("64,64", 3, "--max")


def test_build_engine_2d_profile_parsing(model_2d):
    card = load_artifact(model_2d).card
    sizes = profile_sizes(2, "64,64", None, "256,256")
    assert sizes == ((64, 64), None, (256, 256))
    profile = make_profile(card, 2, *sizes)
    assert profile.min == (1, 2, 64, 64) and profile.opt == (1, 2, 128, 128) and profile.max == (2, 2, 256, 256)
    expected = r"^--opt '128,128,128' \(expected 2 positive integers H,W for this 2D model\)$"
    with pytest.raises(InputError, match=expected):
        profile_sizes(2, None, "128,128,128", None)


@pytest.mark.parametrize("option,value", [("--min", "64,64,64"), ("--opt", "128"), ("--max", "256,x")])
def test_build_engine_2d_wrong_count_refused_before_tensorrt(model_2d, tmp_path, option, value):
    result = CliRunner().invoke(app, ["build-engine", str(model_2d), "--out", str(tmp_path / "m.plan"), option, value])
    _one_line_error(result, f"{option} '{value}'", "expected 2 positive integers H,W for this 2D model")
    assert not (tmp_path / "m.plan").exists()
