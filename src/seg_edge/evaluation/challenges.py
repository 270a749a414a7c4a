"""The BraTS challenges' scoring rules as data: label sets, regions, instances, thresholds, penalties.

Two published definitions are implemented (``evaluation.lesionwise``), each rule taken from its source:

- ``panoptica``: the current official package, brats-evaluation 0.0.10 (configs
  ``brats_evaluation/configs/config_<name>.yaml``, CSV from ``metrics_parser.py``) over panoptica 2.1.x:
  26-connected components, one-to-one matching maximising Dice (``MaxBipartiteMatching``, Dice ≥ 1e-6),
  per-instance Dice, NSD and HD95, global binary Dice, NSD and HD95, TP/FP/FN, precision, recall, F1.
- ``brats2023``: the 2023 lesion-wise code (rachitsaluja/BraTS-2023-Metrics,
  ``brats_2023_metrics/surface_distance/brats_metrics.py``): ground-truth lesions merged through a dilation,
  lesions at or under a volume threshold dropped, unmatched lesions scored Dice 0 / HD95 374.

``legacy`` is seg-edge's own whole-volume table (``evaluation.metrics``), kept unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seg_edge.errors import InputError

# brats-evaluation metrics_parser: "diameter of the cube in SRI space", used for inf HD95 and missing subjects.
PANOPTICA_HD95_PENALTY = 373.0
# BraTS-2023-Metrics brats_metrics.py: inf HD95 and every unmatched lesion.
BRATS2023_HD95_PENALTY = 374.0


@dataclass(frozen=True)
class Region:
    """One scored region: its column key and the label values merged into it."""

    key: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Challenge:
    """Everything one challenge's evaluation needs, with no code path of its own."""

    name: str
    title: str
    method: str                       # "panoptica" | "brats2023" | "legacy"
    labels: dict[int, str]            # label value → name (0 is background, never listed)
    regions: tuple[Region, ...]
    source: str
    parser: str = "seg"               # panoptica: which brats-evaluation CSV parser ("seg" or "mets")
    matching_threshold: float = 1e-6  # panoptica: Dice a pair needs to be matched (>=)
    large_volume_mm3: float = 20.0    # mets parser: lesions with volume >= this are "large"
    detection_dice: float = 0.1       # mets parser: a lesion counts as detected with Dice >= this
    dilation: int = 0                 # brats2023: dilation iterations (18-connected element) of GT lesions
    volume_threshold_mm3: float = 0.0  # brats2023: GT lesions with volume <= this are left out
    aliases: tuple[str, ...] = field(default=())

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels))

    @property
    def region_keys(self) -> tuple[str, ...]:
        return tuple(r.key for r in self.regions)


_GLI_LABELS = {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}
_CORE3 = (Region("et", (3,)), Region("tc", (1, 3)), Region("wt", (1, 2, 3)))
_PANOPTICA_SRC = "brats-evaluation 0.0.10 brats_evaluation/configs/config_{}.yaml; panoptica 2.1.7"
_B2023_SRC = "rachitsaluja/BraTS-2023-Metrics brats_2023_metrics/surface_distance/brats_metrics.py ({})"
_B2023_REGIONS = (Region("WT", (1, 2, 3)), Region("TC", (1, 3)), Region("ET", (3,)))
_B2023_LABELS = {1: "NCR", 2: "ED", 3: "ET"}

CHALLENGES: dict[str, Challenge] = {c.name: c for c in (
    Challenge("gli", "BraTS glioma (pre- and post-treatment)", "panoptica", _GLI_LABELS,
              (Region("snfh", (2,)), Region("et", (3,)), Region("netc", (1,)), Region("rc", (4,)),
               Region("tc", (1, 3)), Region("wt", (1, 2, 3))), _PANOPTICA_SRC.format("gli")),
    Challenge("mets", "BraTS brain metastases", "panoptica", _GLI_LABELS,
              (Region("et", (3,)), Region("rc", (4,)), Region("tc", (1, 3)), Region("wt", (1, 2, 3))),
              _PANOPTICA_SRC.format("mets") + "; metrics_parser.parse_mets_results", parser="mets"),
    Challenge("ped", "BraTS paediatric tumours", "panoptica", {1: "ET", 2: "NETC", 3: "CC", 4: "ED"},
              (Region("et", (1,)), Region("netc", (2,)), Region("cc", (3,)), Region("ed", (4,)),
               Region("tc", (1, 2, 3)), Region("wt", (1, 2, 3, 4))), _PANOPTICA_SRC.format("ped")),
    Challenge("men", "BraTS meningioma, pre-operative", "panoptica", {1: "NETC", 2: "SNFH", 3: "ET"},
              _CORE3, _PANOPTICA_SRC.format("MenPre")),
    Challenge("men-rt", "BraTS meningioma radiotherapy (GTV)", "panoptica", {1: "GTV"},
              (Region("gtv", (1,)),), _PANOPTICA_SRC.format("MenRT")),
    Challenge("goat", "BraTS generalizability across tumours (GoAT)", "panoptica", {1: "NETC", 2: "SNFH", 3: "ET"},
              _CORE3, _PANOPTICA_SRC.format("GoAT")),
    Challenge("brats2023", "BraTS 2023 lesion-wise (glioma parameters)", "brats2023", _B2023_LABELS,
              _B2023_REGIONS, _B2023_SRC.format("BraTS-GLI: dilation 3, threshold 50"),
              dilation=3, volume_threshold_mm3=50.0),
)}


def get_challenge(name: str) -> Challenge:
    """The challenge called ``name``; InputError listing the known ones otherwise."""
    if name not in CHALLENGES:
        raise InputError(f"challenge '{name}' (expected one of {', '.join(CHALLENGES)} or legacy)")
    return CHALLENGES[name]

