"""A numerically stable, export-friendly InstanceNorm for the ONNX graph.

ONNX Runtime's CPU ``InstanceNormalization`` (and a flat ``ReduceMean`` over X·Y·Z) accumulates
in float32 in one long sum. U-Net activations over skull-stripped MRI hold large constant
regions (the background), so the per-channel variance is small next to the mean and the sum's
rounding error is amplified by 1/std: measured on a filters-8 edge DynUNet and a synthetic
case, logits differed from a float64 reference by 0.08 (probabilities by 0.017), while torch's
float32 InstanceNorm differed by 4e-5. Reducing one axis at a time (each sum ≤ a window edge)
and taking the variance of the centred values (two passes) brings ORT to 4e-5 — and ran
faster than ORT's kernel in the same measurement (0.77 s vs 1.33 s per 96³ window).
The subgraph uses ReduceMean/Sub/Mul/Add/Sqrt/Div only, which TensorRT parses.
"""

from __future__ import annotations


def _stable_class():
    import torch

    class StableInstanceNorm3d(torch.nn.Module):
        """InstanceNorm3d (biased variance, affine) computed with per-axis, two-pass means."""

        def __init__(self, norm: torch.nn.InstanceNorm3d):
            super().__init__()
            if norm.track_running_stats:
                raise ValueError("InstanceNorm with running stats is not supported")
            self.eps = float(norm.eps)
            self.weight = norm.weight
            self.bias = norm.bias

        @staticmethod
        def _mean(x):
            return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)

        def forward(self, x):
            centred = x - self._mean(x)
            y = centred / torch.sqrt(self._mean(centred * centred) + self.eps)
            if self.weight is not None:
                y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
            return y

    return StableInstanceNorm3d


def stabilise_instance_norms(net) -> int:
    """Replace every ``nn.InstanceNorm3d`` in ``net`` (in place); returns how many were replaced."""
    import torch

    cls = _stable_class()
    count = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d):
                setattr(module, name, cls(child))
                count += 1
    return count
