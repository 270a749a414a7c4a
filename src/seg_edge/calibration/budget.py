"""Accuracy budget for quantized models: Dice change per region against FP32, layer sensitivity."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.artifact import load_artifact
from seg_edge.runtime.io import load_case, read_labels
from seg_edge.runtime.regions import REGIONS, dice, et_label, find_label_file, labels_to_regions
from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
from seg_edge.runtime.sessions.base import open_session


@dataclass
class DiceChange:
    """Mean per-region Dice of the candidate against FP32 labels (and both against truth)."""

    vs_fp32: dict[str, float]
    fp32_vs_truth: dict[str, float] = field(default_factory=dict)
    candidate_vs_truth: dict[str, float] = field(default_factory=dict)

    @property
    def worst_loss(self) -> float:
        return max(1.0 - v for v in self.vs_fp32.values())


class Evaluator:
    """Segments the eval cases once with FP32 (ONNX Runtime), then any candidate on ``backend`` (the
    backend the quantized file is meant for: OpenVINO runs Q/DQ graphs differently), and compares labels."""

    def __init__(self, fp32_model: Path, cases: list[Path], threads: int | None = None, backend: str = "onnxruntime"):
        self.cases, self.threads, self.backend = cases, threads, "onnxruntime"
        self.truth: list[np.ndarray | None] = []
        self.fp32 = [s.labels for s in self._segment(fp32_model)]
        self.backend = backend  # the reference above ran on ONNX Runtime; candidates run here
        for case in cases:
            path = find_label_file(case)
            self.truth.append(read_labels(path, self.et)[0] if path is not None else None)

    def _segment(self, model: Path):
        artifact = load_artifact(model)
        self.et = et_label(artifact.card.label_scheme)
        with open_session(artifact, self.backend, threads=self.threads) as session:
            seg = Segmenter(artifact, session, SegmenterOptions())
            return [seg.predict(load_case(c, artifact.card.modalities)) for c in self.cases]

    def change(self, model: Path) -> DiceChange:
        labels = [s.labels for s in self._segment(model)]
        vs_fp32, fp_t, cand_t = ({r: list[float]() for r in REGIONS} for _ in range(3))
        for cand, ref, truth in zip(labels, self.fp32, self.truth):
            rc, rr = labels_to_regions(cand, self.et), labels_to_regions(ref, self.et)
            rt = labels_to_regions(truth, self.et) if truth is not None else None
            for i, name in enumerate(REGIONS):
                vs_fp32[name].append(dice(rc[i], rr[i]))
                if rt is not None:
                    fp_t[name].append(dice(rr[i], rt[i]))
                    cand_t[name].append(dice(rc[i], rt[i]))
        mean = lambda d: {k: float(np.mean(v)) for k, v in d.items() if v}  # noqa: E731
        return DiceChange(mean(vs_fp32), mean(fp_t), mean(cand_t))


def conv_sensitivity(float_model: Path, qdq_model: Path, reader) -> list[tuple[str, float]]:
    """Conv nodes ranked most sensitive first: SQNR (dB) of their quantized input activations.

    Uses ONNX Runtime's ``qdq_loss_debug`` on a few calibration patches.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    with tempfile.TemporaryDirectory() as tmp:
        aug_f, aug_q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(float_model), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_model), str(aug_q))
        reader.rewind()
        float_acts = collect_activations(str(aug_f), reader)
        reader.rewind()
        qdq_acts = collect_activations(str(aug_q), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    ranked = []
    for node in onnx.load(str(float_model), load_external_data=False).graph.node:
        if node.op_type == "Conv" and node.input[0] in errors:
            ranked.append((node.name, float(errors[node.input[0]]["qdq_err"])))
    return sorted(ranked, key=lambda item: item[1])
