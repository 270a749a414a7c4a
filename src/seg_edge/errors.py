"""Exception hierarchy. The CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations


class SegEdgeError(Exception):
    """Base class of every error seg-edge raises on purpose."""

    exit_code = 1


class InputError(SegEdgeError):
    """A user-supplied file or value is not what was expected (names the file and the expectation)."""

    exit_code = 2


class ArtifactError(SegEdgeError):
    """A model file is missing, unreadable, or lacks a valid seg-edge model card."""

    exit_code = 2


class BackendUnavailable(SegEdgeError):
    """The requested inference backend cannot load here; the message says why. Never falls back."""

    exit_code = 3


class SessionError(SegEdgeError):
    """A loaded session cannot run a batch: it was closed, or its backend failed while running."""

    exit_code = 1


class ParityError(SegEdgeError):
    """A backend's output differs from the reference beyond the card's tolerance."""

    exit_code = 1
