"""A MONAI bundle's instantiated transforms and inferer → the model card's terms, or a refusal.

Each supported MONAI class has a mapper that checks the settings it was built with against what
the card can state and returns the card fields it sets; a class without a mapper, or a setting the
card cannot reproduce, is refused by name (``BundleRefusal``) — never skipped. The bundle's objects
are inspected, not its JSON, so references and expressions in the config are already resolved.
Orientationd and Spacingd become the card's ``orientation`` and ``spacing``: the runtime refuses
inputs of another grid, so on every input it accepts they are identities, as in the bundle.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seg_edge.card import LABELS, Outputs
from seg_edge.runtime.postprocess import to_labels


class BundleRefusal(Exception):
    """A setting of the bundle the card cannot state; the importer adds the file to the message."""


PRE_SUPPORTED = ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "Orientationd", "Spacingd",
                 "CropForegroundd", "NormalizeIntensityd")
POST_SUPPORTED = ("Activationsd", "Invertd", "AsDiscreted", "Lambdad", "SaveImaged", "EnsureTyped")
DEFAULT_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class Preprocessing:
    """What the bundle's preprocessing does, in card fields."""

    normalization: str = "none"
    crop: str = "none"
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    steps: list[str] = field(default_factory=list)


@dataclass
class Postprocessing:
    """What the bundle's postprocessing does: the activation, thresholds, label conversion."""

    kind: str | None = None
    threshold: float | None = None
    label_func: Any = None  # the Lambdad's function (probed by ``probe_label_function``)
    inverts: bool = False  # an Invertd of the prediction through the preprocessing
    steps: list[str] = field(default_factory=list)


def monai_name(obj: Any) -> str:
    """The class name of a MONAI object; a class from elsewhere is named with its module."""
    cls = type(obj)
    return cls.__name__ if cls.__module__.startswith("monai.") else f"{cls.__module__}.{cls.__name__}"


def _only_key(t: Any, key: str) -> None:
    keys = tuple(getattr(t, "keys", ()))
    if keys != (key,):
        raise BundleRefusal(f"{monai_name(t)} acts on keys {list(keys)} (expected only '{key}')")


def _first(value: Any) -> Any:
    """A dictionary transform's per-key setting (held as a tuple, one per key) for its one key."""
    return value[0] if isinstance(value, (tuple, list)) else value


def _load(t: Any, pre: Preprocessing) -> None:
    from monai.data import NibabelReader

    loader = t._loader
    if np.dtype(loader.dtype) != np.float32:
        raise BundleRefusal(f"LoadImaged dtype {np.dtype(loader.dtype)} (expected float32)")
    reader = next((r for r in loader.readers[::-1] if r.verify_suffix("case.nii.gz")), None)
    if type(reader) is not NibabelReader:
        raise BundleRefusal(f"LoadImaged reads NIfTI with {type(reader).__name__} (expected NibabelReader: "
                            "seg-edge reads NIfTI arrays as nibabel does)")
    if reader.as_closest_canonical or reader.channel_dim is not None or reader.squeeze_non_spatial_dims:
        raise BundleRefusal("LoadImaged's NibabelReader reorients or reshapes (expected as_closest_canonical, "
                            "channel_dim and squeeze_non_spatial_dims at their defaults)")


def _channel_first(t: Any, pre: Preprocessing) -> None:
    if t.adjuster.input_channel_dim not in (None, 0):
        raise BundleRefusal(f"EnsureChannelFirstd channel_dim {t.adjuster.input_channel_dim} (expected none or 0: "
                            "the four files are stacked as channels)")


def _is_float32(dtype: Any) -> bool:
    if dtype is None:
        return True
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:  # a torch dtype
        return str(dtype) == "torch.float32"


def _ensure_typed(t: Any, pre: Any) -> None:
    dtype = _first(t.dtype)
    if not _is_float32(dtype):
        raise BundleRefusal(f"EnsureTyped dtype {dtype} (expected none or float32)")


def _orientation(t: Any, pre: Preprocessing) -> None:
    o = t.ornt_transform
    if o.labels is not None and tuple(tuple(p) for p in o.labels) != DEFAULT_AXIS_LABELS:
        found = ", ".join("/".join(p) for p in o.labels)
        raise BundleRefusal(f"Orientationd labels {found} (expected the default L/R, P/A, I/S: the card states "
                            "orientation in nibabel's axis codes)")
    codes = "RAS" if o.as_closest_canonical else str(o.axcodes or "")
    if len(codes) != 3 or sorted(codes.upper().translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]:
        raise BundleRefusal(f"Orientationd axcodes {codes!r} (expected 3 axis codes like 'RAS')")
    pre.orientation = codes.upper()


