"""A framework's own inference code run on a case, for parity: ``--reference KIND:PATH``.

A source predictor runs the code the model came with (nnU-Net's ``nnUNetPredictor``, a MONAI
bundle's inference config) on a BraTS-format case folder and returns what it predicted, on the
case's original grid, in the card's terms: BraTS labels and the card's output channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from seg_edge.card import ModelCard
from seg_edge.errors import InputError

KINDS = ("nnunet", "monai-bundle", "keras")


@dataclass
class SourceResult:
    """What the framework predicted for one case."""

    labels: np.ndarray  # uint8 BraTS labels (the card's label scheme) on the case's original (X, Y, Z) grid
    probabilities: np.ndarray  # float32 (K, X, Y, Z): the card's output channels, in the card's order
    seconds: float  # wall time of the framework's own inference for this case (model loading excluded)


class SourcePredictor(Protocol):
    def predict(self, case_folder: Path) -> SourceResult: ...


@dataclass(frozen=True)
class SourceSpec:
    """``--reference nnunet:FOLDER``, ``--reference monai-bundle:DIR`` or ``--reference MODEL.keras``."""

    kind: str
    path: Path


def parse_source(text: str) -> SourceSpec | None:
    """The source spec in ``text``, or None when ``text`` is a plain file path (a ``.keras`` file is Keras')."""
    if str(text).endswith(".keras") and not str(text).startswith("keras:"):
        return SourceSpec("keras", Path(text))
    kind, sep, rest = str(text).partition(":")
    if not sep or kind not in KINDS:
        return None
    if not rest:
        raise InputError(f"--reference {text}: expected {kind}:PATH")
    return SourceSpec(kind, Path(rest))


def verify_source(spec: SourceSpec, card: ModelCard) -> None:
    """ArtifactError unless the files at ``spec`` are the ones the card was imported from (sha256)."""
    from seg_edge.artifact import file_sha256
    from seg_edge.errors import ArtifactError

    prov = card.provenance
    if spec.kind == "nnunet":
        checkpoint = prov.get("checkpoint", "checkpoint_final.pth")
        folds = prov.get("checkpoint_sha256", {})
        files = {spec.path / f"fold_{fold}" / checkpoint: sha for fold, sha in folds.items()}
        files[spec.path / "plans.json"] = prov.get("plans_sha256")
    elif spec.kind == "keras":  # the ONNX import's source is the exported graph; the card may name the .keras
        files = {spec.path: prov.get("keras_sha256")}
    else:  # the bundle's weights
        files = {spec.path / "models" / "model.pt": prov.get("source_sha256")}
    for path, sha in files.items():
        if not path.is_file():
            raise InputError(f"{path}: not found (the model was imported from {spec.kind}:{spec.path})")
        if sha and file_sha256(path) != sha:
            raise ArtifactError(f"{path}: sha256 differs from the file the model was imported from")


def open_source(spec: SourceSpec, card: ModelCard, tta: bool, threads: int | None) -> SourcePredictor:
    """The framework predictor for ``spec``, set up as the card says (mirroring as ``tta``)."""
    if spec.kind == "nnunet":
        from seg_edge.evaluation.sources.nnunet import NnunetSource

        return NnunetSource(spec.path, card, tta=tta, threads=threads)
    if spec.kind == "keras":
        from seg_edge.evaluation.sources.keras import KerasSource

        return KerasSource(spec.path, card, threads=threads)
    from seg_edge.evaluation.sources.monai_bundle import BundleSource

    return BundleSource(spec.path, card, threads=threads)
