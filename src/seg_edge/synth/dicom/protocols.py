"""What a synthetic DICOM study's series are called and how they were acquired, per vendor and per sequence.

Names follow each vendor's usual conventions for a brain-tumour protocol (Siemens' ``t1_mprage_sag_p2_iso``
family, GE's ``Ax T2 FLAIR`` / ``Sag 3D T1 BRAVO`` / ``+C``, Philips' ``T1W_3D_TFE``), so that series selection
by description can be tested on the styles a site meets. Timings are typical 3 T values for each sequence
(MPRAGE/BRAVO/TFE, turbo spin echo T2, turbo inversion recovery FLAIR, single-shot EPI diffusion); a
selector that falls back on tags sees an MPRAGE's short inversion time (about 900 ms) next to a FLAIR's long one.
"""

from __future__ import annotations

from dataclasses import dataclass

VENDORS = ("siemens", "ge", "philips")
RAW_ROLES = ("t1", "t1ce", "t2", "flair")  # the raw study's series, in the raw writer's names
EXTRA_ROLES = ("localizer", "dwi", "adc", "mpr")
ORDER = ("localizer", "t1", "t2", "flair", "dwi", "adc", "t1ce", "mpr")  # acquisition order in the exam

# (SeriesDescription, ProtocolName) per vendor and role
NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "siemens": {
        "localizer": ("localizer", "localizer"),
        "t1": ("t1_mprage_sag_p2_iso", "t1_mprage_sag_p2_iso"),
        "t2": ("t2_tse_tra", "t2_tse_tra"),
        "flair": ("t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid"),
        "dwi": ("ep2d_diff_3scan_trace_p2_TRACEW", "ep2d_diff_3scan_trace_p2"),
        "adc": ("ep2d_diff_3scan_trace_p2_ADC", "ep2d_diff_3scan_trace_p2"),
        "t1ce": ("t1_mprage_tra_Gd", "t1_mprage_tra_Gd"),
        "mpr": ("t1_mprage_tra_Gd_MPR_cor", "t1_mprage_tra_Gd"),
    },
    "ge": {  # GE's ProtocolName is the exam protocol, the same for every series
        "localizer": ("3-Plane Loc", "BRAIN TUMOR"),
        "t1": ("Sag 3D T1 BRAVO", "BRAIN TUMOR"),
        "t2": ("Ax T2 FSE", "BRAIN TUMOR"),
        "flair": ("Ax T2 FLAIR", "BRAIN TUMOR"),
        "dwi": ("Ax DWI 1000b", "BRAIN TUMOR"),
        "adc": ("Apparent Diffusion Coefficient (mm2/s)", "BRAIN TUMOR"),
        "t1ce": ("Ax 3D T1 BRAVO +C", "BRAIN TUMOR"),
        "mpr": ("Cor 3D T1 BRAVO +C REFORMAT", "BRAIN TUMOR"),
    },
    "philips": {
        "localizer": ("Survey", "Survey SENSE"),
        "t1": ("sT1W_3D_TFE", "sT1W_3D_TFE SENSE"),
        "t2": ("T2W_TSE", "T2W_TSE SENSE"),
        "flair": ("FLAIR_longTR", "FLAIR_longTR SENSE"),
        "dwi": ("DWI", "DWI SENSE"),
        "adc": ("dADC", "DWI SENSE"),
        "t1ce": ("T1W_3D_TFE +GD", "T1W_3D_TFE +GD SENSE"),
        "mpr": ("T1W_3D_TFE +GD MPR COR", "T1W_3D_TFE +GD SENSE"),
    },
}

EQUIPMENT = {  # Manufacturer, ManufacturerModelName, SoftwareVersions
    "siemens": ("SIEMENS", "Skyra", "syngo MR E11"),
    "ge": ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "27\\LX\\MR Software release:DV26.0_R03"),
    "philips": ("Philips Medical Systems", "Ingenia", "5.6.1\\5.6.1.2"),
}


@dataclass(frozen=True, kw_only=True)
class Sequence:
    """An acquisition's MR tags (classic MR Image module names; the enhanced writer maps them to its groups)."""

    image_type: tuple[str, ...]
    scanning: tuple[str, ...]  # ScanningSequence
    variant: tuple[str, ...]  # SequenceVariant
    options: tuple[str, ...]  # ScanOptions
    acquisition: str  # MRAcquisitionType: 2D or 3D
    tr_ms: float
    te_ms: float
    ti_ms: float | None
    flip_deg: float
    echo_train: int
    contrast: str  # the enhanced MR frame's AcquisitionContrast
    contrast_agent: bool = False
    b_value: float | None = None


_MPRAGE = {"scanning": ("GR", "IR"), "variant": ("SK", "SP", "MP"), "options": ("IR",), "acquisition": "3D",
           "tr_ms": 2300.0, "te_ms": 2.32, "ti_ms": 900.0, "flip_deg": 8.0, "echo_train": 1, "contrast": "T1"}
_EPI = {"scanning": ("EP",), "variant": ("SK", "SP"), "options": ("FS",), "acquisition": "2D", "tr_ms": 5200.0,
        "te_ms": 84.0, "ti_ms": None, "flip_deg": 90.0, "echo_train": 1, "contrast": "DIFFUSION"}

SEQUENCES: dict[str, Sequence] = {
    "localizer": Sequence(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), scanning=("GR",), variant=("SP",),
                          options=(), acquisition="2D", tr_ms=8.6, te_ms=4.0, ti_ms=None, flip_deg=20.0,
                          echo_train=1, contrast="T1"),
    "t1": Sequence(image_type=("ORIGINAL", "PRIMARY", "M", "NORM"), **_MPRAGE),  # type: ignore[arg-type]
    "t2": Sequence(image_type=("ORIGINAL", "PRIMARY", "M", "NORM"), scanning=("SE",), variant=("SK", "SP", "OSP"),
                   options=("SAT1",), acquisition="2D", tr_ms=5000.0, te_ms=99.0, ti_ms=None, flip_deg=150.0,
                   echo_train=16, contrast="T2"),
    "flair": Sequence(image_type=("ORIGINAL", "PRIMARY", "M", "NORM"), scanning=("SE", "IR"),
                      variant=("SK", "SP", "MP", "OSP"), options=("IR",), acquisition="2D", tr_ms=9000.0,
                      te_ms=81.0, ti_ms=2500.0, flip_deg=150.0, echo_train=16, contrast="FLUID_ATTENUATED"),
    "dwi": Sequence(image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"), b_value=1000.0,
                    **_EPI),  # type: ignore[arg-type]
    "adc": Sequence(image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), b_value=1000.0,
                    **_EPI),  # type: ignore[arg-type]
    "t1ce": Sequence(image_type=("ORIGINAL", "PRIMARY", "M", "NORM"), contrast_agent=True,
                     **_MPRAGE),  # type: ignore[arg-type]
    "mpr": Sequence(image_type=("DERIVED", "SECONDARY", "MPR"), contrast_agent=True,
                    **_MPRAGE),  # type: ignore[arg-type]
}

CONTRAST_AGENT = "Gadobutrol"  # ContrastBolusAgent of the post-contrast series (Gadovist 0.1 mmol/kg)
CONTRAST_ML = 7.5  # a 75 kg patient's dose


def series_number(vendor: str, position: int) -> int:
    """The SeriesNumber of the ``position``-th series (0-based) of the exam: Philips counts in hundreds (101, 201,
    ...), Siemens and GE count 1, 2, ..."""
    return 100 * (position + 1) + 1 if vendor == "philips" else position + 1