def _spacing(t: Any, pre: Preprocessing) -> None:
    s = t.spacing_transform
    pixdim = [float(p) for p in np.atleast_1d(s.pixdim)]
    pixdim = (pixdim + [pixdim[-1]] * 3)[:3]  # MONAI repeats the last value for missing axes
    if s.diagonal:
        raise BundleRefusal("Spacingd diagonal=True (resets the axis directions: not an identity on any input)")
    if not (np.isnan(s.min_pixdim).all() and np.isnan(s.max_pixdim).all()):
        raise BundleRefusal("Spacingd min_pixdim/max_pixdim (expected unset: the card states one target spacing)")
    if not all(0 < p < 100 for p in pixdim):
        raise BundleRefusal(f"Spacingd pixdim {pixdim} (expected 3 voxel sizes in mm, each > 0: a size <= 0 keeps "
                            "the input's, which the card cannot state)")
    pre.spacing = tuple(pixdim)


def _crop(t: Any, pre: Preprocessing) -> None:
    from monai.transforms.utils import is_positive

    c = t.cropper
    if t.source_key != t.keys[0]:
        raise BundleRefusal(f"CropForegroundd source_key '{t.source_key}' (expected the image itself)")
    if c.select_fn is not is_positive or c.channel_indices is not None:
        raise BundleRefusal("CropForegroundd select_fn/channel_indices (expected is_positive over every channel: "
                            "the card's crop is the box where any modality is > 0)")
    if np.any(np.asarray(c.margin) != 0) or np.any(np.asarray(c.k_divisible) != 1):
        raise BundleRefusal(f"CropForegroundd margin {c.margin}, k_divisible {c.k_divisible} (expected 0 and 1)")
    if pre.normalization != "none":
        raise BundleRefusal("CropForegroundd after NormalizeIntensityd (seg-edge crops, then normalises)")
    pre.crop = "nonzero"


def _normalize(t: Any, pre: Preprocessing) -> None:
    n = t.normalizer
    if n.subtrahend is not None or n.divisor is not None:
        raise BundleRefusal("NormalizeIntensityd with a fixed subtrahend/divisor (expected statistics of each image)")
    if not n.channel_wise:
        raise BundleRefusal("NormalizeIntensityd channel_wise=False (one mean and std over all channels together; "
                            "the card normalises each channel on its own)")
    if pre.normalization != "none":
        raise BundleRefusal("NormalizeIntensityd twice (expected one normalisation)")
    pre.normalization = "zscore_nonzero" if n.nonzero else "zscore"


PRE_MAPPERS = {"LoadImaged": _load, "EnsureChannelFirstd": _channel_first, "EnsureTyped": _ensure_typed,
               "Orientationd": _orientation, "Spacingd": _spacing, "CropForegroundd": _crop,
               "NormalizeIntensityd": _normalize}


def map_preprocessing(compose: Any, image_key: str) -> Preprocessing:
    """The bundle's preprocessing Compose → card input fields; LoadImaged must come first."""
    pre = Preprocessing()
    transforms = list(getattr(compose, "transforms", None) or [])
    if not transforms or monai_name(transforms[0]) != "LoadImaged":
        found = monai_name(transforms[0]) if transforms else "nothing"
        raise BundleRefusal(f"'preprocessing' starts with {found} (expected a Compose starting with LoadImaged)")
    for t in transforms:
        name = monai_name(t)
        if name not in PRE_MAPPERS:
            raise BundleRefusal(f"preprocessing transform {name} is not supported (seg-edge maps "
                                f"{', '.join(PRE_SUPPORTED)}; it refuses a transform rather than skip it)")
        _only_key(t, image_key)
        PRE_MAPPERS[name](t, pre)
        pre.steps.append(name)
    return pre


def _scalar(value: Any, what: str) -> float:
    values = {float(v) for v in np.atleast_1d(value)}
    if len(values) != 1:
        raise BundleRefusal(f"SlidingWindowInferer {what} {sorted(values)} (expected one value for every axis)")
    return values.pop()


