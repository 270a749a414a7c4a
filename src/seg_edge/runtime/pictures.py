"""Pictures of a case: orthogonal slices with the label overlay, a legend and volumes.

Drawn with Pillow alone (the ``preview`` extra). Pillow rather than matplotlib because these
pictures are a few resampled slices, coloured masks and text: Pillow (22 MB installed, 0.05 s to
import) does that with no further dependencies, where matplotlib needs Pillow as well plus 74 MB
of its own (fonttools, kiwisolver, contourpy, pyparsing, ...) and 0.7 s to import (measured on the
project's 2-core machine) in a runtime that sits on scanner-side boxes and in a web server. Images are
reoriented to RAS for display only (neurological view: the patient's left on the picture's left);
nothing written is reoriented.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_edge.errors import MissingExtra

if TYPE_CHECKING:  # Pillow is the preview extra: imported where a picture is drawn
    from PIL import Image, ImageFont

# label → (short name, meaning, RGB). The page's legend and the API's take them from here.
LABEL_INFO = {1: ("NCR", "necrotic tumour core", (230, 25, 25)),
              2: ("ED", "peritumoral oedema", (25, 204, 51)),
              4: ("ET", "enhancing tumour", (255, 224, 25))}
# the labels other label sets (card.LABEL_SETS) name differently or add: the same colour for the same tissue
OTHER_LABEL_INFO = {"NETC": ("non-enhancing tumour core", (230, 25, 25)),
                    "SNFH": ("surrounding non-enhancing FLAIR hyperintensity", (25, 204, 51)),
                    "RC": ("resection cavity", (40, 110, 255))}
HIGHLIGHT = (255, 0, 255)  # voxels that differ (parity pictures)
PANEL_PX = 240  # the longest side of one slice panel, in pixels
FOOTER = "seg-edge is not a medical device: not for clinical use. Neurological view (left is left)."


def require_pillow() -> None:
    """A one-line error if Pillow, which draws every picture, is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise MissingExtra("PIL", needed_for="drawing pictures") from None


def _labels(et: int, label_set: dict[str, int] | None) -> list[tuple[int, str, str, tuple[int, int, int]]]:
    """(value, name, meaning, RGB) of each label: NCR 1, ED 2, ET ``et``, or those of ``label_set``."""
    known = {name: (meaning, rgb) for name, meaning, rgb in LABEL_INFO.values()} | OTHER_LABEL_INFO
    if label_set is None:
        label_set = {name: (et if name == "ET" else value) for value, (name, _, _) in LABEL_INFO.items()}
    return [(value, name, *known[name]) for name, value in label_set.items()]


def legend(et: int, label_set: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Each label's value, name, meaning and colour (``#rrggbb``) for a label scheme's ET label, or for every
    label of ``label_set`` (name → value, ``regions.label_set``) where one is given."""
    return [{"value": value, "name": name, "description": meaning, "colour": "#%02x%02x%02x" % rgb}
            for value, name, meaning, rgb in _labels(et, label_set)]


def _colours(et: int, label_set: dict[str, int] | None = None) -> dict[int, tuple[int, int, int]]:
    return {value: rgb for value, _, _, rgb in _labels(et, label_set)}


@dataclass
class Volume3D:
    """Images (name → (X, Y, Z)) and label maps (name → (X, Y, Z)) on one grid, in RAS for display."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    spacing: tuple[float, float, float]

    @classmethod
    def canonical(cls, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], affine: np.ndarray,
                  spacing: tuple[float, ...]) -> Volume3D:
        """Reorient every array to the closest RAS axes of ``affine`` (flips and transposes only)."""
        import nibabel as nib

        ornt = nib.orientations.io_orientation(affine)

        def turn(a: np.ndarray) -> np.ndarray:
            return np.asarray(nib.orientations.apply_orientation(a, ornt))
        order = [int(ax) for ax in ornt[:, 0]]
        ras_spacing = [1.0, 1.0, 1.0]
        for src, dst in enumerate(order):
            ras_spacing[dst] = float(spacing[src])
        return cls({k: turn(v) for k, v in images.items()}, {k: turn(v) for k, v in labels.items()},
                   tuple(ras_spacing)).cropped()  # type: ignore[arg-type]

    def cropped(self, margin: int = 4) -> Volume3D:
        """The box holding every non-zero voxel of the images and labels, plus ``margin`` voxels."""
        arrays = list(self.images.values()) + list(self.labels.values())
        mask = np.zeros(arrays[0].shape, dtype=bool)
        for array in arrays:
            mask |= array != 0
        if not mask.any():
            return self
        box = tuple(slice(max(int(idx.min()) - margin, 0), int(idx.max()) + margin + 1) for idx in np.nonzero(mask))
        return Volume3D({k: v[box] for k, v in self.images.items()}, {k: v[box] for k, v in self.labels.items()},
                        self.spacing)


