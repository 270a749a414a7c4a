"""Import an nnU-Net v2 trained model folder: one configuration, one or more folds → one ONNX graph.

The network is built with nnU-Net's own code exactly as ``nnUNetPredictor`` builds it (the
trainer class named in the checkpoint, its ``build_network_architecture``, deep supervision
off); each fold's ``network_weights`` are loaded with ``torch.load(weights_only=True)``. Several
folds become one graph that averages the members' logits, as nnU-Net averages folds. The card
comes from ``plans.json`` and ``dataset.json`` (``nnunet_plans``). Needs the extra ``nnunet``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from seg_edge.artifact import file_sha256
from seg_edge.card import ModelCard, Tolerances
from seg_edge.errors import InputError, MissingExtra
from seg_edge.export.onnx import ExportReport, OnnxOptions, export_network
from seg_edge.importers.common import load_torch_file, load_weights_into, refuse_existing_dir, source_provenance
from seg_edge.importers.nnunet_plans import card_parts


@dataclass(frozen=True)
class NnunetOptions:
    """``seg-edge import nnunet`` settings."""

    configuration: str | None = None  # default: the one the checkpoint was trained with (the folder's)
    folds: tuple[int | str, ...] | None = None  # default: every fold_* with the checkpoint
    checkpoint: str = "checkpoint_final.pth"
    channels: list[str] | None = None
    labels: dict[str, str] | None = None
    name: str | None = None
    notes: list[str] = field(default_factory=list)  # filled in: what the user is told
    onnx: OnnxOptions = field(default_factory=OnnxOptions)


def _require_nnunet():
    try:
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("nnunetv2", needed_for="import nnunet") from exc


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: not found (expected an nnU-Net trained model folder holding dataset.json, "
                         "plans.json and fold_N/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__} (expected an object)")
    return data


def find_folds(folder: Path, folds: tuple | None, checkpoint: str) -> list[tuple[int | str, Path]]:
    """(fold, checkpoint path) for the folds asked for, or every ``fold_*`` holding ``checkpoint``."""
    if folds is None:
        found = sorted(p for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if not found:
            raise InputError(f"{folder}: no fold_*/{checkpoint} (expected a trained nnU-Net model folder)")
        folds = tuple(int(p.name[5:]) if p.name[5:].isdigit() else p.name[5:] for p in found)
    out = []
    for fold in folds:
        path = folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise InputError(f"{path}: not found (fold {fold} has no {checkpoint})")
        out.append((fold, path))
    return out


def _checkpoint_classes() -> tuple:
    """What an nnU-Net checkpoint pickles besides tensors (numpy scalars in its training log), admitted
    by name for weights-only loading: numpy's scalar constructor and the numeric dtypes. No arrays."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed it
    dtypes = tuple(getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Float16DType",
                                                         "Int64DType", "Int32DType", "BoolDType"))
    return (core.multiarray.scalar, np.dtype) + dtypes


def read_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint dict, loaded weights-only; InputError if it lacks the network weights."""
    data = load_torch_file(path, admit=_checkpoint_classes())
    if not isinstance(data, dict) or not isinstance(data.get("network_weights"), dict):
        raise InputError(f"{path}: not an nnU-Net checkpoint (expected a dict with 'network_weights')")
    for key in ("trainer_name", "init_args"):
        if key not in data:
            raise InputError(f"{path}: nnU-Net checkpoint lacks '{key}'")
    return data


def build_member(trainer_name: str, plans_manager, cfg, dataset_json: dict, where: Path):
    """The network as ``nnUNetPredictor`` builds it: the trainer's builder, deep supervision off."""
    import inspect

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except Exception as exc:  # nnU-Net raises RuntimeError/AssertionError for unknown trainers
        raise InputError(f"{where}: trainer {trainer_name} is not found in the installed nnunetv2 "
                         f"({type(exc).__name__}); install the package that defines it") from exc
    if trainer is None:
        raise InputError(f"{where}: trainer {trainer_name} is not found in the installed nnunetv2")
    channels = determine_num_input_channels(plans_manager, cfg, dataset_json)
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        return trainer.build_network_architecture(plans_manager, cfg, channels, heads, enable_deep_supervision=False)
    return trainer.build_network_architecture(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                              cfg.network_arch_init_kwargs_req_import, channels, heads,
                                              enable_deep_supervision=False)


