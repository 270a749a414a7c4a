"""``seg-edge predict STUDY_DIR`` on a synthetic DICOM study (``seg_edge.synth.dicom`` from the session's small raw
studies): the printed selection, the SEG read back by highdicom equal to the NIfTI label map on the reference
series' frames, the SR's volumes, dciodvfy on both, the viewer label files as ITK-SNAP and 3D Slicer parse
them, an enhanced multi-frame reference, series chosen by hand, and the refusals (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pytest.importorskip("SimpleITK", reason="the preprocess extra is not installed (pip install -e '.[preprocess]')")

from conftest import RAW_SEED  # noqa: E402

from seg_edge.dicom.detect import is_dicom_study  # noqa: E402
from seg_edge.dicom.seg import SEGMENTS, frames_from_nifti, labels_from_seg, write_seg  # noqa: E402
from seg_edge.dicom.series import scan  # noqa: E402
from seg_edge.dicom.sr import write_sr  # noqa: E402
from seg_edge.dicom.volume import read_series  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402
from seg_edge.runtime.labelfiles import itksnap_labels, slicer_color_table  # noqa: E402
from seg_edge.synth.dicom import write_dicom_study  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"
DCIODVFY = shutil.which("dciodvfy")
MODEL = dict(model_name="seg-edge-edge", model_version="test", model_sha256="ab" * 32)


def seg_edge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seg_edge", *map(str, args)], capture_output=True, text=True)


def truth(study: Path) -> dict:
    return json.loads((study.parent / "dicom_truth.json").read_text())


@pytest.fixture(scope="module")
def studies(raw_studies, tmp_path_factory) -> dict[str, Path]:
    """The first raw study as DICOM: Siemens-style classic (with localiser, DWI/ADC and an MPR) and GE-style
    enhanced multi-frame."""
    root = tmp_path_factory.mktemp("dicom_studies")
    return {"classic": write_dicom_study(raw_studies[0], root / "classic", vendor="siemens", seed=RAW_SEED),
            "enhanced": write_dicom_study(raw_studies[0], root / "enhanced", vendor="ge", enhanced=True,
                                          extras=False, seed=RAW_SEED)}


@pytest.fixture(scope="module")
def classic_run(studies, tmp_path_factory):
    """``seg-edge predict STUDY_DIR --json`` in a fresh process, once for the module."""
    out = tmp_path_factory.mktemp("dicom_out") / "study.nii.gz"
    result = seg_edge("predict", studies["classic"], "--out", out, "--json", "--threads", 1)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result.stderr


def reference_volume(study: Path, report: dict):
    uid = report["dicom"]["reference"]["series_instance_uid"]
    return read_series(next(s for s in scan(study) if s.series_uid == uid))


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_the_choice_is_printed_and_reported_without_the_patient(studies, classic_run):
    out, report, stderr = classic_run
    known = truth(studies["classic"])
    by_uid = {s["series_instance_uid"]: s for s in known["series"]}
    for modality in ("t1ce", "t1", "t2", "flair"):
        chosen = report["dicom"]["selection"][modality]
        series = by_uid[chosen["series_instance_uid"]]
        assert series["role"] == modality and chosen["series_number"] == series["series_number"]
        assert f"{modality}: #{series['series_number']} '{series['description']}' — name rule" in stderr, stderr
    assert report["selection"] == [line for line in stderr.splitlines() if " — " in line]
    assert {e["description"] for e in report["dicom"]["excluded"]} >= {"localizer"}
    assert report["inputs"]["t1ce"].startswith(f"series #{report['dicom']['selection']['t1ce']['series_number']}")
    for stage in ("scan_select", "read_dicom", "coregister", "inference", "seg_sr", "total"):
        assert stage in report["timings_s"], report["timings_s"]
    text = out.with_suffix("").with_suffix(".json").read_text()
    assert json.loads(text)["dicom"] == report["dicom"]
    for secret in (known["patient"]["name"], known["patient"]["id"]):
        assert secret not in text and secret not in stderr


def test_everything_is_written_as_one_set(classic_run):
    out, report, _ = classic_run
    stem = "study"
    expected = {f"{stem}{s}" for s in (".nii.gz", ".json", "_atlas.nii.gz", "_brain.nii.gz", "_labels.txt",
                                       "_labels.ctbl", "_seg.dcm", "_sr.dcm")}
    expected |= {f"{stem}_{m}_from_atlas.tfm" for m in ("flair", "t1", "t1ce", "t2")}
    assert {p.name for p in out.parent.iterdir()} == expected
    assert [Path(f).name for f in report["files"]][-1] == out.name  # the label map last
    assert report["dicom"]["seg"]["file"] == str(out.with_name("study_seg.dcm"))


def test_the_seg_reads_back_to_the_label_map_on_the_reference_frames(studies, classic_run):
    out, report, _ = classic_run
    volume = reference_volume(studies["classic"], report)
    assert volume.info.series_uid == truth(studies["classic"])["modalities"]["t1ce"]
    labels = nib.load(out)
    expected = frames_from_nifti(np.asarray(labels.dataobj), labels.affine, volume.datasets)
    assert (expected > 0).sum() > 100  # the model found a tumour: the comparison is not of empty maps
    seg = hd.seg.segread(out.with_name("study_seg.dcm"))
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    planes = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in volume.datasets],
                                               segment_numbers=[1, 2, 3])
    back = np.zeros(expected.shape, np.uint8)
    for k, value in enumerate((1, 2, report["labels"]["ET"])):
        back[planes[..., k] > 0] = value
    np.testing.assert_array_equal(back, expected)
    card_sha = report["model"]["source_sha256"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == report["model"]["name"] and algorithm.AlgorithmParameters == f"sha256={card_sha}"


def test_the_sr_holds_the_reported_volumes(classic_run):
    out, report, _ = classic_run
    sr = pydicom.dcmread(out.with_name("study_sr.dcm"))
    found = {}

    def walk(items, region=None):
        for item in items:
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier":
                region = item.TextValue.split(":")[0]
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                assert value.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
                found[region] = float(value.NumericValue)
            walk(item.get("ContentSequence", []), region)
    walk(sr.ContentSequence)
    assert set(found) == {"WT", "TC", "ET", "NCR", "ED"}
    for region, value in found.items():
        assert value == pytest.approx(report["volumes_ml"][region], abs=1e-3), region


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_seg_and_the_sr(classic_run):
    out, _, _ = classic_run
    for name in ("study_seg.dcm", "study_sr.dcm"):
        assert dciodvfy_errors(out.with_name(name)) == [], name


def parse_itksnap(text: str) -> dict[int, tuple]:
    """ITK-SNAP's ColorLabelTable::LoadFromFile, line by line: '#' in column 0 or an empty line is skipped;
    idx r g b (int) alpha (float) vis mesh (int) by stream extraction; then the text between the next two
    double quotes."""
    labels = {}
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        fields = line.split()
        idx, r, g, b = (int(v) for v in fields[:4])
        alpha, vis, mesh = float(fields[4]), int(fields[5]), int(fields[6])
        name = line.split('"')[1]
        labels[idx] = ((r, g, b), alpha, vis, mesh, name)
    return labels


def parse_slicer(text: str) -> dict[int, tuple]:
    """3D Slicer's vtkMRMLColorTableStorageNode (.ctbl): '#' lines and empty lines skipped; id, name (one word),
    r g b a (0-255) by stream extraction."""
    colours = {}
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        fields = line.split()
        assert len(fields) == 6, line
        colours[int(fields[0])] = (fields[1], tuple(int(float(v)) for v in fields[2:5]), int(float(fields[5])))
    return colours


@pytest.mark.parametrize("scheme,et", [("brats2021", 4), ("brats2023", 3)])
def test_viewer_files_parse_as_itksnap_and_slicer_read_them(scheme, et):
    snap = parse_itksnap(itksnap_labels(scheme, model="a model"))
    slicer = parse_slicer(slicer_color_table(scheme, model="a model"))
    assert sorted(snap) == sorted(slicer) == [0, 1, 2, et]
    assert snap[0][1:4] == (0.0, 0, 0) and slicer[0][2] == 0  # the background is clear in both
    for segment in SEGMENTS:
        value = segment.value(scheme)
        assert snap[value] == (segment.rgb, 1.0, 1, 1, segment.label)
        assert slicer[value] == ("_".join(segment.label.split()), segment.rgb, 255)


def test_the_viewer_files_beside_the_labels_have_the_segs_colours(classic_run):
    out, report, _ = classic_run
    snap = parse_itksnap(out.with_name("study_labels.txt").read_text())
    slicer = parse_slicer(out.with_name("study_labels.ctbl").read_text())
    seg = pydicom.dcmread(out.with_name("study_seg.dcm"))
    for item in seg.SegmentSequence:
        value = {1: 1, 2: 2, 3: report["labels"]["ET"]}[int(item.SegmentNumber)]
        lab = [int(v) for v in item.RecommendedDisplayCIELabValue]
        for rgb in (snap[value][0], slicer[value][1]):
            assert [int(v) for v in hd.color.CIELabColor.from_rgb(*rgb).value] == lab
        assert snap[value][4] == item.SegmentLabel
    assert report["viewer_files"]["itksnap"] == str(out.with_name("study_labels.txt"))


def test_an_enhanced_multiframe_reference_takes_a_seg_and_an_sr(studies, tmp_path):
    """write_seg/frames_from_nifti/labels_from_seg on one multi-frame instance (no model: labels drawn from the
    image's intensities on its NIfTI grid)."""
    series = next(s for s in scan(studies["enhanced"]) if s.series_uid == truth(studies["enhanced"])["modalities"]
                  ["t1ce"])
    volume = read_series(series)
    assert len(volume.datasets) == 1 and int(volume.datasets[0].NumberOfFrames) > 1
    image = np.asarray(volume.image.dataobj)
    labels_xyz = np.digitize(image, np.percentile(image, [70, 85, 95])).astype(np.uint8)
    labels_xyz[labels_xyz == 3] = 4
    frames = frames_from_nifti(labels_xyz, volume.image.affine, volume.datasets)
    assert frames.shape == (int(volume.datasets[0].NumberOfFrames), int(volume.datasets[0].Rows),
                            int(volume.datasets[0].Columns))
    assert set(np.unique(frames)) == {0, 1, 2, 4}
    seg = write_seg(frames, volume.datasets, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    back = labels_from_seg(hd.seg.segread(tmp_path / "seg.dcm"), volume.datasets, label_scheme="brats2021")
    np.testing.assert_array_equal(back, frames)
    # frame k of the source holds the plane at that frame's own position: compare one through pydicom alone
    k = 3
    ds = volume.datasets[0]
    position = [float(v) for v in ds.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0].ImagePositionPatient]
    voxel = np.rint(np.linalg.inv(volume.image.affine) @ np.array([-position[0], -position[1], position[2], 1.0]))
    assert frames[k, 0, 0] == labels_xyz[tuple(voxel[:3].astype(int))]
    write_sr({"NCR": 1.0, "ED": 2.0, "ET": 3.0, "TC": 4.0, "WT": 6.0}, seg, volume.datasets, out=tmp_path / "sr.dcm")
    if DCIODVFY is not None:
        assert dciodvfy_errors(tmp_path / "seg.dcm") == [] and dciodvfy_errors(tmp_path / "sr.dcm") == []


@pytest.mark.slow  # ~40-60 s: a second whole study through the pipeline (the fast suite runs the classic one)
def test_an_enhanced_study_with_series_chosen_by_hand(studies, tmp_path):
    study = studies["enhanced"]
    t1ce = truth(study)["modalities"]["t1ce"]
    out = tmp_path / "o" / "e.nii.gz"
    result = seg_edge("predict", study, "--series", f"t1ce={t1ce}", "--out", out, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("t1ce: #") and "chosen by hand (--series)" in line
               for line in result.stdout.splitlines()), result.stdout
    report = json.loads(out.with_name("e.json").read_text())
    assert report["dicom"]["selection"]["t1ce"]["series_instance_uid"] == t1ce
    volume = reference_volume(study, report)
    labels = nib.load(out)
    expected = frames_from_nifti(np.asarray(labels.dataobj), labels.affine, volume.datasets)
    back = labels_from_seg(hd.seg.segread(out.with_name("e_seg.dcm")), volume.datasets,
                           label_scheme=report["label_scheme"])
    np.testing.assert_array_equal(back, expected)
    assert (expected > 0).sum() > 100
    if DCIODVFY is not None:
        assert dciodvfy_errors(out.with_name("e_seg.dcm")) == [] and dciodvfy_errors(out.with_name("e_sr.dcm")) == []


def _second_flair(study: Path, dest: Path) -> Path:
    """A copy of ``study`` with its FLAIR twice (a new series of the same images): two equal candidates."""
    shutil.copytree(study, dest)
    flair = next(s for s in truth(study)["series"] if s["role"] == "flair")
    copy = dest / "0099"
    copy.mkdir()
    uid = pydicom.uid.generate_uid()
    for path in sorted((dest / flair["folder"]).iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, 99
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(copy / path.name, enforce_file_format=True)
    return dest


def _native_card(tmp_path: Path) -> Path:
    import dataclasses

    import onnx
    from onnx import helper

    from seg_edge.artifact import load_artifact
    from seg_edge.card import CARD_KEY

    card = load_artifact(SHIPPED).card
    model = onnx.load(str(SHIPPED))
    helper.set_model_props(model, {CARD_KEY: card.replace(inputs=dataclasses.replace(card.inputs,
                                                                                      space="native")).to_json()})
    onnx.save(model, str(tmp_path / "native.onnx"))
    return tmp_path / "native.onnx"


@pytest.mark.parametrize("case", ["ambiguous", "native card", "dicom and nifti", "series with nifti",
                                  "rules with nifti", "unknown series", "files with a study", "ray option"])
def test_refusals_are_one_line_exit_2_and_nothing_written(case, studies, raw_studies, tmp_path):
    study, extra = studies["classic"], []
    if case == "ambiguous":
        study, message = _second_flair(study, tmp_path / "two"), "2 equally good flair series"
    elif case == "native card":
        extra, message = ["--model", _native_card(tmp_path)], "takes inputs in native space"
    elif case == "dicom and nifti":
        study = tmp_path / "mixed"
        shutil.copytree(studies["classic"] / "0004", study / "dicom")
        shutil.copy(next(raw_studies[0].glob("*_t1ce.nii.gz")), study)
        message = "holds DICOM"
    elif case == "series with nifti":
        study, extra, message = raw_studies[0], ["--raw", "--series", "flair=1.2.3"], "--series apply to a DICOM"
    elif case == "rules with nifti":
        study, extra, message = raw_studies[0], ["--rules", tmp_path / "r.json"], "--rules apply to a DICOM"
    elif case == "ray option":
        extra, message = ["--actors", 2], "--actors apply to --engine ray"
    elif case == "unknown series":
        extra, message = ["--series", "flair=1.2.3.4"], "--series flair=1.2.3.4: no such series in the study"
    else:
        extra, message = ["--flair", next(raw_studies[0].glob("*_flair.nii.gz"))], "the input is a DICOM study"
    result = seg_edge("predict", study, "--out", tmp_path / "o", *extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_dicom_study_is_told_from_nifti_by_names_and_first_bytes(studies, raw_studies, tmp_path):
    assert is_dicom_study(studies["classic"]) and is_dicom_study(studies["enhanced"])
    assert not is_dicom_study(raw_studies[0]) and not is_dicom_study(next(raw_studies[0].glob("*.nii.gz")))
    nested = tmp_path / "export" / "a" / "b"
    shutil.copytree(studies["classic"] / "0004", nested)
    for i, path in enumerate(sorted(nested.iterdir())):
        path.rename(nested / f"IM{i}")  # no suffix, as PACS exports name them
    (tmp_path / "export" / "README.txt").write_text("not DICOM")
    assert is_dicom_study(tmp_path / "export")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(nested.iterdir()):
            z.write(path, f"x/{path.name}")
    assert is_dicom_study(archive)
    with zipfile.ZipFile(archive, "a") as z:
        z.write(next(raw_studies[0].glob("*_t1.nii.gz")), "x/t1.nii.gz")
    with pytest.raises(InputError, match="holds DICOM .* and NIfTI"):
        is_dicom_study(archive)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_dicom_study(empty) and not is_dicom_study(tmp_path / "missing")


@pytest.mark.parametrize(("scheme", "refused"), [("brats2021", False), ("brats2023", False),
                                                  ("brats2024-gli-post", True)])
def test_a_label_set_with_rc_is_refused_before_any_series_is_read(scheme, refused):
    """The SEG holds NCR, ED and ET: a post-treatment label set (RC) would be written under their names."""
    from types import SimpleNamespace

    from seg_edge.dicom.study import check_labels

    segmenter = SimpleNamespace(scheme=scheme, card=SimpleNamespace(name="m"))
    if not refused:
        check_labels(segmenter)  # type: ignore[arg-type]
        return
    with pytest.raises(InputError, match=r"labels brats2024-gli-post \(1 NETC, 2 SNFH, 3 ET, 4 RC\): the DICOM SEG "
                                         r"holds three segments"):
        check_labels(segmenter)  # type: ignore[arg-type]