def tumour_centre(labels: np.ndarray, fallback: np.ndarray | None = None) -> tuple[int, int, int]:
    """The centre of mass of the largest labelled component (else of ``fallback``'s non-zero voxels, else
    the middle): a few stray voxels far away do not pull the slices off the tumour."""
    from scipy import ndimage

    mask = labels > 0
    if mask.any():
        components, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            mask = components == int(np.argmax(sizes)) + 1
    elif fallback is not None and np.any(fallback != 0):
        mask = fallback != 0
    else:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))  # type: ignore[return-value]


def window(volume: np.ndarray) -> tuple[float, float]:
    """Display range: the 0.5th and 99.5th percentiles of the non-zero voxels."""
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, (0.5, 99.5))
    return float(low), float(max(high, low + 1e-6))


PLANES = ("axial", "coronal", "sagittal")


def plane(volume: np.ndarray, name: str, centre: tuple[int, int, int]) -> np.ndarray:
    """One slice through ``centre`` of a RAS volume, rows top→bottom = anterior/superior first."""
    i, j, k = centre
    cut = {"axial": volume[:, :, k], "coronal": volume[:, j, :], "sagittal": volume[i, :, :]}[name]
    return np.rot90(cut)


def plane_spacing(spacing: tuple[float, float, float], name: str) -> tuple[float, float]:
    """(row, column) spacing in mm of a ``plane``."""
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[name]


