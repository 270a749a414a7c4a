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

GroupNorm has the same defect: the exporter writes it as Reshape → InstanceNormalization →
Reshape, one float32 sum over a group's channels × X·Y·Z. MONAI's BraTS bundle (SegResNet, init
filters 16, 8 groups) at its 240×240×160 window sums 18 million values per group: ONNX Runtime
differed from torch by 2.5e-3 in logits (logits spread ±2.5, seeded weights), and `import monai-bundle`
refused it at the 1e-3 tolerance. The same per-axis two-pass means over (channels of the group, X, Y, Z).
"""

from __future__ import annotations

from typing import Any


def _two_pass_base():
    import torch

    class TwoPassNorm3d(torch.nn.Module):
        """(x - mean) / sqrt(mean((x - mean)²) + eps), then the affine; a subclass says over what a mean is
        taken (``_mean`` keeps the reduced axes, so it broadcasts back over ``x``)."""

        def __init__(self, norm: Any):  # an nn.InstanceNorm3d or nn.GroupNorm
            super().__init__()
            self.eps = float(norm.eps)
            self.weight = norm.weight
            self.bias = norm.bias

        def _mean(self, x):
            raise NotImplementedError

        def forward(self, x):
            centred = x - self._mean(x)
            y = centred / torch.sqrt(self._mean(centred * centred) + self.eps)
            if self.weight is not None:
                y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
            return y

    return TwoPassNorm3d


def _stable_class():
    class StableInstanceNorm3d(_two_pass_base()):
        """InstanceNorm3d (biased variance, affine) computed with per-axis, two-pass means."""

        def __init__(self, norm):
            if norm.track_running_stats:
                raise ValueError("InstanceNorm with running stats is not supported")
            super().__init__(norm)

        def _mean(self, x):
            return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)

    return StableInstanceNorm3d


def _stable_group_class():
    class StableGroupNorm3d(_two_pass_base()):
        """GroupNorm over 5D input (biased variance, affine) with per-axis, two-pass means."""

        def __init__(self, norm):
            super().__init__(norm)
            self.groups = int(norm.num_groups)

        def _mean(self, x):
            """The group mean at every channel: per-channel means one axis at a time (each float32 sum
            short), then averaged over the group's channels (equal counts, so exactly the group's mean).
            Only the small (N, C) means are reshaped, with constant shapes, so ONNX shape inference
            (bench's FLOP count) still follows the graph."""
            channels = x.shape[1]
            m = x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
            g = m.reshape(-1, self.groups, channels // self.groups).mean(dim=2, keepdim=True)
            return g.expand(-1, self.groups, channels // self.groups).reshape(-1, channels, 1, 1, 1)

    return StableGroupNorm3d


def stabilise_instance_norms(net, sample_rank: int = 5) -> int:
    """Replace every ``nn.InstanceNorm3d`` and ``nn.GroupNorm`` in ``net`` (in place) by its two-pass
    form; returns how many were replaced. GroupNorm is replaced only for 3D networks (``sample_rank`` 5):
    the stable form reduces the three spatial axes one at a time."""
    import torch

    instance, group = _stable_class(), _stable_group_class()
    count = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d):
                setattr(module, name, instance(child))
                count += 1
            elif isinstance(child, torch.nn.GroupNorm) and sample_rank == 5:
                setattr(module, name, group(child))
                count += 1
    return count