def map_inferer(inferer: Any) -> dict[str, Any]:
    """SlidingWindowInferer → the card's patch size, overlap and blend."""
    if monai_name(inferer) != "SlidingWindowInferer":
        raise BundleRefusal(f"inferer {monai_name(inferer)} is not supported (expected SlidingWindowInferer: "
                            "seg-edge always runs a sliding window)")
    roi = [int(r) for r in np.atleast_1d(inferer.roi_size)]
    if len(roi) != 3 or min(roi) < 1:
        raise BundleRefusal(f"SlidingWindowInferer roi_size {roi} (expected 3 sizes >= 1)")
    mode = str(getattr(inferer.mode, "value", inferer.mode))
    if mode not in ("gaussian", "constant"):
        raise BundleRefusal(f"SlidingWindowInferer mode '{mode}' (expected gaussian or constant)")
    sigma = _scalar(inferer.sigma_scale, "sigma_scale")
    if mode == "gaussian" and not math.isclose(sigma, 0.125):
        raise BundleRefusal(f"SlidingWindowInferer sigma_scale {sigma:g} (expected 0.125, the card's gaussian blend)")
    padding = str(getattr(inferer.padding_mode, "value", inferer.padding_mode))
    if padding != "constant" or float(inferer.cval) != 0.0:
        raise BundleRefusal(f"SlidingWindowInferer padding_mode '{padding}', cval {inferer.cval} (expected "
                            "constant 0: seg-edge pads with zeros)")
    if getattr(inferer, "with_coord", False):
        raise BundleRefusal("SlidingWindowInferer with_coord=True (expected a network taking the patch alone)")
    overlap = _scalar(inferer.overlap, "overlap")
    if not 0.0 <= overlap < 1.0:
        raise BundleRefusal(f"SlidingWindowInferer overlap {overlap:g} (expected 0 <= overlap < 1)")
    return {"patch_size": tuple(roi), "overlap": overlap, "blend": mode}


def _activations(t: Any, post: Postprocessing) -> None:
    sigmoid, softmax, other = _first(t.sigmoid), _first(t.softmax), _first(t.other)
    if other is not None or sigmoid == softmax or t.converter.kwargs.get("dim", 0) != 0:
        raise BundleRefusal("Activationsd (expected exactly one of sigmoid or softmax over the channels, no other)")
    if post.kind is not None:
        raise BundleRefusal("Activationsd twice (expected one activation)")
    post.kind = "sigmoid" if sigmoid else "softmax"


def _as_discrete(t: Any, post: Postprocessing) -> None:
    argmax, threshold = bool(_first(t.argmax)), _first(t.threshold)
    if post.kind is None or post.threshold is not None:
        raise BundleRefusal("AsDiscreted (expected one, after Activationsd)")
    if _first(t.to_onehot) is not None or _first(t.rounding) is not None or t.converter.kwargs.get("dim", 0) != 0:
        raise BundleRefusal("AsDiscreted to_onehot/rounding/dim (expected a threshold or an argmax over channels)")
    if post.kind == "sigmoid" and (argmax or threshold is None or not 0 < float(threshold) < 1):
        raise BundleRefusal(f"AsDiscreted after sigmoid: argmax {argmax}, threshold {threshold} (expected a "
                            "threshold in (0, 1))")
    if post.kind == "softmax" and (not argmax or threshold is not None):
        raise BundleRefusal("AsDiscreted after softmax (expected argmax=True and no threshold)")
    post.threshold = float(threshold) if threshold is not None else 0.5


def _lambda(t: Any, post: Postprocessing) -> None:
    if "AsDiscreted" not in post.steps or post.label_func is not None:
        raise BundleRefusal("Lambdad before AsDiscreted or twice (expected one label conversion of the discrete "
                            "prediction)")
    if post.kind != "sigmoid":
        raise BundleRefusal("Lambdad after a softmax argmax (expected class indices as the output)")
    post.label_func = _first(t.func)


def _invert(t: Any, post: Postprocessing, preprocessing: Any) -> None:
    if t.transform is not preprocessing:
        raise BundleRefusal("Invertd inverts another transform than 'preprocessing'")
    post.inverts = True


