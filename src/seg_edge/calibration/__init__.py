"""Calibration data and quantization (INT8 Q/DQ, FP16) with an accuracy budget (extra 'export')."""
