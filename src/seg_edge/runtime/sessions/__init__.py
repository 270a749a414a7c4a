"""Inference backends. Each module imports its heavy dependency only when a session is opened."""

from seg_edge.runtime.sessions.base import BACKENDS, Session, open_session

__all__ = ["BACKENDS", "Session", "open_session"]
