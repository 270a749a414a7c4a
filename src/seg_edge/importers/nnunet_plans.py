"""nnU-Net v2 ``dataset.json`` + ``plans.json`` (one configuration) → the parts of a seg-edge card.

What nnU-Net's predictor does to an image, stated as card fields (docs/IMPORT.md):

- channels: ``channel_names`` in order, each mapped to a BraTS modality name;
- ``ZScoreNormalization`` with ``use_mask_for_norm`` → ``zscore_mask``, without → ``zscore``;
  ``NoNormalization`` → ``none``; every other scheme is refused by name;
- crop to the non-zero box (always, in nnU-Net), the readers' (z, y, x) view plus
  ``transpose_forward`` → ``inputs.axes``; the configuration's ``spacing`` → ``inputs.spacing``
  (NIfTI order); ``NibabelIOWithReorient`` → ``inputs.orientation`` RAS;
- regions (``regions_class_order``) → sigmoid outputs painted in order; labels → softmax classes;
  nnU-Net's label values → BraTS labels by ``--labels`` or, for Dataset137-style region models,
  by that dataset's convention (1 = ED, 2 = NCR, 3 = ET);
- windows: the plans' patch, nnU-Net's steps and gaussian, overlap 0.5, mirroring axes from the
  checkpoint.

Anything else — cascades, 2D configurations, other readers, preprocessors or label managers —
is refused with its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from seg_edge.card import LABELS, Channel, ETRule, Inference, Inputs, Outputs
from seg_edge.errors import InputError

# nnU-Net channel names used for BraTS (2021: T1/T1ce/T2/FLAIR; 2023: t1n/t1c/t2w/t2f) → seg-edge names
CHANNEL_ALIASES = {"t1": "t1", "t1n": "t1", "t1w": "t1", "native": "t1",
                   "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce", "t1contrast": "t1ce",
                   "t2": "t2", "t2w": "t2", "flair": "flair", "t2flair": "flair", "t2f": "flair"}
NORMALIZATION = {"NoNormalization": "none"}  # ZScoreNormalization depends on use_mask_for_norm
READERS = {"NibabelIO": None, "SimpleITKIO": None, "NibabelIOWithReorient": "RAS"}  # → card orientation
# nnU-Net's Dataset137 (BraTS 2021) conversion: label 1 = edema, 2 = necrosis/non-enhancing, 3 = enhancing
DATASET137 = {"1": "ED", "2": "NCR", "3": "ET"}
BRATS_REGIONS = {frozenset(LABELS): "WT", frozenset({"NCR", "ET"}): "TC", frozenset({"ET"}): "ET"}


@dataclass(frozen=True)
class NnunetCardParts:
    """The card sections the plans and dataset.json determine, and what the user should be told."""

    inputs: Inputs
    outputs: Outputs
    inference: Inference
    notes: tuple[str, ...]


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def modality_names(channel_names: dict[str, str], given: list[str] | None, where: str) -> list[str]:
    """seg-edge modality names in nnU-Net's channel order: ``given`` (``--channels``) or mapped from the names."""
    order = [channel_names[k] for k in sorted(channel_names, key=int)]
    if given is not None:
        if len(given) != len(order):
            raise InputError(f"--channels names {len(given)} channels; {where} has {len(order)}: {order}")
        return given
    names = []
    for name in order:
        mapped = CHANNEL_ALIASES.get(_key(name))
        if mapped is None:
            raise InputError(f"{where}: channel '{name}' is not a BraTS modality (expected one of T1, T1ce, T2, "
                             "FLAIR or t1n/t1c/t2w/t2f); pass --channels to name each channel")
        names.append(mapped)
    if len(set(names)) != len(names):
        raise InputError(f"{where}: channels {order} map to {names}, which repeats a modality; pass --channels")
    return names


def parse_label_map(text: str | None) -> dict[str, str] | None:
    """``--labels 1=ED,2=NCR,3=ET`` → {"1": "ED", ...}; InputError on anything else."""
    if text is None:
        return None
    mapping = {}
    for part in text.split(","):
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or name.strip() not in LABELS:
            raise InputError(f"--labels '{text}' (expected VALUE=NAME pairs such as 1=ED,2=NCR,3=ET; names "
                             f"{', '.join(LABELS)})")
        mapping[str(int(value))] = name.strip()
    return mapping


def _dataset137_like(labels: dict[str, Any], order: list[int] | None) -> bool:
    regions = {_key(k): sorted(v) if isinstance(v, (list, tuple)) else [v] for k, v in labels.items()}
    return (order == [1, 2, 3] and regions.get("wholetumor") == [1, 2, 3] and regions.get("tumorcore") == [2, 3]
            and regions.get("enhancingtumor") == [3])


def label_map(labels: dict[str, Any], order: list[int] | None, given: dict[str, str] | None,
              where: str) -> tuple[dict[str, str], str]:
    """nnU-Net label value → BraTS label name, and a note saying where the mapping came from."""
    values = sorted({int(v) for r in labels.values() for v in (r if isinstance(r, (list, tuple)) else [r])} - {0})
    if given is None:
        if not _dataset137_like(labels, order):
            raise InputError(f"{where}: which BraTS label each nnU-Net label value is cannot be read from "
                             f"dataset.json (labels {labels}); pass --labels, e.g. 1=ED,2=NCR,3=ET")
        given = dict(DATASET137)
        note = "labels mapped by nnU-Net's Dataset137 convention: 1→ED(2), 2→NCR(1), 3→ET (pass --labels to change)"
    else:
        note = "labels mapped as given: " + ", ".join(f"{k}→{v}" for k, v in given.items())
    missing = [v for v in values if str(v) not in given]
    if missing:
        raise InputError(f"{where}: --labels does not map nnU-Net label value(s) {missing}")
    return {str(v): given[str(v)] for v in values}, note


