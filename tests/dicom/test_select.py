"""Series selection (seg_edge.dicom.series/rules/select): header-only DICOM studies written with pydicom in
Siemens-, GE- and Philips-style naming with extra series (localisers, DWI/ADC, reformats, SWI, a derived
T1ce-like series), scanned from files and chosen by the shipped rules; ambiguous and incomplete studies refused
with their candidates listed; a site's rules file; zip input; non-DICOM files; two patients; choices by hand."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from seg_edge.dicom.rules import default_rules_path, load_rules, parse_rules  # noqa: E402
from seg_edge.dicom.select import parse_manual, print_selection, select, selection_lines  # noqa: E402
from seg_edge.dicom.series import scan, scan_study  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402

ROOT = "1.2.826.0.1.3680043.10.1234"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")


@dataclass(frozen=True)
class S:
    """One series to write: its description and the tags the rules read (times in ms)."""

    description: str
    te: float | None = None
    tr: float | None = None
    ti: float | None = None
    contrast: str = ""
    acq: str = "2D"
    n: int = 12
    image_type: tuple[str, ...] = ORIGINAL
    modality: str = "MR"
    protocol: str | None = None  # None: the description (Siemens and Philips copy it)
    iop: tuple[float, ...] = AXIAL
    expect: str = ""  # the modality this series must be chosen for


# timing templates (realistic values at 1.5-3 T)
T1_MPRAGE = dict(te=2.5, tr=2000.0, ti=900.0, acq="3D", n=30, iop=SAGITTAL)
T1_BRAVO = dict(te=3.0, tr=8.0, ti=450.0, acq="3D", n=30)
T1_TFE = dict(te=4.0, tr=8.0, acq="3D", n=30)
T1_SE = dict(te=10.0, tr=500.0)
T2_TSE = dict(te=100.0, tr=5000.0)
FLAIR_2D = dict(te=90.0, tr=9000.0, ti=2500.0)
FLAIR_3D = dict(te=390.0, tr=5000.0, ti=1800.0, acq="3D", n=30, iop=SAGITTAL)
GD = "Gadobutrol"
LOCALISER = dict(te=4.0, tr=9.0, n=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
DWI = dict(te=80.0, tr=6000.0, image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
ADC = dict(te=80.0, tr=6000.0, image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"))
MPR = dict(te=2.5, tr=2000.0, ti=900.0, acq="3D", n=25, image_type=("DERIVED", "SECONDARY", "MPR"), contrast=GD)

STUDIES: dict[str, list[S]] = {
    "siemens_3d": [
        S("localizer", **LOCALISER), S("t1_mprage_sag_p2_iso", **T1_MPRAGE, expect="t1"),
        S("t2_tse_tra_p2", **T2_TSE, expect="t2"), S("t2_tirm_tra_dark-fluid", **FLAIR_2D, expect="flair"),
        S("ep2d_diff_3scan_trace", **DWI), S("ep2d_diff_3scan_trace_ADC", **ADC),
        S("t1_mprage_sag_p2_iso_post", **T1_MPRAGE, contrast=GD, expect="t1ce"),
        S("t1_mprage_sag_p2_iso_post_MPR_tra", **MPR)],
    "siemens_2d": [
        S("AAHead_Scout_64ch-head-coil", **dict(LOCALISER, n=4, image_type=ORIGINAL)),
        S("t1_se_tra", **T1_SE, expect="t1"), S("t2_blade_tra", **T2_TSE, expect="t2"),
        S("t2_space_dark-fluid_sag_p2_iso", **FLAIR_3D, expect="flair"), S("t2_swi_tra_p2", te=20.0, tr=27.0),
        S("t1_se_tra_KM", **T1_SE, contrast=GD), S("t1_fl3d_tra_KM", te=4.8, tr=11.0, acq="3D", n=30,
                                                       contrast=GD, expect="t1ce")],
    "siemens_later_t1ce": [
        S("localizer", **LOCALISER), S("t1_mprage_tra", **dict(T1_MPRAGE, iop=AXIAL), expect="t1"),
        S("t2_tse_tra", **T2_TSE, expect="t2"), S("t2_tirm_tra_dark-fluid", **FLAIR_2D, expect="flair"),
        S("t1_mprage_tra_post", **dict(T1_MPRAGE, iop=AXIAL), contrast=GD),
        S("t1_mprage_tra_post_delayed", **dict(T1_MPRAGE, iop=AXIAL), contrast=GD, expect="t1ce")],
    "ge_3d": [
        S("3-PL LOC", **dict(LOCALISER, image_type=ORIGINAL), protocol="BRAIN TUMOR W WO"),
        S("Sag 3D BRAVO", **T1_BRAVO, protocol="BRAIN TUMOR W WO", expect="t1"),
        S("AX T2 FRFSE", **T2_TSE, protocol="BRAIN TUMOR W WO", expect="t2"),
        S("AX T2 FLAIR", **FLAIR_2D, protocol="BRAIN TUMOR W WO", expect="flair"),
        S("AX DWI 1000b", **DWI, protocol="BRAIN TUMOR W WO"),
        S("Apparent Diffusion Coefficient (mm2/s)", **ADC, protocol="BRAIN TUMOR W WO"),
        S("AX SWAN", te=25.0, tr=40.0, protocol="BRAIN TUMOR W WO"),
        # GE often leaves ContrastBolusAgent empty: only the name tells the post-contrast series apart
        S("Sag 3D BRAVO +C", **T1_BRAVO, protocol="BRAIN TUMOR W WO", expect="t1ce"),
        S("AX T1 POST REFORMAT", **dict(MPR, image_type=("DERIVED", "SECONDARY", "REFORMATTED")),
          protocol="BRAIN TUMOR W WO")],
    "ge_2d": [
        S("3-Plane Loc", **LOCALISER, protocol="ROUTINE BRAIN"),
        S("AX T1 FLAIR", te=12.0, tr=2200.0, ti=800.0, protocol="ROUTINE BRAIN", expect="t1"),
        S("AX T2 PROPELLER", **T2_TSE, protocol="ROUTINE BRAIN", expect="t2"),
        S("Sag CUBE T2 FLAIR", **FLAIR_3D, protocol="ROUTINE BRAIN", expect="flair"),
        S("AX T1 SE C+", **T1_SE, contrast=GD, protocol="ROUTINE BRAIN"),
        S("AX 3D FSPGR C+", te=3.0, tr=8.0, acq="3D", n=30, contrast=GD, protocol="ROUTINE BRAIN", expect="t1ce")],
    "ge_t1_post_gad": [
        S("ASSET Cal", te=1.0, tr=4.0, n=5, protocol="BRAIN"),
        S("AX T1", **T1_SE, protocol="BRAIN", expect="t1"), S("AX T2", **T2_TSE, protocol="BRAIN", expect="t2"),
        S("AX FLAIR", **FLAIR_2D, protocol="BRAIN", expect="flair"),
        S("AX T1 POST GAD", **T1_SE, protocol="BRAIN", expect="t1ce"),
        S("AX GRE", te=15.0, tr=600.0, protocol="BRAIN")],
    "philips_3d": [
        S("SURVEY", **dict(LOCALISER, image_type=ORIGINAL)), S("sT1W_3D_TFE", **T1_TFE, expect="t1"),
        S("T2W_TSE", **T2_TSE, expect="t2"), S("3D_Brain_VIEW_FLAIR", **FLAIR_3D, expect="flair"),
        S("DWI_SENSE", **DWI), S("dADC_DWI_SENSE", **ADC),
        S("sT1W_3D_TFE_GD", **T1_TFE, contrast=GD, expect="t1ce"),
        S("sT1W_3D_TFE_GD MPR tra", **dict(MPR, image_type=("DERIVED", "PRIMARY", "M"))),
        S("T2*W_FFE", te=18.0, tr=700.0)],
    "philips_2d": [
        S("Survey_SHC", **LOCALISER), S("T1W_SE", **T1_SE, expect="t1"), S("T2W_TSE_tra", **T2_TSE, expect="t2"),
        S("T2W_FLAIR", **FLAIR_2D, expect="flair"), S("T1W_SE +C", **T1_SE, contrast=GD),
        S("T1W_3D_FFE +C", te=4.6, tr=25.0, acq="3D", n=30, contrast=GD, expect="t1ce"),
        S("pCASL", te=16.0, tr=4000.0, n=20)],
    "tags_only": [  # descriptions that say nothing: the tag fallbacks decide
        S("Series A", te=2.5, tr=1900.0, ti=900.0, acq="3D", n=30, expect="t1"),
        S("Series B", te=95.0, tr=4500.0, expect="t2"), S("Series C", te=100.0, tr=9000.0, ti=2500.0, expect="flair"),
        S("Series D", te=2.5, tr=1900.0, ti=900.0, acq="3D", n=30, contrast=GD, expect="t1ce"),
        S("Series E", **LOCALISER)],
    "no_descriptions": [
        S("", te=11.0, tr=550.0, expect="t1"), S("", te=110.0, tr=6000.0, expect="t2"),
        S("", te=120.0, tr=10000.0, ti=2800.0, expect="flair"),
        S("", te=3.2, tr=7.5, acq="3D", n=30, contrast="MultiHance", expect="t1ce"), S("", **DWI)],
    "names_plus_tags": [  # some named, others only by tags; a non-MR instance (a screenshot) in the study
        S("t1_mprage_sag", **T1_MPRAGE, expect="t1"), S("axial 2", **T2_TSE, expect="t2"),
        S("t2_tirm_tra_dark-fluid", **FLAIR_2D, expect="flair"), S("axial 4", **T1_SE, contrast=GD, expect="t1ce"),
        S("Screen Save", modality="OT", n=1, image_type=("DERIVED", "SECONDARY"))],
    "derived_primary_vs_original": [  # ORIGINAL\PRIMARY beats DERIVED\PRIMARY (a motion-corrected copy)
        S("t1_mprage_sag", **T1_MPRAGE, expect="t1"), S("t2_tse_tra", **T2_TSE, expect="t2"),
        S("t2_tse_tra_MOCO", **T2_TSE, image_type=("DERIVED", "PRIMARY", "M", "MOCO")),
        S("t2_tirm_tra_dark-fluid", **FLAIR_2D, expect="flair"),
        S("t1_mprage_sag_post", **T1_MPRAGE, contrast=GD, expect="t1ce"),
        S("t1_se_tra_post", **T1_SE, contrast=GD)],
}

# study → (the modality refused, words the one-line refusal must hold besides the candidates' labels)
REFUSED: dict[str, tuple[list[S], str, list[str]]] = {
    "no_flair": ([S("localizer", **LOCALISER), S("t1_mprage_sag", **T1_MPRAGE), S("t2_tse_tra", **T2_TSE),
                  S("t1_mprage_sag_post", **T1_MPRAGE, contrast=GD), S("ep2d_diff", **DWI)],
                 "no flair series", ["#3 't2_tse_tra'", "#2 't1_mprage_sag'", "#5 'ep2d_diff' (diffusion"]),
    "t2_twice": ([S("t1_mprage_sag", **T1_MPRAGE), S("t2_tse_tra", **T2_TSE), S("t2_tse_tra", **T2_TSE),
                  S("t2_tirm_tra_dark-fluid", **FLAIR_2D), S("t1_mprage_sag_post", **T1_MPRAGE, contrast=GD)],
                 "2 equally good t2 series", ["#2 't2_tse_tra'", "#3 't2_tse_tra'"]),
    "no_t1": ([S("AX T2", **T2_TSE), S("AX FLAIR", **FLAIR_2D), S("AX T1 POST GAD", **T1_SE, contrast=GD),
               S("AX DWI", **DWI)],
              "no t1 series", ["#3 'AX T1 POST GAD' (t1ce)", "#1 'AX T2' (t2)"]),
    "two_flairs": ([S("T1W_SE", **T1_SE), S("T2W_TSE", **T2_TSE), S("T2W_FLAIR_tra", **FLAIR_2D),
                    S("T2W_FLAIR_cor", **dict(FLAIR_2D, iop=(1.0, 0, 0, 0, 0, -1.0))), S("T1W_SE_GD", **T1_SE,
                                                                                        contrast=GD)],
                   "2 equally good flair series", ["#3 'T2W_FLAIR_tra'", "#4 'T2W_FLAIR_cor'"]),
    "unlabelled_pd": ([S("Series 1", te=11.0, tr=550.0), S("Series 2", te=30.0, tr=3000.0),
                       S("Series 3", te=100.0, tr=9000.0, ti=2500.0), S("Series 4", te=3.0, tr=8.0, contrast=GD)],
                      "no t2 series", ["#2 'Series 2' (no rule)"]),
    "names_overlap": ([S("t1_t2_dual_echo", te=15.0, tr=3000.0), S("t1_se_tra", **T1_SE), S("t2_tse_tra", **T2_TSE),
                       S("t2_flair_tra", **FLAIR_2D), S("t1_se_tra_post", **T1_SE, contrast=GD)],
                      "series #1 't1_t2_dual_echo' fits the name rules of both t1 and t2", []),
}


def _instance(series: S, *, study: int, number: int, k: int, patient: str) -> Dataset:
    sop = f"{ROOT}.{study}.{number}.{k + 1}"
    sop_class = MRImageStorage if series.modality == "MR" else SecondaryCaptureImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.PatientName, ds.PatientID = "Doe^Jane", patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}.{study}", f"{ROOT}.{study}.{number}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = series.modality, number, k + 1
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.description if series.protocol is None else series.protocol
    ds.ImageType = list(series.image_type)
    if series.modality == "MR":
        ds.MRAcquisitionType = series.acq
        for keyword, value in (("EchoTime", series.te), ("RepetitionTime", series.tr),
                               ("InversionTime", series.ti)):
            if value is not None:
                setattr(ds, keyword, value)
        if series.contrast:
            ds.ContrastBolusAgent = series.contrast
        ds.ImageOrientationPatient = list(series.iop)
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.SliceThickness = 1.0 if series.acq == "3D" else 5.0
    return ds


def write_study(folder: Path, series: list[S], *, study: int = 1, patient: str = "PAT-0001",
                nested: bool = True) -> dict[str, str]:
    """Write each series' instances (no pixel data) under ``folder`` with opaque file names; return
    modality → the SeriesInstanceUID each expected series has."""
    expected = {}
    for number, spec in enumerate(series, start=1):
        where = folder / f"s{study}" / f"{number:03d}" if nested else folder
        where.mkdir(parents=True, exist_ok=True)
        for k in range(spec.n):
            ds = _instance(spec, study=study, number=number, k=k, patient=patient)
            ds.save_as(where / f"IM{study:02d}{number:02d}{k:04d}", enforce_file_format=True)
        if spec.expect:
            expected[spec.expect] = f"{ROOT}.{study}.{number}"
    return expected


@pytest.fixture(scope="module")
def rules():
    return load_rules()


@pytest.mark.parametrize("name", list(STUDIES))
def test_vendor_studies_chosen_right(tmp_path: Path, rules, name: str) -> None:
    expected = write_study(tmp_path, STUDIES[name], study=len(name))
    assert sorted(expected) == ["flair", "t1", "t1ce", "t2"]
    selection = select(scan(tmp_path), rules)
    assert {m: s.series_uid for m, s in selection.chosen.items()} == expected
    for modality, series in selection.chosen.items():
        assert series in selection.candidates[modality]
        assert selection.reasons[modality]


def test_twelve_studies_all_right_and_extras_excluded(tmp_path: Path, rules) -> None:
    """The acceptance count: every study in STUDIES (>= 12) chosen 100 % right, and the extra series each
    excluded for what they are."""
    assert len(STUDIES) >= 12
    right = 0
    for index, (name, series) in enumerate(STUDIES.items()):
        expected = write_study(tmp_path / name, series, study=100 + index)
        right += {m: s.series_uid for m, s in select(scan(tmp_path / name), rules).chosen.items()} == expected
    assert right == len(STUDIES)
    selection = select(scan(tmp_path / "siemens_3d"), rules)
    why = {s.description: reason for s, reason in selection.excluded}
    assert why["localizer"].startswith("localiser")
    assert why["ep2d_diff_3scan_trace"].startswith("diffusion")
    assert why["ep2d_diff_3scan_trace_ADC"].startswith("diffusion")
    assert why["t1_mprage_sag_p2_iso_post_MPR_tra"].startswith("derived")


def test_reasons_say_which_rule_and_preference(tmp_path: Path, rules) -> None:
    write_study(tmp_path, STUDIES["siemens_later_t1ce"])
    selection = select(scan(tmp_path), rules)
    assert selection.reasons["t1ce"].startswith("name rule: a T1 name with a contrast marker")
    assert "later series than #5 't1_mprage_tra_post'" in selection.reasons["t1ce"]
    write_study(tmp_path / "tags", STUDIES["tags_only"], study=2)
    selection = select(scan(tmp_path / "tags"), rules)
    assert selection.reasons["flair"].startswith("tag fallback: inversion recovery")
    assert selection.reasons["t1ce"].startswith("tag fallback: contrast agent recorded")


@pytest.mark.parametrize("name", list(REFUSED))
def test_ambiguous_or_incomplete_refused_with_candidates(tmp_path: Path, rules, name: str) -> None:
    series, words, labels = REFUSED[name]
    write_study(tmp_path, series)
    with pytest.raises(InputError) as info:
        select(scan(tmp_path), rules)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert words in message
    for label in labels:
        assert label in message
    assert "--series" in message


def test_overlapping_fallbacks_refused(tmp_path: Path) -> None:
    """A site's fallbacks that overlap (a T2 fallback without 'no_inversion') would take one series for two
    modalities: refused, not guessed."""
    write_study(tmp_path, [S("Series 1", **T1_SE), S("Series 2", **FLAIR_2D),
                           S("Series 3", **T1_SE, contrast=GD)])
    site = json.loads(default_rules_path().read_text())
    del site["modalities"]["t2"]["fallbacks"][0]["no_inversion"]
    with pytest.raises(InputError, match=r"series #2 'Series 2' was chosen for both t2 and flair"):
        select(scan(tmp_path), parse_rules(site, source="site.json"))


def test_print_selection_one_line_per_modality(tmp_path: Path, rules) -> None:
    write_study(tmp_path, STUDIES["ge_3d"])
    selection = select(scan(tmp_path), rules)
    out = io.StringIO()
    print_selection(selection, file=out)
    lines = out.getvalue().splitlines()
    assert lines == selection_lines(selection) and len(lines) == 4
    assert lines[0].startswith("t1ce: #8 'Sag 3D BRAVO +C' — name rule")
    assert any(line.startswith("flair: #4 'AX T2 FLAIR' — name rule: a FLAIR name") for line in lines)


def test_site_rules_replace_the_shipped_ones(tmp_path: Path, rules) -> None:
    """A site whose scanners name series by its own codes: the shipped rules fall back to the tags and take
    the later of two contrast T1 series, a research copy; the site's file names its codes and excludes the
    research series, and its choice is the one it asked for."""
    site_series = [S("NEU-A1", **T1_SE), S("NEU-A1-KM", **T1_SE, contrast=GD),
                   S("NEU-A1-KM-RES", **T1_SE, contrast=GD), S("NEU-B2", **T2_TSE), S("NEU-C3", **FLAIR_2D)]
    write_study(tmp_path / "study", site_series)
    shipped = select(scan(tmp_path / "study"), rules)
    assert shipped["t1ce"].number == 3 and shipped.reasons["t1ce"].startswith("tag fallback")
    site = json.loads(default_rules_path().read_text())
    site["exclude"].append({"why": "research series", "text": "-RES$"})
    site["modalities"]["t1ce"]["names"] = [{"why": "site code A1-KM", "text": "^NEU-A1-KM"}]
    site["modalities"]["t1"]["names"] = [{"why": "site code A1", "text": "^NEU-A1$"}]
    path = tmp_path / "site_rules.json"
    path.write_text(json.dumps(site))
    selection = select(scan(tmp_path / "study"), load_rules(path))
    assert {m: s.number for m, s in selection.chosen.items()} == {"t1ce": 2, "t1": 1, "t2": 4, "flair": 5}
    assert selection.reasons["t1ce"] == "name rule: site code A1-KM"
    assert [(s.number, why) for s, why in selection.excluded] == [(3, "research series")]
    # without its exclusion and with no later-series preference, the site's two KM series are a tie
    del site["exclude"][-1]
    site["modalities"]["t1ce"]["prefer"] = ["original_primary", "3d", "more_images"]
    path.write_text(json.dumps(site))
    tie = r"2 equally good t1ce series \(name rules, .*#2 'NEU-A1-KM'.*#3 'NEU-A1-KM-RES'"
    with pytest.raises(InputError, match=tie):
        select(scan(tmp_path / "study"), load_rules(path))


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["exclude"].append({"why": "x", "text": "(unclosed"}),
     "exclude[10].text: '(unclosed' is not a valid regex"),
    (lambda r: r["modalities"]["t1"]["names"][0].update(te=[20, 5]),
     "modalities.t1.names[0] is ['te']; expected keys among"),
    (lambda r: r["modalities"]["t2"]["fallbacks"][0].update(te_ms=[100, 60]),
     "te_ms is [100, 60]; expected [low, high]"),
    (lambda r: r["modalities"]["flair"].update(prefer=["newest"]), "modalities.flair.prefer is ['newest']"),
    (lambda r: r.update(version=2), "version is 2; expected 1"),
])
def test_bad_rules_file_named_in_one_line(tmp_path: Path, edit, words: str) -> None:
    data = json.loads(default_rules_path().read_text())
    edit(data)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as info:
        load_rules(path)
    assert str(info.value).startswith(str(path)) and words in str(info.value)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_rules(path)


def test_zip_input(tmp_path: Path, rules) -> None:
    expected = write_study(tmp_path / "study", STUDIES["philips_3d"])
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted((tmp_path / "study").rglob("*")):
            if path.is_file():
                out.write(path, str(path.relative_to(tmp_path)))
        out.writestr("study/README.txt", "not DICOM")
    result = scan_study(archive)
    assert result.skipped == 1
    selection = select(list(result.series), rules)
    assert {m: s.series_uid for m, s in selection.chosen.items()} == expected
    assert all(f.path == archive and f.member for f in selection["flair"].files)
    assert pydicom.dcmread(selection["flair"].files[0].open()).SeriesDescription == "3D_Brain_VIEW_FLAIR"
    # a .zip inside the folder given is read as part of it
    (tmp_path / "holder").mkdir()
    archive.rename(tmp_path / "holder" / "upload.zip")
    assert [s.series_uid for s in scan(tmp_path / "holder")] == [s.series_uid for s in result.series]


def test_not_a_study(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing: no such folder or \.zip"):
        scan(tmp_path / "missing")
    (tmp_path / "study.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(InputError, match=r"study\.zip: a file that is not a zip archive"):
        scan(tmp_path / "study.zip")


def test_non_dicom_files_skipped_and_counted(tmp_path: Path, rules) -> None:
    expected = write_study(tmp_path, STUDIES["siemens_2d"])
    (tmp_path / "README.txt").write_text("exported by a viewer")
    (tmp_path / "s1" / "empty").write_bytes(b"")
    (tmp_path / "s1" / "001" / "thumbs.db").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "DICOMDIR").write_bytes(_dicomdir_like())
    result = scan_study(tmp_path)
    assert result.skipped == 4
    assert sum(s.instances for s in result.series) == sum(s.n for s in STUDIES["siemens_2d"])
    assert {m: s.series_uid for m, s in select(list(result.series), rules).chosen.items()} == expected


def _dicomdir_like() -> bytes:
    """A DICOM file without a series (a media directory's header): DICOM, but not an image instance."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.999"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "SITE"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_two_patients_refused_without_their_ids(tmp_path: Path) -> None:
    write_study(tmp_path, STUDIES["ge_2d"], patient="MRN-778812")
    write_study(tmp_path / "other", [S("AX T2", **T2_TSE)], study=1, patient="MRN-100234")
    with pytest.raises(InputError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert "2 patients" in message and "MRN-" not in message and "Doe" not in message


def test_two_studies_refused(tmp_path: Path) -> None:
    write_study(tmp_path, STUDIES["ge_2d"], study=1)
    write_study(tmp_path, [S("AX T2", **T2_TSE)], study=2)
    with pytest.raises(InputError, match=r"holds 2 studies \(6 series, 1 series\); expected one study"):
        scan(tmp_path)


def test_empty_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match=r"no DICOM series found \(1 files skipped\)"):
        scan(tmp_path)
    write_study(tmp_path, [S("AX T2", **T2_TSE)], nested=False)
    good = next(tmp_path.glob("IM*")).read_bytes()
    (tmp_path / "IMcut").write_bytes(good[: len(good) - 3])  # inside the last element's value
    with pytest.raises(InputError, match=r"IMcut: unreadable DICOM header"):
        scan(tmp_path)


def test_manual_choice(tmp_path: Path, rules) -> None:
    series, _, _ = REFUSED["t2_twice"]
    write_study(tmp_path, series)
    found = scan(tmp_path)
    second_t2 = found[2].series_uid
    manual = parse_manual(f"t2={second_t2}")
    selection = select(found, rules, manual=manual)
    assert selection["t2"].number == 3 and selection.reasons["t2"] == "chosen by hand (--series)"
    assert selection["t1"].number == 1 and selection["flair"].number == 4 and selection["t1ce"].number == 5
    # a choice by hand against the rules is taken, and the reason says so
    write_study(tmp_path / "mpr", STUDIES["siemens_3d"], study=2)
    found = scan(tmp_path / "mpr")
    mpr = next(s for s in found if "MPR" in s.description)
    selection = select(found, rules, manual={"t1ce": mpr.series_uid})
    assert selection["t1ce"] == mpr and "would have excluded it: derived image" in selection.reasons["t1ce"]
    with pytest.raises(InputError, match=r"--series flair=1\.2\.3: no such series in the study; its series: #1"):
        select(found, rules, manual={"flair": "1.2.3"})


@pytest.mark.parametrize("text, words", [
    ("flair", "has no '=UID'"),
    ("flair=", "has no '=UID'"),
    ("dwi=1.2.3", "modality 'dwi'; expected one of flair, t1, t1ce, t2"),
    ("t1=1.2.3,t1=1.2.4", "t1 given twice"),
    ("t2=1.02.3", "is not a DICOM UID"),
    ("t2=1.2." + "3" * 70, "is not a DICOM UID"),
    ("t2=abc", "is not a DICOM UID"),
    ("t1=1.2.3,t2=1.2.3", "1.2.3 given for two modalities"),
    ("t1=1.2.3,,t2=1.2.4", "an empty entry"),
])
def test_parse_manual_checks(text: str, words: str) -> None:
    with pytest.raises(InputError, match=re.escape(words)):
        parse_manual(text)


def test_parse_manual_form() -> None:
    assert parse_manual(" flair=1.2.840.1 , t1ce=1.2.840.2") == {"flair": "1.2.840.1", "t1ce": "1.2.840.2"}


def test_enhanced_multiframe_header_read(tmp_path: Path, rules) -> None:
    """An enhanced MR instance keeps TE/TR/TI in its shared functional groups and counts its frames: one
    instance of 40 frames is a FLAIR by its tags, not a localiser."""
    write_study(tmp_path, [S("t1_se_tra", **T1_SE), S("t2_tse_tra", **T2_TSE),
                           S("t1_se_tra_post", **T1_SE, contrast=GD)], nested=False)
    ds = _instance(S("Series 9", n=1), study=1, number=9, k=0, patient="PAT-0001")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = 40
    del ds.ImageOrientationPatient
    shared = Dataset()
    shared.MREchoSequence = [Dataset()]
    shared.MREchoSequence[0].EffectiveEchoTime = 95.0
    shared.MRTimingAndRelatedParametersSequence = [Dataset()]
    shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime = 9000.0
    shared.MRModifierSequence = [Dataset()]
    shared.MRModifierSequence[0].InversionTimes = [2500.0]
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(SAGITTAL)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.save_as(tmp_path / "enhanced", enforce_file_format=True)
    flair = select(scan(tmp_path), rules)["flair"]
    assert (flair.number, flair.instances, flair.images, flair.orientation) == (9, 1, 40, "sagittal")
    assert (flair.te_ms, flair.tr_ms, flair.ti_ms) == (95.0, 9000.0, 2500.0)
