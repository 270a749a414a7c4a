"""Import a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``).

``metadata.json``'s ``network_data_format`` says what the input channels and output channels are
(``channel_def``); ``inference.json`` is read with ``monai.bundle.ConfigParser``, which instantiates
``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing`` as MONAI would run them. Their
settings are mapped onto the model card (``monai_bundle_transforms``), anything the card cannot
state is refused by name, then the network gets ``models/model.pt`` (weights-only) and
``export_network`` verifies the ONNX file against torch.

The config's ``$`` expressions are Python that ``ConfigParser`` runs while instantiating: import
only bundles you trust, as with MONAI itself.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_edge.card import Channel, ETRule, Inference, Inputs, ModelCard, Outputs
from seg_edge.errors import InputError
from seg_edge.export.onnx import ExportReport, OnnxOptions, export_network
from seg_edge.importers.common import (load_torch_file, load_weights_into, refuse_existing_dir, source_provenance,
                                       state_dict_of)
from seg_edge.importers.monai_bundle_transforms import (BundleRefusal, Postprocessing, map_inferer,
                                                        map_postprocessing, map_preprocessing, probe_label_function)

CONFIG = Path("configs") / "inference.json"
METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.pt"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# channel_def names (compared lower-case, letters and digits only) → card names
MODALITY_NAMES = {**dict.fromkeys(("t1c", "t1ce", "t1gd", "t1contrast", "t1post"), "t1ce"),
                  **dict.fromkeys(("t1", "t1n", "t1w", "t1native"), "t1"), **dict.fromkeys(("t2", "t2w"), "t2"),
                  **dict.fromkeys(("flair", "t2flair", "t2f"), "flair")}
REGION_NAMES = {**dict.fromkeys(("tumorcore", "tumourcore", "tc"), "TC"),
                **dict.fromkeys(("wholetumor", "wholetumour", "wt"), "WT"),
                **dict.fromkeys(("enhancingtumor", "enhancingtumour", "et"), "ET")}
CLASS_NAMES = {**dict.fromkeys(("background", "bg"), "background"),
               **dict.fromkeys(("ncr", "necrosis", "necrotic", "necroticcore", "necrotictumorcore", "ncrnet"), "NCR"),
               **dict.fromkeys(("ed", "edema", "oedema", "peritumoraledema"), "ED"),
               **dict.fromkeys(("et", "enhancingtumor", "enhancingtumour"), "ET")}


@dataclass(frozen=True)
class BundleOptions:
    """``import_monai_bundle``'s settings: the card's name (default: the bundle's) and the export checks."""

    name: str | None = None
    onnx: OnnxOptions = field(default_factory=OnnxOptions)


@dataclass
class Bundle:
    """A bundle read and mapped: its card, and its own instantiated objects (also parity's reference)."""

    folder: Path
    card: ModelCard
    network: Any  # torch.nn.Module with models/model.pt loaded, eval mode
    preprocessing: Any
    inferer: Any
    postprocessing: Any
    image_key: str
    pred_key: str
    labels_from: str  # "function": the bundle's Lambdad; "argmax": class indices; "masks": region masks


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not readable UTF-8 text ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__} (expected an object)")
    return data


def _layout(folder: Path) -> None:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a MONAI bundle with {METADATA}, {CONFIG}, {WEIGHTS})")
    for part, what in ((METADATA, "the bundle's metadata"), (CONFIG, "the bundle's inference config"),
                       (WEIGHTS, "the bundle's weights, a state dict")):
        if not (folder / part).is_file():
            raise InputError(f"{folder / part}: file not found (expected {what}, as MONAI bundles keep it)")


def _one_tensor(fmt: Any, side: str, path: Path) -> tuple[str, dict]:
    section = fmt.get(side) if isinstance(fmt, dict) else None
    if not isinstance(section, dict) or len(section) != 1 or not isinstance(next(iter(section.values())), dict):
        raise InputError(f"{path}: network_data_format.{side} is {json.dumps(section)[:80]} (expected one tensor "
                         "with its channel_def)")
    return next(iter(section.items()))


