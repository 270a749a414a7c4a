"""Synthetic BraTS-like cases: a procedural brain with a glioma, four MRI contrasts, labels.

Real BraTS data is registration-gated, so training, calibration, tests and the demo use these.
Every figure computed on them says so.
"""

from seg_edge.synth.phantom import Phantom, make_phantom
from seg_edge.synth.writer import write_case, write_cases

__all__ = ["Phantom", "make_phantom", "write_case", "write_cases"]
