"""DICOM in and out (the ``dicom`` extra: pydicom, highdicom): torch-free, above the runtime and preprocessing.

- ``seg``: the label map as a DICOM Segmentation (BINARY) on the reference series' own frames.
- ``sr``: the region volumes as a TID 1500 Measurement Report (Comprehensive 3D SR) referencing that SEG.
- ``select``: the four sequences of a study chosen by rules a site can replace.

pydicom and highdicom are imported only inside this package (and ``seg_edge.synth.dicom``), so the runtime and
``seg-edge predict`` on NIfTI never need them.
"""