def _channel_names(spec: dict, where: str, table: dict[str, str], expected: str, path: Path) -> tuple[str, ...]:
    """channel_def {"0": name, ...} → card names in channel order; refuses unknown names and gaps."""
    cdef = spec.get("channel_def")
    if not isinstance(cdef, dict) or sorted(cdef, key=str) != [str(i) for i in range(len(cdef))] or not cdef:
        raise InputError(f"{path}: {where}.channel_def is {json.dumps(cdef)[:80]} (expected {{\"0\": name, ...}} "
                         "for every channel)")
    if spec.get("num_channels", len(cdef)) != len(cdef):
        raise InputError(f"{path}: {where}.num_channels {spec.get('num_channels')} but channel_def names {len(cdef)}")
    names = []
    for i in range(len(cdef)):
        name = table.get(_key(cdef[str(i)]))
        if name is None:
            raise InputError(f"{path}: {where}.channel_def[\"{i}\"] is {cdef[str(i)]!r}, which seg-edge does not "
                             f"know (expected {expected})")
        names.append(name)
    if len(set(names)) != len(names):
        raise InputError(f"{path}: {where}.channel_def names {names} more than once")
    return tuple(names)


def _size_divisor(spec: dict, network_def: Any, path: Path) -> int:
    """From spatial_shape ("8*n" each), or SegResNet's 2^(levels - 1)."""
    shape = spec.get("spatial_shape")
    matches = [re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", s) if isinstance(s, str) else None
               for s in (shape if isinstance(shape, list) else [])]
    factors = {m.group(1) for m in matches if m}
    if len(matches) == 3 and all(matches) and len(factors) == 1:
        return int(factors.pop())
    if isinstance(network_def, dict) and network_def.get("_target_") in ("SegResNet", "monai.networks.nets.SegResNet"):
        return 2 ** (len(network_def.get("blocks_down", (1, 2, 2, 4))) - 1)
    raise InputError(f"{path}: inputs spatial_shape {json.dumps(shape)[:60]} (expected 3 sizes like \"8*n\": the "
                     "sizes the network takes)")