def panel(gray: np.ndarray, labels: np.ndarray | None, et: int, size: tuple[int, int], alpha: float = 0.45,
          changed: np.ndarray | None = None, span: tuple[float, float] = (0.0, 1.0),
          label_set: dict[str, int] | None = None) -> Image.Image:
    """A PIL image of one slice: grey levels in ``span``, labels blended in, ``changed`` voxels outlined."""
    from PIL import Image

    low, high = span
    grey = np.clip((gray.astype(np.float32) - low) / (high - low), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        for value, colour in _colours(et, label_set).items():
            mask = labels == value
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    if changed is not None and changed.any():
        rgb[changed] = HIGHLIGHT
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return img.resize(size, Image.Resampling.NEAREST)


def panel_size(shape: tuple[int, int], spacing: tuple[float, float], scale: float) -> tuple[int, int]:
    """(width, height) in pixels of a slice of ``shape`` (rows, cols) drawn at ``scale`` px/mm."""
    return max(1, int(round(shape[1] * spacing[1] * scale))), max(1, int(round(shape[0] * spacing[0] * scale)))


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_png(image: Image.Image, out: Path) -> None:
    """Write ``image`` as a PNG at ``out`` atomically."""
    from seg_edge.runtime.atomic import write_bytes_atomic

    write_bytes_atomic(out, encode_png(image))


@dataclass(frozen=True)
class Row:
    """One row of a figure: the three planes of ``image`` with ``labels`` over it (keys of a Volume3D)."""

    title: str
    image: str | None
    labels: str | None
    changed: str | None = None  # a label-map key holding a boolean mask to highlight


def busiest_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """For each axis, the slice holding most of ``mask`` (the middle if it is empty)."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis))))
                 for axis in range(3))  # type: ignore[return-value]


Line = tuple[tuple[int, ...] | None, str, str]  # (RGB colour or None, left text, right text)


def _legend_panel(lines: list[Line], width: int, height: int) -> Image.Image:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw, text_font, y = ImageDraw.Draw(img), font(14), 8
    for colour, left, right in lines:
        x = 10
        if colour is not None:
            draw.rectangle((x, y + 2, x + 14, y + 16), fill=colour, outline=(60, 60, 60))
            x += 22
        draw.text((x, y), left, fill=(20, 20, 20), font=text_font)
        draw.text((width - 12 - draw.textlength(right, font=text_font), y), right, fill=(20, 20, 20), font=text_font)
        y += 22
    return img


def figure(vol: Volume3D, rows: list[Row], centre: tuple[int, int, int], et: int, title: str,
           legend_lines: list[Line], legend_width: int = 250, label_set: dict[str, int] | None = None) -> Image.Image:
    """Rows × (axial, coronal, sagittal) panels through ``centre``, a legend column, a title and a footer."""
    from PIL import Image, ImageDraw

    extent = max(n * s for n, s in zip(next(iter(vol.images.values()), next(iter(vol.labels.values()))).shape,
                                       vol.spacing))
    scale = PANEL_PX / extent
    sizes = [panel_size(plane(next(iter(vol.labels.values())), p, centre).shape, plane_spacing(vol.spacing, p), scale)
             for p in PLANES]
    head, label_w, gap = 30, 110, 6
    row_h = max(h for _, h in sizes) + 20
    width = label_w + sum(w for w, _ in sizes) + gap * 3 + legend_width
    height = head + row_h * len(rows) + 24
    canvas = Image.new("RGB", (width, max(height, head + 24 * len(legend_lines) + 40)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill=(0, 0, 0), font=font(16))
    spans = {k: window(v) for k, v in vol.images.items()}
    for r, row in enumerate(rows):
        y = head + r * row_h
        draw.text((8, y + row_h // 2 - 10), row.title, fill=(0, 0, 0), font=font(14))
        x = label_w
        for p, (w, h) in zip(PLANES, sizes):
            shape = plane(next(iter(vol.labels.values())), p, centre).shape
            gray = plane(vol.images[row.image], p, centre) if row.image else np.zeros(shape, np.float32)
            labels = plane(vol.labels[row.labels], p, centre) if row.labels else None
            changed = plane(vol.labels[row.changed], p, centre).astype(bool) if row.changed else None
            canvas.paste(panel(gray, labels, et, (w, h), changed=changed, label_set=label_set,
                               span=spans[row.image] if row.image else (0.0, 1.0)), (x, y + 16))
            if r == 0:
                draw.text((x, y), p, fill=(80, 80, 80), font=font(12))
            x += w + gap
    canvas.paste(_legend_panel(legend_lines, legend_width, canvas.height - head - 24), (x, head))
    draw.text((8, canvas.height - 20), FOOTER, fill=(120, 0, 0), font=font(12))
    return canvas


def volume_lines(volumes: dict[str, float], et: int, label_set: dict[str, int] | None = None) -> list[Line]:
    """Legend lines: each label's colour, name, value and volume, then the WT/TC/ET regions."""
    lines: list[Line] = [(None, "label", "volume")]
    for row in legend(et, label_set):
        colour = tuple(int(row["colour"][i:i + 2], 16) for i in (1, 3, 5))
        lines.append((colour, f"{row['name']} ({row['value']})", f"{volumes.get(row['name'], 0.0):.2f} mL"))
    lines.append((None, "", ""))
    for region, words in (("WT", "whole tumour"), ("TC", "tumour core"), ("ET", "enhancing")):
        if region in volumes:
            lines.append((None, f"{region} {words}", f"{volumes[region]:.2f} mL"))
    return lines


def preview_image(images: dict[str, np.ndarray], labels: np.ndarray, affine: np.ndarray,
                  spacing: tuple[float, ...], volumes: dict[str, float], et: int, title: str, *,
                  label_set: dict[str, int] | None = None) -> Image.Image:
    """The ``--preview`` picture: FLAIR and T1ce with the labels, three planes through the tumour's centre;
    ``label_set``: the names and values of the map's labels (None: NCR 1, ED 2, ET ``et``)."""
    require_pillow()
    shown: dict[str, np.ndarray] = ({m: images[m] for m in ("flair", "t1ce") if m in images}
                                    or dict(list(images.items())[:2]))
    vol = Volume3D.canonical(shown, {"pred": labels}, affine, spacing)
    centre = tumour_centre(vol.labels["pred"], next(iter(vol.images.values()), None))
    rows = [Row(f"{m.upper() if m != 't1ce' else 'T1ce'}", m, "pred") for m in vol.images]
    return figure(vol, rows, centre, et, title, volume_lines(volumes, et, label_set), label_set=label_set)


def comparison_image(image: tuple[str, np.ndarray] | None, first: tuple[str, np.ndarray],
                     second: tuple[str, np.ndarray], affine: np.ndarray, spacing: tuple[float, ...], et: int,
                     title: str, lines: list[Line], highlight_changes: bool = False) -> Image.Image:
    """Two label maps over one image (``(name, volume)``, or none: black), three planes each.

    The planes go through the largest tumour component of ``second`` (else of ``first``); with
    ``highlight_changes`` they go through the slices with most differing voxels instead, and those
    voxels are drawn in magenta on the second row.
    """
    require_pillow()
    (name_a, a), (name_b, b) = first, second
    labels = {"a": a, "b": b}
    if highlight_changes:
        labels["diff"] = (a != b).astype(np.uint8)
    images = {} if image is None else {image[0]: image[1]}
    vol = Volume3D.canonical(images, labels, affine, spacing)
    if highlight_changes and vol.labels["diff"].any():
        centre = busiest_slices(vol.labels["diff"].astype(bool))
    else:
        centre = tumour_centre(vol.labels["b"] if vol.labels["b"].any() else vol.labels["a"])
    shown = image[0] if image is not None else None
    rows = [Row(name_a, shown, "a"), Row(name_b, shown, "b", "diff" if highlight_changes else None)]
    return figure(vol, rows, centre, et, title, lines)
