"""Torch-free runtime: load NIfTI cases, preprocess, sliding window over a Session, postprocess."""

from seg_edge.runtime.io import Case, load_case
from seg_edge.runtime.segmenter import Segmentation, Segmenter, SegmenterOptions

__all__ = ["Case", "load_case", "Segmentation", "Segmenter", "SegmenterOptions"]
