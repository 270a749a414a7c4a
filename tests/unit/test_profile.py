"""The card's tuned inference profile: optional, round-trips, checked; the machine it holds; writing it
into a copy of an ONNX file; predict choosing it only where it was measured."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from seg_edge.artifact import load_artifact
from seg_edge.card import CARD_KEY, PROFILE_BACKENDS, InferenceProfile, Machine, ModelCard
from seg_edge.errors import ArtifactError
from seg_edge.model.networks import card_for
from seg_edge.onnxproto import read_onnx_metadata, with_metadata
from seg_edge.runtime import machine as machine_module
from seg_edge.runtime.machine import mismatch, this_machine
from seg_edge.runtime.segmenter import profile_in_force
from seg_edge.runtime.sessions.base import BACKENDS, REMOTE

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "src" / "seg_edge" / "assets" / "card.schema.json"


def profile(**changes) -> InferenceProfile:
    base = InferenceProfile(Machine("Some CPU", ("avx2", "fma"), 2, {"onnxruntime": "1.0"}), "onnxruntime", None,
                            threads=2, streams=2, window=(128, 128, 128), overlap=0.25, blend="gaussian",
                            steps="nnunet", batch_size=2, tta=True, budget=0.01, measured={"seconds_per_case": 3.2})
    return dataclasses.replace(base, **changes)


def test_profile_backends_are_the_runtime_backends():
    # a remote backend (triton) is timed on its server, not on the machine a profile describes
    assert set(PROFILE_BACKENDS) == set(BACKENDS) - REMOTE


def test_a_card_without_profile_writes_no_profile_key():
    card = card_for("edge")
    assert card.profile is None and "profile" not in json.loads(card.to_json())


def test_profile_round_trips_and_the_schema_accepts_it():
    jsonschema = pytest.importorskip("jsonschema")
    card = card_for("edge").replace(profile=profile())
    text = card.to_json()
    assert ModelCard.from_json(text) == card
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert list(validator.iter_errors(json.loads(text))) == []
    assert list(validator.iter_errors({**json.loads(text), "profile": None})) == []


@pytest.mark.parametrize("change,words", [
    ({"backend": "tflite"}, "profile.backend"),
    ({"window": (100, 128, 128)}, "profile.window [100, 128, 128]"),
    ({"window": (64, 96, 96)}, "profile.window [64, 96, 96]"),
    ({"overlap": 1.0}, "profile.overlap 1.0"),
    ({"blend": "median"}, "profile.blend"),
    ({"batch_size": 0}, "profile.batch_size 0"),
    ({"streams": 0}, "profile.streams 0"),
    ({"threads": 0}, "profile.threads 0"),
    ({"precision_hint": "int4"}, "profile.precision_hint"),
    ({"budget": 2.0}, "profile.budget 2.0"),
])
def test_bad_profile_values_are_refused_by_code_and_schema(change, words):
    jsonschema = pytest.importorskip("jsonschema")
    raw = json.loads(card_for("edge").replace(profile=profile(**change)).to_json())
    with pytest.raises(ArtifactError, match=words.replace("[", r"\[")):
        ModelCard.from_json(json.dumps(raw), "m.onnx")
    if "window" not in change:  # "multiples of the divisor, at least the patch": rules only the code checks
        validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
        assert list(validator.iter_errors(raw)), change


def test_profile_without_machine_is_refused():
    raw = json.loads(card_for("edge").replace(profile=profile()).to_json())
    del raw["profile"]["machine"]
    with pytest.raises(ArtifactError, match="lacks 'profile.machine'"):
        ModelCard.from_json(json.dumps(raw), "m.onnx")


def test_this_machine_and_mismatch(monkeypatch):
    here = this_machine(("onnxruntime",))
    assert here.cpu and here.cores >= 1 and "onnxruntime" in here.versions
    assert mismatch(here, "onnxruntime") is None
    assert "this CPU is" in mismatch(dataclasses.replace(here, cpu="Other CPU"), "onnxruntime")
    assert "CPU flags" in mismatch(dataclasses.replace(here, flags=here.flags + ("amx_int8",)), "onnxruntime")
    assert "cores" in mismatch(dataclasses.replace(here, cores=here.cores + 1), "onnxruntime")
    old = dataclasses.replace(here, versions={"onnxruntime": "0.0.1"})
    assert "0.0.1" in mismatch(old, "onnxruntime")
    monkeypatch.setattr(machine_module, "backend_version", lambda backend: None)
    assert "not installed" in mismatch(here, "onnxruntime")


def test_cpu_generations_behind_one_model_name_are_told_apart(tmp_path):
    """Cloud VMs name Zen 4 and Zen 5 alike ("AMD EPYC"); family/model/stepping separate them, and
    ARM boards are named by implementer and part."""
    def cpu(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return machine_module._cpuinfo(str(path))

    x86 = ("processor\t: {n}\ncpu family\t: {f}\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
           "flags\t\t: fpu avx2 avx512f\n\n")
    zen4, flags = cpu(x86.format(n=0, f=25) + x86.format(n=1, f=25))
    zen5, _ = cpu(x86.format(n=0, f=26))
    assert zen4 == "AMD EPYC (family 25, model 17, stepping 1)" and zen5 != zen4
    assert flags == {"fpu", "avx2", "avx512f"}
    arm, _ = cpu("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n\n")
    assert arm.endswith("(implementer 0x41, part 0xd42)")


def test_profile_in_force_says_why(monkeypatch):
    here = this_machine(("onnxruntime",))
    card = card_for("edge").replace(profile=profile(machine=here))
    used, note = profile_in_force(card, None, True)
    assert used == card.profile and note.startswith("tuned profile: onnxruntime, window 128×128×128")
    assert "2 threads in 2 streams" in note
    assert profile_in_force(card, None, False) == (None, "tuned profile not used (--reference): the card's "
                                                         "configuration")
    assert profile_in_force(card, "openvino", True)[0] is None
    other = card.replace(profile=profile(machine=dataclasses.replace(here, cores=here.cores + 7)))
    used, note = profile_in_force(other, None, True)
    assert used is None and "cores" in note
    assert profile_in_force(card_for("edge"), None, True) == (None, None)


def test_with_metadata_replaces_the_card_and_keeps_the_graph(edge_onnx, tmp_path):
    onnx = pytest.importorskip("onnx")
    card = load_artifact(edge_onnx).card.replace(profile=profile())
    out = tmp_path / "tuned.onnx"
    out.write_bytes(with_metadata(edge_onnx, CARD_KEY, card.to_json()))
    assert load_artifact(out).card == card
    assert list(read_onnx_metadata(out)) == [CARD_KEY]  # replaced, not duplicated
    assert onnx.load(str(out)).graph == onnx.load(str(edge_onnx)).graph


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_parallel_streams_give_the_same_logits(edge_onnx, backend):
    import numpy as np

    from seg_edge.errors import BackendUnavailable, InputError
    from seg_edge.runtime.sessions.base import open_session

    artifact = load_artifact(edge_onnx)
    batch = np.random.default_rng(3).standard_normal((3, artifact.card.in_channels, 32, 32, 32)).astype(np.float32)
    try:
        with open_session(artifact, backend, threads=2) as one, open_session(artifact, backend, 2, streams=2) as two:
            np.testing.assert_allclose(two.run(batch), one.run(batch), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(two.run(batch[:1]), one.run(batch[:1]), rtol=1e-4, atol=1e-4)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    with pytest.raises(InputError, match="streams 0"):
        open_session(artifact, backend, 2, streams=0)