def outputs_for(label_manager, labels: dict[str, Any], mapping: dict[str, str], where: str) -> Outputs:
    """Sigmoid regions painted in ``regions_class_order`` (nnU-Net's rule) or softmax classes."""
    if not label_manager.has_regions:
        names = ["background" if v == 0 else mapping[str(v)] for v in label_manager.all_labels]
        if label_manager.all_labels != list(range(len(names))) or len(set(names)) != len(names):
            raise InputError(f"{where}: labels {labels} do not map onto distinct BraTS classes")
        return Outputs(kind="softmax", channels=tuple(names), thresholds=(), rule="nested", order=(),
                       source_labels=mapping)
    channels, order = [], []
    for region, painted in zip(label_manager.foreground_regions, label_manager.regions_class_order):
        members = frozenset(mapping[str(v)] for v in (region if isinstance(region, (list, tuple)) else [region]))
        name = BRATS_REGIONS.get(members)
        if name is None or name in channels:
            raise InputError(f"{where}: region {list(region) if isinstance(region, (list, tuple)) else region} "
                             f"is BraTS {sorted(members)}, not one of WT, TC, ET")
        channels.append(name)
        order.append((name, mapping[str(painted)]))
    return Outputs(kind="sigmoid", channels=tuple(channels), thresholds=(0.5,) * len(channels), rule="sequential",
                   order=tuple(order), source_labels=mapping)


def _normalizations(cfg, where: str) -> list[str]:
    out = []
    for scheme, use_mask in zip(cfg.normalization_schemes, cfg.use_mask_for_norm):
        if scheme == "ZScoreNormalization":
            out.append("zscore_mask" if use_mask else "zscore")
        elif scheme in NORMALIZATION:
            out.append(NORMALIZATION[scheme])
        else:
            raise InputError(f"{where}: normalization {scheme} is not supported (supported: ZScoreNormalization, "
                             "NoNormalization)")
    return out


def refuse_unsupported(plans_manager, cfg, configuration: str, where: str) -> None:
    """InputError naming the first plans option seg-edge cannot reproduce."""
    reader = plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
    checks = [
        (cfg.previous_stage_name is not None, f"configuration {configuration} is a cascade stage (it needs the "
                                              f"{cfg.previous_stage_name} predictions as input)"),
        (len(cfg.patch_size) != 3, f"configuration {configuration} is 2D (nnU-Net predicts 2D models with an "
                                   "in-plane sliding window, which seg-edge does not run)"),
        (reader not in READERS, f"image_reader_writer {reader} is not supported (supported: {', '.join(READERS)})"),
        (cfg.preprocessor_class.__name__ != "DefaultPreprocessor",
         f"preprocessor {cfg.preprocessor_class.__name__} is not supported (supported: DefaultPreprocessor)"),
        (plans_manager.plans.get("label_manager", "LabelManager") != "LabelManager",
         f"label_manager {plans_manager.plans.get('label_manager')} is not supported (supported: LabelManager)"),
    ]
    for failed, message in checks:
        if failed:
            raise InputError(f"{where}: {message}")


def card_parts(plans_manager, cfg, configuration: str, dataset_json: dict, mirror_axes: tuple[int, ...],
               channels: list[str] | None, labels: dict[str, str] | None, where: str) -> NnunetCardParts:
    """The card sections for one nnU-Net configuration (``cfg``: nnU-Net's ConfigurationManager)."""
    refuse_unsupported(plans_manager, cfg, configuration, where)
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_ignore_label:
        raise InputError(f"{where}: the dataset has an ignore label, which seg-edge does not support")
    names = modality_names(dataset_json.get("channel_names") or dataset_json["modality"], channels, where)
    mapping, note = label_map(dataset_json["labels"], dataset_json.get("regions_class_order"), labels, where)
    # nnU-Net's readers give (z, y, x) of the NIfTI array; transpose_forward permutes that
    axes = tuple((2, 1, 0)[t] for t in plans_manager.transpose_forward)
    spacing = [0.0, 0.0, 0.0]
    for i, value in enumerate(cfg.spacing):
        spacing[axes[i]] = float(value)
    inputs = Inputs(tuple(Channel(n, norm) for n, norm in zip(names, _normalizations(cfg, where))), "image",
                    "nonzero", axes, 3, None, tuple(spacing),
                    READERS[plans_manager.plans.get("image_reader_writer", "SimpleITKIO")])
    strides = cfg.network_arch_init_kwargs.get("strides")
    totals = [math.prod(int(s[a]) if isinstance(s, (list, tuple)) else int(s) for s in strides) for a in range(3)] \
        if strides else [1, 1, 1]
    inference = Inference(patch_size=tuple(int(p) for p in cfg.patch_size), size_divisor=math.gcd(*totals),
                          overlap=0.5, blend="nnunet_gaussian", steps="nnunet", tta_axes=tuple(mirror_axes),
                          et_rule=ETRule(enabled=False))
    return NnunetCardParts(inputs, outputs_for(label_manager, dataset_json["labels"], mapping, where), inference,
                           (note,))