def _parser(folder: Path, config: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    parser["bundle_root"] = str(folder)
    if "device" in config:
        parser["device"] = "$torch.device('cpu')"
    return parser


def _instantiate(parser: Any, id: str, path: Path) -> Any:
    if id not in parser:
        raise InputError(f"{path}: has no '{id}' (expected the bundle's {id})")
    try:
        return parser.get_parsed_content(id)
    except Exception as exc:  # a bundle's config can fail in many ways: name it and stop
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot instantiate '{id}' ({type(exc).__name__}: {first})") from exc


def _outputs(post: Postprocessing, names: tuple[str, ...], path: Path) -> tuple[Outputs, str, str]:
    """(outputs, label scheme, where labels come from) for the bundle's activation and label conversion."""
    if post.kind == "softmax":
        classes = names
        labels = {str(i): c for i, c in enumerate(classes)}
        return Outputs(kind="softmax", channels=classes, thresholds=(), order=(), source_labels=labels), \
            "brats2021", "argmax"
    regions = names
    if post.label_func is not None:
        try:
            outputs, scheme = probe_label_function(post.label_func, regions, post.threshold or 0.5)
        except BundleRefusal as exc:
            raise InputError(f"{path}: {exc}") from exc
        values = {"NCR": 1, "ED": 2, "ET": 3 if scheme == "brats2023" else 4}
        source = {str(values[lab]): lab for _, lab in outputs.order}
        return Outputs(kind="sigmoid", channels=regions, thresholds=outputs.thresholds, rule=outputs.rule,
                       order=outputs.order, source_labels=dict(sorted(source.items()))), scheme, "function"
    order = tuple(pair for pair in (("WT", "ED"), ("TC", "NCR"), ("ET", "ET")) if pair[0] in regions)
    threshold = post.threshold if post.threshold is not None else 0.5  # (map_postprocessing always sets one)
    return Outputs(kind="sigmoid", channels=regions, thresholds=(threshold,) * len(regions),
                   rule="sequential", order=order), "brats2021", "masks"


def _components(folder: Path, parser: Any) -> tuple[Any, Any, Any]:
    path = folder / CONFIG
    preprocessing = _instantiate(parser, "preprocessing", path)
    inferer = _instantiate(parser, "inferer", path)
    postprocessing = _instantiate(parser, "postprocessing", path)
    return preprocessing, inferer, postprocessing


def _network(folder: Path, parser: Any):
    import torch

    path = folder / CONFIG
    net = _instantiate(parser, "network_def", path)
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"{path}: network_def is a {type(net).__name__} (expected a torch.nn.Module)")
    weights = folder / WEIGHTS
    state = state_dict_of(load_torch_file(weights), weights)
    load_weights_into(net, state, weights, f"network_def {type(net).__name__}")
    return net.eval()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def open_bundle(bundle_dir: Path, name: str | None = None) -> Bundle:
    """Read, map and load a bundle: its card and its own objects; InputError names what is refused."""
    folder = Path(bundle_dir)
    _layout(folder)
    meta_path, config_path = folder / METADATA, folder / CONFIG
    metadata, config = _read_json(meta_path), _read_json(config_path)
    fmt = metadata.get("network_data_format")
    image_key, image_spec = _one_tensor(fmt, "inputs", meta_path)
    pred_key, pred_spec = _one_tensor(fmt, "outputs", meta_path)
    modalities = _channel_names(image_spec, f"network_data_format.inputs.{image_key}", MODALITY_NAMES,
                                "T1c, T1, T2, FLAIR or their BraTS 2023 names t1c, t1n, t2w, t2f", meta_path)
    divisor = _size_divisor(image_spec, config.get("network_def"), meta_path)
    with warnings.catch_warnings():  # MONAI's deprecation notes are not the user's business here
        warnings.simplefilter("ignore")
        parser = _parser(folder, config)
        preprocessing, inferer, postprocessing = _components(folder, parser)
        try:
            pre = map_preprocessing(preprocessing, image_key)
            window = map_inferer(inferer)
            post = map_postprocessing(postprocessing, pred_key, preprocessing)
        except BundleRefusal as exc:
            raise InputError(f"{config_path}: {exc}") from exc
        if pre.crop == "nonzero" and not post.inverts:
            raise InputError(f"{config_path}: CropForegroundd is not undone by the postprocessing (expected an "
                             "Invertd of the prediction through 'preprocessing': seg-edge pastes results back)")
        out_names = _output_names(pred_spec, pred_key, post.kind or "", meta_path)
        outputs, scheme, labels_from = _outputs(post, out_names, config_path)
        net = _network(folder, parser)
    if any(p % divisor for p in window["patch_size"]):
        raise InputError(f"{config_path}: SlidingWindowInferer roi_size {list(window['patch_size'])} (expected "
                         f"multiples of {divisor}, from {meta_path.name}'s spatial_shape)")
    inputs = Inputs(channels=tuple(Channel(m, pre.normalization) for m in modalities), tensor=image_key,
                    crop=pre.crop, spacing=pre.spacing, orientation=pre.orientation)
    inference = Inference(size_divisor=divisor, et_rule=ETRule(enabled=False), **window)
    provenance = source_provenance(
        "monai-bundle", folder / WEIGHTS, bundle=folder.name, bundle_name=metadata.get("name"),
        bundle_version=metadata.get("version"), monai_version=metadata.get("monai_version"),
        network=config["network_def"].get("_target_") if isinstance(config.get("network_def"), dict) else None,
        network_kwargs={k: v for k, v in (config.get("network_def") or {}).items() if k != "_target_"},
        preprocessing=pre.steps, postprocessing=post.steps, labels_from=labels_from)
    card = ModelCard(name=name or _slug(str(metadata.get("name") or folder.name)) or "monai-bundle",
                     preset="monai-bundle", inputs=inputs, outputs=outputs, inference=inference, label_scheme=scheme,
                     provenance=provenance)
    card = ModelCard.from_json(card.to_json(), str(config_path))  # the card's own checks, naming the bundle
    return Bundle(folder, card, net, preprocessing, inferer, postprocessing, image_key, pred_key, labels_from)


def _output_names(spec: dict, key: str, kind: str, path: Path) -> tuple[str, ...]:
    """The output channels as card names: regions after a sigmoid, BraTS classes after a softmax."""
    table = REGION_NAMES if kind == "sigmoid" else CLASS_NAMES
    expected = ("Tumor core, Whole tumor, Enhancing tumor (or TC, WT, ET)" if kind == "sigmoid" else
                "background, necrosis, edema, enhancing tumor (or NCR, ED, ET)")
    return _channel_names(spec, f"network_data_format.outputs.{key}", table, expected, path)


def import_monai_bundle(bundle_dir: Path, out: Path, options: BundleOptions = BundleOptions()) -> ExportReport:
    """A MONAI bundle folder → verified ONNX artifact whose card states the bundle's transforms."""
    out = refuse_existing_dir(out)
    bundle = open_bundle(bundle_dir, options.name)
    return export_network(bundle.network, bundle.card, out, options.onnx)
