"""PyTorch session around an ``nn.Module``: the reference backend (and training's validator)."""

from __future__ import annotations

from typing import Any

import numpy as np

from seg_edge.errors import BackendUnavailable, MissingExtra
from seg_edge.runtime.sessions.base import SessionBase


class TorchSession(SessionBase):
    """Runs a torch module in eval mode under ``no_grad``; ``autocast`` picks a reduced precision."""

    name = "torch"

    def __init__(self, module: Any, in_channels: int, out_channels: int, device: str = "cpu",
                 autocast_dtype: str | None = None) -> None:
        super().__init__(in_channels, out_channels)
        try:
            import torch
        except ImportError as exc:
            raise MissingExtra("torch", needed_for="the torch backend") from exc
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend: CUDA requested but torch sees no GPU")
        self._torch = torch
        self._module = module.to(device).eval()
        self._device = device
        self._autocast = getattr(torch, autocast_dtype) if autocast_dtype else None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch).to(self._device)
        with torch.no_grad(), torch.autocast(self._device.split(":")[0], dtype=self._autocast,
                                             enabled=self._autocast is not None):
            out = self._module(x)
        logits: np.ndarray = out.float().cpu().numpy()
        return logits
