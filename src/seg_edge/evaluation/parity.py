"""Parity: every backend against the PyTorch reference, measured on whole cases.

The reference is the torch model (native InstanceNorm) through MONAI's
``sliding_window_inference`` with the runtime's preprocessing, windows and blending; both
sides share the postprocessing, so what is compared is the backend and its windowing.
Reported per case and backend: probability error (max, mean, 99.9th percentile inside the
crop box), label agreement, per-region Dice and HD95 against the reference labels, and
region volume differences — judged against the tolerances in the model card.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_edge.artifact import Artifact, load_artifact
from seg_edge.card import Outputs
from seg_edge.errors import ArtifactError, InputError
from seg_edge.evaluation.metrics import hd95
from seg_edge.runtime.inference import mirrored, slicewise
from seg_edge.runtime.io import Case, load_case
from seg_edge.runtime.preprocess import nonzero_box, preprocess, window_size
from seg_edge.runtime.regions import REGIONS, dice, labels_to_regions
from seg_edge.runtime.segmenter import Segmentation, Segmenter, SegmenterOptions, region_volumes
from seg_edge.runtime.sessions.base import open_session

# OpenVINO runs of an FP32 artifact: (max probability difference, min region Dice), set from
# measurement on the shipped model and example (docs/BENCHMARKS.md). OpenVINO fuses the
# InstanceNorm subgraph into its own normalisation and loses precision even in f32 (max |Δp|
# 6.4e-3, 10 voxels changed); bf16 keeps 8 mantissa bits (max |Δp| 5.7e-2, 29 voxels changed).
# OpenVINO runs an INT8 Q/DQ file its own way: on the example, Dice vs the FP32 reference was
# WT 0.987, TC 0.992, ET 0.972 (ONNX Runtime on the same file: 0.995, 0.998, 0.996).
# nnU-Net's predictor accumulates the blended window logits and weights in float16 (CPU too): at a
# window's rim, where its gaussian weights are smallest, that costs up to ~0.06 in probability. With
# its accumulators in float32 the same run differs from seg-edge by 1.7e-6 (docs/IMPORT.md), so
# against nnUNetPredictor the probability bound is its own rounding; labels and Dice keep the card's.
SOURCE_MAX_PROB_DIFF = {"nnunet": 0.1}
# The same float16 sums can put nnU-Net's probability exactly on a threshold (blended logit rounded to
# 0, p = 0.5: its ``> 0.5`` says no, seg-edge's float32 sum, p = 0.50011, says yes). Near a threshold the
# two differ by far less than at the rims: within 0.05 of one, at most 5e-4 (tiny nnU-Net fixture, 3
# held-out synthetic cases). A voxel whose reference probability is within this band of a decision
# boundary is a tie the reference cannot decide; a label changed there is reported, not judged.
SOURCE_TIE_BAND = {"nnunet": 1e-3}
HINT_TOLERANCES = {("openvino", "fp32"): (2e-2, 0.999), ("openvino-bf16", "fp32"): (0.25, 0.99),
                   ("openvino", "int8"): (1.0, 0.97), ("openvino-bf16", "int8"): (1.0, 0.97)}


@dataclass(kw_only=True)
class ParityResult:
    """One backend on one case against the reference (``compare``), then judged (``judge``): keyword-only,
    since its many numeric fields are easy to pass in the wrong order."""

    case_id: str
    backend: str
    max_abs: float
    mean_abs: float
    p999_abs: float
    label_agreement: float
    labels_changed: int
    dice: dict[str, float]
    hd95: dict[str, float]
    volume_diff_ml: dict[str, float]
    seconds: float = 0.0  # the backend's network time on the case (seg-edge's "inference" stage)
    reference_seconds: float | None = None  # a framework predictor's own time on the case, when it is the reference
    reference_ties: int = 0  # labels changed where the reference's own decision is a tie (SOURCE_TIE_BAND)
    dice_outside_ties: dict[str, float] | None = None  # Dice with those voxels counted as agreeing (judged)
    passed: bool = False
    failures: list[str] = field(default_factory=list)


def default_reference(model: Path) -> Path:
    return model.with_suffix(".pt")


@dataclass(frozen=True)
class Reference:
    """Where the framework reference comes from: the source file, and for ONNX imports the torch
    module that stands for the graph (``network`` as ``PKG.MODULE:FACTORY`` or ``file.py:FACTORY``)."""

    source: Path | None = None
    network: str | None = None
    network_kwargs: dict | None = None


def load_reference(artifact: Artifact, reference: Reference | Path | None):
    """The torch network the artifact was made from, rebuilt as its importer built it.

    The source's sha256 must match the card's provenance. The importer is chosen by the card's
    ``source_framework``: seg-edge presets, NVIDIA DLE checkpoints, any PyTorch module (its
    spec is in the card, or given for ONNX imports).
    """
    from seg_edge.artifact import file_sha256

    ref = reference if isinstance(reference, Reference) else Reference(reference)
    card, prov = artifact.card, artifact.card.provenance
    onnx_import = "onnx_producer" in prov  # the card was attached to a graph made elsewhere
    if onnx_import and not ref.network:  # (said first: a default MODEL.pt that is missing is beside the point)
        raise InputError(f"{artifact.path}: imported from ONNX; give the framework model it came from with "
                         "--network PKG.MODULE:FACTORY and its weights with --reference")
    path = Path(ref.source) if ref.source else default_reference(artifact.path)
    if not path.is_file():
        raise InputError(f"{path}: reference not found (pass --reference with the file the model was made from)")
    expected = prov.get("source_sha256") or prov.get("checkpoint_sha256")
    # (an ONNX import's source is the graph; the reference is then the framework's weights, another file)
    if expected and not onnx_import and file_sha256(path) != expected:
        raise ArtifactError(f"{path}: sha256 differs from the source {artifact.path.name} was made from")
    framework, spec = prov.get("source_framework", "seg-edge"), ref.network or prov.get("network")
    if framework == "nvidia-dle-nnunet":
        from seg_edge.importers.nvidia import load_nvidia

        return load_nvidia(path)[0]
    if isinstance(spec, str):
        from seg_edge.importers.torch import load_torch

        kwargs = ref.network_kwargs if ref.network else prov.get("network_kwargs")
        return _logits_of(load_torch(spec, path, card, kwargs)[0], prov.get("removed_output_activation"), path)
    from seg_edge.model.checkpoints import load_network

    return load_network(path, card.preset)[0]


def _logits_of(net, removed: str | None, source: Path):
    """``net`` if it gives logits; else, when the import removed the network's final activation, its
    logits as the network itself computes them: the input of that final softmax/sigmoid call.

    Never ``log p`` of the probabilities: the clamp that keeps the log finite caps logit gaps at ~16,
    and a linear step after it (window blending, TTA, a 2D resize back) then no longer matches the graph.
    """
    if not removed:
        return net
    from seg_edge.export.activation import LogitsOf

    return LogitsOf(net, str(source))


def reference_segmentation(net, segmenter: Segmenter, case: Case) -> Segmentation:
    """The torch network through MONAI's ``sliding_window_inference`` with the card's preprocessing,
    window, overlap, blending and mirroring (2D models: slice by slice, each slice one window)."""
    import torch
    from monai.inferers import sliding_window_inference

    card, plan = segmenter.card, segmenter.plan
    tensor, inverse = preprocess(case.images, card)

    def torch_windows(batch: np.ndarray) -> np.ndarray:
        window = window_size(batch.shape[2:], card.patch_size)
        with torch.no_grad():
            out = sliding_window_inference(torch.from_numpy(batch), window, plan.batch_size, net,
                                           overlap=plan.overlap, mode=plan.blend, sigma_scale=0.125)
        if not isinstance(out, torch.Tensor):  # a network that returns several heads in eval mode
            raise ArtifactError(f"reference network returns {type(out).__name__} (expected one logits tensor)")
        return out.numpy()

    predict = mirrored(torch_windows, plan.tta_axes)
    if card.inputs.spatial_dims == 2:
        logits = slicewise(tensor, predict, card, plan.batch_size)
    else:
        logits = predict(tensor[None])[0]
    return segmenter.finish(case, logits, inverse)


def decision_ties(probs: np.ndarray, outputs: Outputs, band: float) -> np.ndarray:
    """Voxels whose label ``probs`` cannot decide within ``band``: softmax, the two likeliest classes
    that close; sigmoid, any channel that close to its threshold."""
    if outputs.kind == "softmax":
        top = np.partition(probs, probs.shape[0] - 2, axis=0)[-2:]
        return (top[1] - top[0]) <= band
    thresholds = np.asarray(outputs.thresholds, dtype=np.float32).reshape((-1,) + (1,) * (probs.ndim - 1))
    return np.asarray((np.abs(probs - thresholds) <= band).any(axis=0))


def _region_scores(case: Case, got_labels: np.ndarray, ref_labels: np.ndarray, et: int):
    scores, dist = {}, {}
    for name, g, r in zip(REGIONS, labels_to_regions(got_labels, et), labels_to_regions(ref_labels, et)):
        scores[name], dist[name] = dice(g, r), hd95(g, r, case.spacing)
    return scores, dist


def compare(case: Case, got: Segmentation, ref: Segmentation, backend: str, box, et: int,
            outputs: Outputs | None = None, tie_band: float = 0.0) -> ParityResult:
    """``got`` against ``ref``; with ``tie_band``, labels changed where ``ref``'s probabilities are a
    tie (``decision_ties``) are counted apart and agree in ``dice_outside_ties``."""
    if got.probabilities is None or ref.probabilities is None:
        raise ArtifactError(f"{case.case_id}: parity compares probabilities, and a segmentation came without them")
    diff = np.abs(got.probabilities[(slice(None),) + box] - ref.probabilities[(slice(None),) + box])
    same = got.labels == ref.labels
    scores, dist = _region_scores(case, got.labels, ref.labels, et)
    vol = {name: got.volumes_ml[name] - ref.volumes_ml[name] for name in REGIONS}
    ties, outside = 0, scores
    if tie_band > 0 and outputs is not None and not same.all():
        tied = ~same & decision_ties(ref.probabilities, outputs, tie_band)
        ties = int(tied.sum())
        if ties:
            outside = _region_scores(case, np.where(tied, ref.labels, got.labels), ref.labels, et)[0]
    return ParityResult(case_id=case.case_id, backend=backend, max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                        p999_abs=float(np.percentile(diff, 99.9)), label_agreement=float(same.mean()),
                        labels_changed=int((~same).sum()), dice=scores, hd95=dist, volume_diff_ml=vol,
                        seconds=float(got.timings.get("inference", 0.0)), reference_seconds=ref.timings.get("source"),
                        reference_ties=ties, dice_outside_ties=outside)


def judge(result: ParityResult, max_prob_diff: float, min_dice: float) -> ParityResult:
    """Failures: probability difference over ``max_prob_diff``, a region's Dice under ``min_dice``
    (outside the reference's ties, when it has any)."""
    failures = []
    if not result.max_abs <= max_prob_diff:
        failures.append(f"max probability difference {result.max_abs:.2e} > {max_prob_diff:g}")
    scores = result.dice_outside_ties or result.dice
    ties = f" (not counting {result.reference_ties} tie(s) of the reference)" if result.reference_ties else ""
    for name in REGIONS:
        if not scores[name] >= min_dice:
            failures.append(f"{name} Dice {scores[name]:.5f} < {min_dice:g}{ties}")
    result.failures, result.passed = failures, not failures
    return result


def _source_reference(artifact: Artifact, spec, plan, threads: int | None):
    """``--reference nnunet:FOLDER`` / ``monai-bundle:DIR``: the framework's own predictor, checked to be
    the source the card names; it maps a case to a Segmentation like the torch reference's."""
    from seg_edge.evaluation.sources import open_source, verify_source

    framework = artifact.card.provenance.get("source_framework")
    expected = spec.kind
    # a Keras model comes as an ONNX import whose card names its framework: "keras", "keras (tf2onnx)", …
    if framework != expected and not (expected == "keras" and str(framework).startswith("keras")):
        raise InputError(f"{artifact.path}: was imported from {framework or 'seg-edge'}, not {expected} "
                         f"(--reference {spec.kind}:… compares with the framework it came from)")
    verify_source(spec, artifact.card)
    source = open_source(spec, artifact.card, tta=bool(plan.tta_axes), threads=threads)

    def run(case: Case, segmenter: Segmenter, folder: Path) -> Segmentation:
        got = source.predict(folder)
        return Segmentation(case.case_id, got.labels, segmenter.scheme,
                            region_volumes(got.labels, segmenter.et, case.spacing, scheme=segmenter.scheme),
                            {"source": got.seconds}, got.probabilities)

    return run


def _framework_reference(artifact: Artifact, reference, plan, threads: int | None):
    """(a function (case, segmenter, folder) → the reference Segmentation, the reference's own
    probability rounding, its tie band): the framework's predictor when ``reference`` is a source spec, else the
    torch network through MONAI's sliding window."""
    from seg_edge.evaluation.sources import SourceSpec

    if isinstance(reference, SourceSpec):
        return (_source_reference(artifact, reference, plan, threads), SOURCE_MAX_PROB_DIFF.get(reference.kind, 0.0),
                SOURCE_TIE_BAND.get(reference.kind, 0.0))
    if artifact.card.provenance.get("source_framework") in ("nnunet", "monai-bundle"):
        kind = artifact.card.provenance["source_framework"]
        raise InputError(f"{artifact.path}: imported from {kind}; compare it with its own predictor: "
                         f"--reference {kind}:PATH")
    net = load_reference(artifact, reference)
    return (lambda case, segmenter, folder: reference_segmentation(net, segmenter, case)), 0.0, 0.0


def check_parity(model: Path, cases: list[Path], backends: tuple = ("onnxruntime",),
                 reference=None, options: SegmenterOptions | None = None,
                 threads: int | None = None, on_result=None, on_case=None) -> list[ParityResult]:
    """Run every backend and the reference on every case; results judged by tolerances.

    ``backends`` holds names or (name, precision hint) pairs. FP32 backends are judged by the
    card's tolerances; a reduced-precision hint by ``HINT_TOLERANCES``. ``reference``: a
    ``Reference`` / path (the torch source) or a ``SourceSpec`` (the framework's own predictor).
    ``on_case(case, reference, backend, segmentation)`` sees each backend's labels (parity --report).
    """
    artifact = load_artifact(model)
    opts = options or SegmenterOptions()
    net, allowance, band = _framework_reference(artifact, reference, opts.plan(artifact.card), threads)
    opts = SegmenterOptions(**{**opts.__dict__, "probabilities": True})
    specs = [b if isinstance(b, tuple) else (b, None) for b in backends]
    results: list[ParityResult] = []
    # every session opened is closed, also when a later one fails to open or a case fails
    with contextlib.ExitStack() as stack:
        sessions = {}
        for name, hint in specs:
            session = stack.enter_context(open_session(artifact, name, threads=threads, precision_hint=hint))
            sessions[session.name] = session
        for folder in cases:
            for result in _check_case(artifact, net, sessions, opts, Path(folder), (allowance, band), on_case):
                results.append(result)
                if on_result:
                    on_result(result)
    return results


def _check_case(artifact: Artifact, reference, sessions: dict, opts: SegmenterOptions, folder: Path,
                rounding: tuple[float, float] = (0.0, 0.0), on_case=None):
    """Yield one judged ParityResult per backend for the case in ``folder``; ``rounding``: the
    reference's own (probability allowance, tie band)."""
    allowance, band = rounding
    tol = artifact.card.tolerances
    case = load_case(folder, artifact.card.modalities)
    ref = reference(case, Segmenter(artifact, next(iter(sessions.values())), opts), folder)
    box = nonzero_box(case.images)
    for backend, session in sessions.items():
        seg = Segmenter(artifact, session, opts)
        max_diff, min_dice = HINT_TOLERANCES.get((backend, artifact.card.precision),
                                                 (tol.max_prob_diff, tol.min_region_dice))
        max_diff = max(max_diff, allowance)  # a framework predictor's own rounding
        got = seg.predict(case)
        if on_case:
            on_case(case, ref, backend, got)
        yield judge(compare(case, got, ref, backend, box, seg.et, artifact.card.outputs, band), max_diff, min_dice)
