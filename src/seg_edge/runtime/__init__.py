"""Torch-free runtime: load NIfTI cases, preprocess, sliding window over a Session, postprocess.

The names below are imported on first use, so that reading a case (``runtime.io``) can start
before the segmenter's imports (scipy.ndimage, the backends) have run.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {"Case": "seg_edge.runtime.io", "load_case": "seg_edge.runtime.io",
         "Segmentation": "seg_edge.runtime.segmenter", "Segmenter": "seg_edge.runtime.segmenter",
         "SegmenterOptions": "seg_edge.runtime.segmenter"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
