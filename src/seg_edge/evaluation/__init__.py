"""Metrics, evaluation against ground truth, parity and benchmarks."""