def logit_mean(members: list):
    """One module averaging the members' logits (nnU-Net's fold ensemble); a single member as is."""
    import torch

    if len(members) == 1:
        return members[0]

    class LogitMean(torch.nn.Module):
        def __init__(self, nets):
            super().__init__()
            self.members = torch.nn.ModuleList(nets)

        def forward(self, x):
            total = self.members[0](x)
            for i in range(1, len(self.members)):  # by index: ONNX node names read members.1.…
                total = total + self.members[i](x)
            return total / len(self.members)

    return LogitMean(members)


def _weights(state: dict) -> dict:
    """nnU-Net's saved weights without the wrappers' prefixes (compiled: ``_orig_mod.``; DDP: ``module.``)."""
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_nnunet(folder: Path, options: NnunetOptions = NnunetOptions()):
    """(network averaging the folds' logits, in eval mode; its card) — also parity's torch reference."""
    _require_nnunet()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    dataset_json, plans = _read_json(folder / "dataset.json"), _read_json(folder / "plans.json")
    folds = find_folds(folder, options.folds, options.checkpoint)
    checkpoints = [read_checkpoint(path) for _, path in folds]
    first = checkpoints[0]
    configuration = options.configuration or first["init_args"].get("configuration")
    trained = {c["init_args"].get("configuration") for c in checkpoints} | {configuration}
    if len(trained) != 1:
        raise InputError(f"{folder}: folds were trained with configurations {sorted(map(str, trained))} "
                         f"(expected all {configuration})")
    plans_manager = PlansManager(plans)
    if configuration not in plans.get("configurations", {}):
        raise InputError(f"{folder}: plans.json has no configuration {configuration} (has "
                         f"{sorted(plans.get('configurations', {}))})")
    cfg = plans_manager.get_configuration(configuration)
    mirror = tuple(int(a) for a in first.get("inference_allowed_mirroring_axes") or ())
    parts = card_parts(plans_manager, cfg, configuration, dataset_json, mirror, options.channels, options.labels,
                       str(folder))
    options.notes.extend(parts.notes)
    members = []
    for (_, path), ckpt in zip(folds, checkpoints):
        if ckpt["trainer_name"] != first["trainer_name"]:
            raise InputError(f"{path}: trainer {ckpt['trainer_name']} differs from fold {folds[0][0]}'s "
                             f"{first['trainer_name']}")
        net = build_member(ckpt["trainer_name"], plans_manager, cfg, dataset_json, path)
        load_weights_into(net, _weights(ckpt["network_weights"]), path, f"nnU-Net {cfg.network_arch_class_name}")
        members.append(net.eval())
    card = _card(folder, options, configuration, parts, folds, first, plans)
    return logit_mean(members).eval(), card


def _card(folder: Path, options: NnunetOptions, configuration: str, parts, folds, first: dict,
          plans: dict) -> ModelCard:
    import nnunetv2

    version = getattr(nnunetv2, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("nnunetv2")
    inference = parts.inference.__class__(**{**parts.inference.__dict__, "ensemble": len(folds)})
    prov = source_provenance(
        "nnunet", folds[0][1], source_file=folder.name, model_folder=str(folder.resolve()),
        configuration=configuration, folds=[f for f, _ in folds], checkpoint=options.checkpoint,
        trainer=first["trainer_name"], plans_name=plans.get("plans_name"),
        dataset_name=plans.get("dataset_name"), nnunetv2_version=version,
        checkpoint_sha256={str(f): file_sha256(p) for f, p in folds},
        plans_sha256=file_sha256(folder / "plans.json"), dataset_json_sha256=file_sha256(folder / "dataset.json"))
    name = options.name or f"nnunet-{plans.get('dataset_name', folder.parent.name)}-{configuration}".lower()
    return ModelCard(name=name, preset="nnunet", inputs=parts.inputs, outputs=parts.outputs, inference=inference,
                     label_scheme="brats2021", tolerances=Tolerances(max_prob_diff=1e-3, min_region_dice=0.999),
                     provenance=prov)


def import_nnunet(folder: Path, out: Path, options: NnunetOptions = NnunetOptions()) -> ExportReport:
    """nnU-Net v2 model folder → verified ONNX artifact (folds averaged in one graph)."""
    out = refuse_existing_dir(out)
    net, card = load_nnunet(folder, options)
    return export_network(net, card, out, options.onnx)
