"""MONAI DynUNet presets and the model cards that describe them."""

from __future__ import annotations

from dataclasses import dataclass

from seg_edge.card import ETRule, Inference, ModelCard, nvidia_inputs
from seg_edge.errors import InputError


@dataclass(frozen=True)
class Preset:
    """A DynUNet topology plus the preprocessing contract its weights were trained with."""

    filters: tuple[int, ...]
    strides: tuple[int, ...]
    patch_size: tuple[int, int, int]
    mask_channel: str
    axis_order: str
    description: str

    @property
    def size_divisor(self) -> int:
        divisor = 1
        for s in self.strides:
            divisor *= s
        return divisor


PRESETS = {
    # NVIDIA's Optimized U-Net for BraTS21 (DeepLearningExamples nnUNet, BraTS21 notebook).
    # Their preprocessor transposes nibabel's (X, Y, Z) to (Z, Y, X): axis_order 'zyx'.
    "nvidia-brats21": Preset((64, 96, 128, 192, 256, 384, 512), (1, 2, 2, 2, 2, 2, 2), (128, 128, 128),
                             "nvidia", "zyx", "NVIDIA BraTS21 Optimized U-Net (DynUNet, 7 levels)"),
    # Same family, sized for a 2-core CPU: 5 levels, narrow filters, 96³ windows.
    "edge": Preset((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), (96, 96, 96),
                   "nvidia", "xyz", "seg-edge edge DynUNet (5 levels, filters 8-128)"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"preset '{name}' unknown (expected one of {', '.join(PRESETS)})")
    return PRESETS[name]


def build_network(preset: str, filters: tuple[int, ...] | None = None):
    """A DynUNet for ``preset``; ``filters`` overrides the widths (tests use tiny ones)."""
    from monai.networks.nets import DynUNet

    spec = get_preset(preset)
    filters = tuple(filters or spec.filters)
    if len(filters) != len(spec.strides):
        raise InputError(f"preset '{preset}' needs {len(spec.strides)} filter widths, got {len(filters)}")
    levels = len(spec.strides)
    return DynUNet(
        spatial_dims=3,
        in_channels=4 + (spec.mask_channel != "none"),
        out_channels=3,
        kernel_size=[3] * levels,
        strides=list(spec.strides),
        upsample_kernel_size=list(spec.strides[1:]),
        filters=list(filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": False}),
        res_block=False,
        trans_bias=True,
    )


def card_for(preset: str, name: str | None = None, filters: tuple[int, ...] | None = None) -> ModelCard:
    """The model card a network of ``preset`` is exported with (before provenance is added)."""
    spec = get_preset(preset)
    axes = (2, 1, 0) if spec.axis_order == "zyx" else (0, 1, 2)
    return ModelCard(
        name=name or preset,
        preset=preset,
        inputs=nvidia_inputs(axes=axes),
        inference=Inference(patch_size=spec.patch_size, size_divisor=spec.size_divisor, et_rule=ETRule()),
        provenance={"source_framework": "seg-edge", "filters": list(filters or spec.filters),
                    "strides": list(spec.strides)},
    )
