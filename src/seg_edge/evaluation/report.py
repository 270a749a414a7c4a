"""Figures: one axial slice of the four modalities with label overlays (needs matplotlib)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seg_edge.card import MODALITIES
from seg_edge.errors import InputError
from seg_edge.runtime.io import find_modalities, read_labels, read_nifti
from seg_edge.runtime.regions import LABEL_HINT, find_label_file

# label → RGBA overlay colour (NCR red, ED green, ET yellow; ET=3 or 4)
COLOURS = {1: (0.9, 0.1, 0.1, 0.55), 2: (0.1, 0.8, 0.2, 0.45), 3: (1.0, 0.9, 0.1, 0.6), 4: (1.0, 0.9, 0.1, 0.6)}


def _overlay(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, colour in COLOURS.items():
        rgba[labels == value] = colour
    return rgba


def case_figure(case_dir: Path, out: Path, pred: Path | None = None, et: int = 4, title: str = "") -> int:
    """Save a PNG of the axial slice with most tumour; returns the slice index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = find_modalities(case_dir)
    label = find_label_file(case_dir)
    if label is None:
        raise InputError(f"{case_dir}: no ground truth to draw (expected {LABEL_HINT})")
    truth = read_labels(label, et)[0]
    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    panels = [(m.upper() if m != "t1ce" else "T1ce", np.asarray(read_nifti(files[m]).dataobj)[:, :, z])
              for m in MODALITIES]
    overlays = [("ground truth", truth[:, :, z])]
    if pred is not None:
        overlays.append(("prediction", read_labels(pred, et)[0][:, :, z]))
    fig, axes = plt.subplots(1, 4 + len(overlays), figsize=(3.2 * (4 + len(overlays)), 3.6))
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(np.rot90(img), cmap="gray")
        ax.set_title(name)
    for ax, (name, lab) in zip(axes[4:], overlays):
        ax.imshow(np.rot90(panels[2][1]), cmap="gray")
        ax.imshow(np.rot90(_overlay(lab)))
        ax.set_title(f"{name} on T1ce")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title or f"{case_dir.name}, axial slice {z} (synthetic case; red NCR, green ED, yellow ET)",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return z


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PNG of a case: 4 modalities + label overlays")
    parser.add_argument("case_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pred", type=Path)
    args = parser.parse_args(argv)
    z = case_figure(args.case_dir, args.out, args.pred)
    print(f"wrote {args.out} (slice {z})")


if __name__ == "__main__":
    main()