def map_postprocessing(compose: Any, pred_key: str, preprocessing: Any) -> Postprocessing:
    """The bundle's postprocessing Compose → activation, thresholds and the label function."""
    post = Postprocessing()
    for t in list(getattr(compose, "transforms", None) or []):
        name = monai_name(t)
        if name not in POST_SUPPORTED:
            raise BundleRefusal(f"postprocessing transform {name} is not supported (seg-edge maps "
                                f"{', '.join(POST_SUPPORTED)}; it refuses a transform rather than skip it)")
        _only_key(t, pred_key)
        if name == "Invertd":
            _invert(t, post, preprocessing)
        elif name == "EnsureTyped":
            _ensure_typed(t, post)
        elif name != "SaveImaged":  # writing the result changes nothing in it (seg-edge writes its own)
            {"Activationsd": _activations, "AsDiscreted": _as_discrete, "Lambdad": _lambda}[name](t, post)
        post.steps.append(name)
    if post.kind is None or post.threshold is None:
        raise BundleRefusal("postprocessing lacks Activationsd or AsDiscreted (expected an activation and a "
                            "threshold or argmax: the card states how outputs become labels)")
    return post


def _canonical_first(regions: tuple[str, ...]) -> list[tuple[str, ...]]:
    order = {"WT": 0, "TC": 1, "ET": 2}
    return sorted(itertools.permutations(regions), key=lambda p: [order.get(r, 9) for r in p])


def _candidates(regions: tuple[str, ...], table: dict[tuple[int, ...], int], names: dict[int, str]):
    """(rule, order) pairs read off the function's table: each region's label where it alone (sequential),
    or it and the first region (nested), is set."""
    for rule in ("sequential", "nested"):
        for perm in _canonical_first(regions):
            order = []
            for r in perm:
                on = {r} if rule == "sequential" or r == perm[0] else {r, perm[0]}
                value = table[tuple(int(x in on) for x in regions)]
                if value not in names or names[value] == "background":
                    break
                order.append((r, names[value]))
            else:
                yield rule, tuple(order)


def probe_label_function(func: Any, regions: tuple[str, ...], threshold: float) -> tuple[Outputs, str]:
    """The card rule reproducing the bundle's label function on every combination of region masks.

    The function is run on a (K, 2^K, 1, 1) tensor holding each combination of 0/1 channels (as
    AsDiscreted hands it over); its labels must be BraTS values (1 NCR, 2 ED, 4 or 3 ET) and equal
    what a ``sequential`` or ``nested`` rule gives for some order. Returns (outputs, label scheme).
    """
    import torch

    combos = list(itertools.product((0, 1), repeat=len(regions)))
    x = torch.tensor(combos, dtype=torch.float32).T.reshape(len(regions), len(combos), 1, 1)
    try:
        y = np.asarray(torch.as_tensor(func(x)).detach().cpu()).reshape(-1)
    except Exception as exc:  # the bundle's expression can raise anything
        raise BundleRefusal(f"Lambdad's function fails on the {len(regions)} region masks ({type(exc).__name__}: "
                            f"{exc})") from exc
    if y.size != len(combos) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise BundleRefusal(f"Lambdad's function returns {y.size} values for {len(combos)} voxels (expected one "
                            "integer label per voxel)")
    values = {int(v) for v in y}
    scheme = "brats2023" if 3 in values else "brats2021"
    names = {0: "background", 1: "NCR", 2: "ED", 3 if scheme == "brats2023" else 4: "ET"}
    if not values <= set(names):
        raise BundleRefusal(f"Lambdad's function writes labels {sorted(values)} (expected BraTS labels "
                            f"{sorted(names)})")
    table = {c: int(v) for c, v in zip(combos, y)}
    probs = np.asarray(combos, dtype=np.float32).T.reshape(len(regions), len(combos), 1, 1)
    et = 3 if scheme == "brats2023" else 4
    for rule, order in _candidates(regions, table, names):
        outputs = Outputs(kind="sigmoid", channels=regions, thresholds=(threshold,) * len(regions), rule=rule,
                          order=order)
        if np.array_equal(to_labels(probs, outputs, et).reshape(-1), y.astype(np.uint8)):
            return outputs, scheme
    raise BundleRefusal(f"Lambdad's function maps the region masks {[list(c) for c in combos]} to labels "
                        f"{y.astype(int).tolist()}, which no card rule (sequential or nested regions → "
                        f"{'/'.join(LABELS)}) reproduces")
