"""Import any PyTorch module: a factory to build it, a weights-only state dict, a user-written card.

``network`` names the factory as ``package.module:Factory`` (imported with importlib) or
``path/to/file.py:Factory`` (loaded from that file); ``Factory(**kwargs)`` must return the
``nn.Module`` the state dict was saved from. Importing the module runs its code: name only code
you trust. The weights are read with ``weights_only=True``; the card (docs/CARD.md) says what the
network expects and produces, and ``export_network`` checks the network against it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from seg_edge.card import ModelCard
from seg_edge.errors import InputError
from seg_edge.export.onnx import ExportReport, OnnxOptions, export_network
from seg_edge.importers.common import (load_torch_file, load_weights_into, read_card_file, refuse_existing_dir,
                                       source_provenance, state_dict_of)


@dataclass(frozen=True)
class TorchOptions:
    """``import_torch``'s settings: the factory's keyword arguments and the export checks."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    onnx: OnnxOptions = field(default_factory=OnnxOptions)


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--network-kwargs``: a JSON object, or InputError saying what was found."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--network-kwargs is not JSON ({exc.msg} at character {exc.pos}): {text[:80]}") from exc
    if not isinstance(value, dict):
        raise InputError(f"--network-kwargs is a JSON {type(value).__name__} (expected an object like "
                         '{"in_channels": 4})')
    return value


def _load_file_module(path: Path, spec: str):
    if not path.is_file():
        raise InputError(f"--network {spec}: file {path} not found")
    name = "seg_edge_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise InputError(f"--network {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # classes defined there (dataclasses, pickling) look their module up
    try:
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's module may raise anything while it runs
        del sys.modules[name]
        raise InputError(f"--network {spec}: running {path} failed ({type(exc).__name__}: {exc})") from exc
    return module


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names (``pkg.module:Factory`` or ``file.py:Factory``); InputError if there is none."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise InputError(f"--network '{spec}' (expected PKG.MODULE:FACTORY or path/to/file.py:FACTORY)")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_file_module(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # ImportError, or anything the module raises on import
            raise InputError(f"--network {spec}: cannot import '{where}' ({type(exc).__name__}: {exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise InputError(f"--network {spec}: '{where}' has no '{attr}'")
    if not callable(obj):
        raise InputError(f"--network {spec}: '{attr}' is a {type(obj).__name__} (expected a class or function)")
    return obj


def build_network(spec: str, kwargs: dict[str, Any]):
    """``Factory(**kwargs)`` from ``spec``, checked to be a torch ``nn.Module``."""
    import torch

    factory = resolve_factory(spec)
    try:
        net = factory(**kwargs)
    except Exception as exc:  # wrong keyword arguments, or the constructor's own checks
        raise InputError(f"--network {spec}: calling it with {json.dumps(kwargs)[:120]} failed "
                         f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"--network {spec} returned {type(net).__name__} (expected a torch.nn.Module)")
    return net


def load_torch(spec: str, weights: Path, card: ModelCard | Path, kwargs: dict[str, Any] | None = None):
    """(network with ``weights`` loaded, in eval mode; its card with provenance) — also parity's reference."""
    kwargs = dict(kwargs or {})
    weights = Path(weights)
    card = card if isinstance(card, ModelCard) else read_card_file(card)
    state = state_dict_of(load_torch_file(weights), weights)
    net = build_network(spec, kwargs)
    load_weights_into(net, state, weights, f"--network {spec}")
    facts = source_provenance("pytorch", weights, network=spec, network_kwargs=kwargs)
    facts["source_framework"] = card.provenance.get("source_framework", "pytorch")
    return net.eval(), card.replace(provenance={**card.provenance, **facts})


def import_torch(spec: str, weights: Path, card: Path, out: Path,
                 options: TorchOptions = TorchOptions()) -> ExportReport:
    """A torch module (``spec``) + weights-only state dict + card JSON → verified ONNX artifact."""
    out = refuse_existing_dir(out)
    net, model_card = load_torch(spec, weights, card, options.kwargs)
    return export_network(net, model_card, out, options.onnx)
