"""A torch network whose output is already a softmax or sigmoid: found, named, and its logits recovered.

The card promises logits and the runtime applies the card's activation itself, so a network that
ends in one would be activated twice. Which call made the output is seen while the network runs:
a ``TorchFunctionMode`` records the last softmax/sigmoid call (module or functional), and the
network's output is that call's result only if it is the very same tensor. Its input is then the
network's logits, exactly — never rebuilt from the probabilities (``log p`` caps at the clamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seg_edge.errors import ArtifactError


def _activation_functions() -> dict[Any, tuple[str, str]]:
    """torch function → (kind, how the message names it)."""
    import torch
    import torch.nn.functional as F

    return {torch.softmax: ("softmax", "torch.softmax"), F.softmax: ("softmax", "F.softmax"),
            torch.Tensor.softmax: ("softmax", "Tensor.softmax"),
            torch.special.softmax: ("softmax", "torch.special.softmax"),
            torch.sigmoid: ("sigmoid", "torch.sigmoid"), F.sigmoid: ("sigmoid", "F.sigmoid"),
            torch.Tensor.sigmoid: ("sigmoid", "Tensor.sigmoid"),
            torch.special.expit: ("sigmoid", "torch.special.expit")}


@dataclass(frozen=True)
class FinalActivation:
    """The call that made a network's output: ``kind`` softmax/sigmoid, ``call`` as written
    (``torch.softmax``, ``nn.Softmax``), ``module`` its dotted name in the network when it is a module,
    ``dim`` the softmax's axis (None for a sigmoid)."""

    kind: str
    call: str
    module: str | None
    dim: int | None

    def describe(self) -> str:
        """``nn.Softmax (module 'head.act')`` or ``torch.softmax``: how a one-line message names it."""
        return f"{self.call} (module '{self.module}')" if self.module else self.call


def _recorder():
    from torch.overrides import TorchFunctionMode

    functions = _activation_functions()

    class Recorder(TorchFunctionMode):
        """Remembers the last softmax/sigmoid call: (kind, its name, its input, its output, dim)."""

        def __init__(self) -> None:
            super().__init__()
            self.last: tuple | None = None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            kind, name = functions.get(func, (None, None))
            if kind is not None and args:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None) if kind == "softmax" else None
                self.last = (kind, name, args[0], result, dim)
            return result

    return Recorder()


def _module_hooks(net) -> tuple[list, dict]:
    """Forward hooks on the network's Softmax/Sigmoid modules: (handles, {id(output): module name})."""
    import torch

    seen: dict[int, tuple[str, str]] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, (torch.nn.Softmax, torch.nn.Sigmoid, torch.nn.Softmax2d)):
            def hook(mod, inputs, output, name=name):
                seen[id(output)] = (name, f"nn.{type(mod).__name__}")
            handles.append(module.register_forward_hook(hook))
    return handles, seen


def run_recording(net, x) -> tuple[Any, FinalActivation | None, Any]:
    """(``net(x)``, the activation that made it or None, the logits: that activation's input, else the output)."""
    handles, modules = _module_hooks(net)
    recorder = _recorder()
    try:
        with recorder:
            out = net(x)
    finally:
        for handle in handles:
            handle.remove()
    last = recorder.last
    if last is None or last[3] is not out:
        return out, None, out
    kind, call, logits, result, dim = last
    name, call = modules.get(id(result), (None, call))
    if kind == "softmax" and dim is None:
        dim = 1  # torch's implicit dim for a 4D/5D input
    if dim is not None:
        dim = dim % out.dim()
    return out, FinalActivation(kind, call, name, dim), logits


def without_final_module(net, final: FinalActivation):
    """A copy of ``net`` with the module ``final`` names replaced by ``nn.Identity``."""
    import copy

    import torch

    if final.module is None:
        raise ArtifactError(f"network ends in {final.call}, a call inside forward() that cannot be removed")
    net = copy.deepcopy(net)
    parent_name, _, child = final.module.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, torch.nn.Identity())
    return net


def looks_like_probabilities(out, channels: int) -> bool:
    """Values in [0, 1] summing to 1 over the channel axis at every voxel (2 or more channels): a softmax."""
    import numpy as np

    out = np.asarray(out)
    if channels < 2 or out.size == 0 or out.min() < 0 or out.max() > 1:
        return False
    return bool(np.abs(out.sum(axis=1) - 1).max() <= 1e-4)


class LogitsOf:
    """A network that ends in a softmax/sigmoid, called for its logits: the final activation's input.

    Parity's reference for an import whose final activation was removed (from the ONNX graph or the
    torch module); ArtifactError if, on some input, the output is not made by such a call."""

    def __init__(self, net, source: str):
        self.net, self.source = net, source

    def __call__(self, x):
        out, final, logits = run_recording(self.net, x)
        if final is None:
            raise ArtifactError(f"{self.source}: the import removed a final activation, but this network's output "
                                "is not made by a softmax or sigmoid call (expected the network the model was "
                                "made from)")
        return logits
