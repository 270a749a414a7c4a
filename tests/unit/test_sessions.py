"""Session lifecycle and the errors a session raises: closed sessions, shapes that disagree with the card."""

from __future__ import annotations

import numpy as np
import pytest

from seg_edge.artifact import load_artifact
from seg_edge.errors import ArtifactError, BackendUnavailable, InputError, SegEdgeError
from seg_edge.errors import SessionError
from seg_edge.runtime.sessions.auto import ORDER
from seg_edge.runtime.sessions.base import SessionBase, open_session


@pytest.fixture()
def batch(edge_onnx) -> np.ndarray:
    card = load_artifact(edge_onnx).card
    return np.random.default_rng(0).standard_normal((1, card.in_channels, 32, 32, 32)).astype(np.float32)


def test_a_closed_session_refuses_to_run(edge_onnx, batch):
    session = open_session(load_artifact(edge_onnx), "onnxruntime")
    assert session.run(batch).shape == (1, 3, 32, 32, 32)
    session.close()
    session.close()  # closing twice is harmless
    with pytest.raises(SessionError, match="onnxruntime session is closed"):
        session.run(batch)
    with pytest.raises(SessionError, match="closed"):
        session.__enter__()
    assert issubclass(SessionError, SegEdgeError) and not issubclass(SessionError, BackendUnavailable)


def test_leaving_the_with_block_closes(edge_onnx, batch):
    with open_session(load_artifact(edge_onnx), "onnxruntime") as session:
        session.run(batch)
    with pytest.raises(SessionError):
        session.run(batch)


def test_output_that_disagrees_with_the_card_is_an_artifact_error(edge_onnx, batch):
    with open_session(load_artifact(edge_onnx), "onnxruntime") as session:
        session.out_channels = 4  # as if the card listed four regions for this three-output model
        with pytest.raises(ArtifactError) as caught:
            session.run(batch)
    message = str(caught.value)
    assert "(1, 3, 32, 32, 32)" in message and "(1, 4, 32, 32, 32)" in message
    assert not isinstance(caught.value, BackendUnavailable)


class _Cropping(SessionBase):
    """A backend that returns a cropped window: a model defect, found after loading."""

    name = "cropping"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], self.out_channels, *(s - 2 for s in batch.shape[2:])), np.float32)


def test_wrong_spatial_shape_names_what_was_returned_and_expected():
    with pytest.raises(ArtifactError, match=r"returned shape \(2, 3, 6, 6, 6\).*expects \(2, 3, 8, 8, 8\)"):
        _Cropping(5, 3).run(np.zeros((2, 5, 8, 8, 8), np.float32))


@pytest.mark.parametrize("bad", [np.zeros((1, 5, 8, 8, 8), np.float64), np.zeros((1, 4, 8, 8, 8), np.float32),
                                 np.zeros((5, 8, 8, 8), np.float32)])
def test_bad_batches_are_input_errors(bad):
    with pytest.raises(InputError, match="expected float32"):
        _Cropping(5, 3).run(bad)


def test_unknown_backend_is_an_input_error(edge_onnx):
    with pytest.raises(InputError, match="expected one of auto, onnxruntime"):
        open_session(load_artifact(edge_onnx), "cuda-magic")


def test_auto_applies_streams_to_the_backend_it_chooses(edge_onnx, batch):
    """Issue 21: ``--backend auto`` returned before looking at ``streams`` and ``url``: they were dropped."""
    artifact = load_artifact(edge_onnx)
    with open_session(artifact, "auto", threads=2, streams=2) as session:
        chosen, skipped = session.auto_report
        assert chosen in ("openvino", "onnxruntime") and session.streams == 2
        assert {n for n, why in skipped if "parallel streams" in why} == {"tensorrt", "ort-trt", "ort-cuda"}
        with open_session(artifact, chosen, threads=2) as plain:
            np.testing.assert_allclose(session.run(np.repeat(batch, 2, 0)), plain.run(np.repeat(batch, 2, 0)),
                                       atol=1e-5)
    with open_session(artifact, "auto") as session:  # a GPU backend may win here: no streams asked
        assert session.auto_report.chosen in ORDER and getattr(session, "streams", 1) == 1


def test_auto_refuses_a_url_it_cannot_apply(edge_onnx):
    with pytest.raises(InputError, match="--url localhost:8001 applies to --backend triton; --backend auto"):
        open_session(load_artifact(edge_onnx), "auto", url="localhost:8001")
    with pytest.raises(InputError, match="streams 0"):
        open_session(load_artifact(edge_onnx), "auto", streams=0)
