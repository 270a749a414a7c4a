"""Label names and colours for viewers: an ITK-SNAP label description file and a 3D Slicer colour table.

Written beside a label map so that a viewer shows its values by name, in the colours the DICOM SEG gives
the same tissues (``seg_edge.dicom.seg`` takes them from ``TISSUES`` here):

- ``<case>_labels.txt``: ITK-SNAP's label description format (Segmentation → Import Label Descriptions).
  One line per label, ``IDX R G B A VIS MSH "LABEL"``: colours 0-255, opacity 0-1, visibility and mesh
  visibility 0/1, the name in double quotes; lines starting with ``#`` are comments.
- ``<case>_labels.ctbl``: 3D Slicer's colour table format (load it, then choose it as the label map's
  colour node). One line per value, ``ID NAME R G B A``, all colours 0-255, the name one word (Slicer's
  reader splits on white space: its own writer puts ``_`` for spaces); ``#`` lines are comments. Values
  between the labels (3 in brats2021) are left out: Slicer shows them transparent.

No DICOM and no torch here: ``predict --raw`` and the DICOM study both write these in their staged sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from seg_edge.runtime.regions import et_label, label_set

__all__ = ["TISSUES", "Tissue", "itksnap_labels", "slicer_color_table"]


@dataclass(frozen=True)
class Tissue:
    """A BraTS tissue label: its abbreviation, its name and its display colour (RGB 0-255)."""

    tissue: str
    name: str
    rgb: tuple[int, int, int]

    def value(self, label_scheme: str) -> int:
        """This tissue's value in a label map of ``label_scheme`` (NCR 1, ED 2, ET 4 or 3)."""
        return {"NCR": 1, "ED": 2, "ET": et_label(label_scheme)}[self.tissue]


# ITK-SNAP's and Slicer's usual BraTS colours: red core, green oedema, yellow enhancing rim.
TISSUES = (
    Tissue("NCR", "Necrotic tumour core (NCR)", (255, 0, 0)),
    Tissue("ED", "Peritumoural oedema (ED)", (0, 255, 0)),
    Tissue("ET", "Enhancing tumour (ET)", (255, 255, 0)),
)
# the labels other sets name differently or add (brats2024-gli-post): same colours for the same tissues
_OTHER_NAMES = {
    "NETC": Tissue("NETC", "Non-enhancing tumour core (NETC)", (255, 0, 0)),
    "SNFH": Tissue("SNFH", "Surrounding non-enhancing FLAIR hyperintensity (SNFH)", (0, 255, 0)),
    "RC": Tissue("RC", "Resection cavity (RC)", (0, 0, 255)),
}
_BACKGROUND = "Background"


def _labels(label_scheme: str) -> list[tuple[int, Tissue]]:
    """(value, tissue) of every label of ``label_scheme``'s set, by value."""
    known = {t.tissue: t for t in TISSUES} | _OTHER_NAMES
    return sorted((value, known[name]) for name, value in label_set(label_scheme).items())


def _about(label_scheme: str, model: str) -> str:
    et_label(label_scheme)  # an unknown scheme is refused here
    return f"seg-edge labels, scheme {label_scheme}" + (f", model {' '.join(model.split())}" if model else "")


def itksnap_labels(label_scheme: str, *, model: str = "") -> str:
    """The ITK-SNAP label description file's text for a label map of ``label_scheme``."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        f"# {_about(label_scheme, model)}",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields:",
        "#    IDX:   label value in the image",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description",
        "################################################",
        f"{0:5d} {0:5d} {0:4d} {0:4d} {0:8.2f} {0:2d} {0:2d}    \"Clear Label\"",
    ]
    for value, t in _labels(label_scheme):
        r, g, b = t.rgb
        lines.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {1:8.2f} {1:2d} {1:2d}    \"{t.name}\"")
    return "\n".join(lines) + "\n"


def slicer_color_table(label_scheme: str, *, model: str = "") -> str:
    """The 3D Slicer colour table file's (.ctbl) text for a label map of ``label_scheme``."""
    rows = [(0, _BACKGROUND, (0, 0, 0), 0)]
    rows += [(value, t.name, t.rgb, 255) for value, t in _labels(label_scheme)]
    lines = [f"# Color table file: {_about(label_scheme, model)}",
             f"# {len(rows)} values"]
    for value, name, (r, g, b), alpha in sorted(rows):
        # one word: Slicer reads the name with >>, so a space would end it
        lines.append(f"{value} {'_'.join(name.split())} {r} {g} {b} {alpha}")
    return "\n".join(lines) + "\n"
