"""A real PACS round trip: Debian's Orthanc (its own process on loopback, tests/dicom/orthanc.py) stores a
synthetic study, sends it to ``seg-edge listen``, and receives the SEG and the SR back; read through Orthanc's
REST API, they hold the labels and volumes ``seg-edge predict`` gives on the same study.

First the fixture's own proofs, which need no node: pynetdicom's C-STORE into Orthanc, Orthanc's C-ECHO and
C-STORE to a pynetdicom SCP, and which SEG types Orthanc 1.10's C-STORE SCP takes (seg-edge's BINARY SEG and
SR: yes; a Label Map SEG: refused at association unless UnknownSopClassAccepted). Skipped where Orthanc or the
dicom extra is absent (CI installs both)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")

from conftest import RAW_SEED  # noqa: E402
from mr_series_fixture import mr_series  # noqa: E402
from node_roundtrip import (reference_datasets, results_in_orthanc, running_listener, seg_labels,  # noqa: E402
                            sr_volumes)
from orthanc import (HOST, OrthancError, c_store, logs_on_failure, running_orthanc,  # noqa: E402
                     storage_scp, wait_for)

from seg_edge.dicom.seg import frames_from_nifti, write_seg  # noqa: E402
from seg_edge.dicom.sr import write_sr  # noqa: E402

MODEL = dict(model_name="seg-edge-edge", model_version="0.1.0+card3", model_sha256="0123456789abcdef" * 4)
SEG_STORAGE, LABEL_MAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def pacs(tmp_path, request):
    """Orthanc for one test; its log is written to the terminal when the test fails."""
    with running_orthanc(tmp_path / "orthanc") as orthanc, logs_on_failure(request, {"Orthanc log": orthanc.log_tail}):
        yield orthanc


@pytest.fixture
def mr_files(tmp_path) -> list[Path]:
    """20 tilted MR slices (tests/dicom/mr_series_fixture.py) written one file each."""
    files = []
    for i, ds in enumerate(mr_series()):
        path = tmp_path / "mr" / f"IM{i:04d}"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def test_orthanc_runs_on_loopback_without_plugins_and_is_gone_after(tmp_path):
    with running_orthanc(tmp_path / "o") as orthanc:
        system = orthanc.get("/system")
        assert system["Version"].startswith("1.") and system["DicomAet"] == "ORTHANC"
        assert (system["HttpPort"], system["DicomPort"]) == (orthanc.http_port, orthanc.dicom_port)
        assert [p for p in orthanc.get("/plugins") if p != "explorer.js"] == []  # explorer.js: the built-in UI
        assert str(tmp_path) in orthanc.log_tail(200)  # its storage is the test's, not /var/lib/orthanc
        assert _port_open(orthanc.dicom_port) and _port_open(orthanc.http_port)
    assert orthanc.process.returncode is not None
    assert not _port_open(orthanc.dicom_port) and not _port_open(orthanc.http_port)


def test_orthanc_is_stopped_when_the_test_fails_inside(tmp_path):
    with pytest.raises(RuntimeError, match="inside"), running_orthanc(tmp_path / "o") as orthanc:
        raise RuntimeError("a failure inside the test")
    assert orthanc.process.returncode is not None and not _port_open(orthanc.http_port)


def test_a_series_sent_with_pynetdicom_c_store_is_in_orthanc(pacs, mr_files, tmp_path):
    assert c_store(mr_files, port=pacs.dicom_port, called_aet=pacs.aet) == [0] * len(mr_files)
    first = pydicom.dcmread(mr_files[0])
    study = pacs.find_study(first.StudyInstanceUID)
    assert study is not None and pacs.find_study("1.2.3.4") is None
    by_modality = pacs.series_by_modality(study)
    assert list(by_modality) == ["MR"] and len(by_modality["MR"]) == 1
    instances = pacs.instances(by_modality["MR"][0]["ID"])
    assert len(instances) == len(mr_files)
    stored = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
    back = pydicom.dcmread(pacs.download(stored[first.SOPInstanceUID], tmp_path / "back.dcm"))
    assert np.array_equal(back.pixel_array, first.pixel_array) and back.PatientID == first.PatientID


def test_orthanc_echoes_and_sends_a_study_to_a_pynetdicom_scp(pacs, mr_files, tmp_path):
    uploaded = pacs.upload_folder(mr_files[0].parent)
    assert {a["Status"] for a in uploaded} == {"Success"}
    with storage_scp(tmp_path / "scp") as scp:
        pacs.add_modality("pyscp", aet="PYSCP", port=scp.port)
        pacs.echo("pyscp")
        assert scp.echoes == 1
        job = pacs.send("pyscp", [uploaded[0]["ParentStudy"]])
    assert (job["InstancesCount"], job["FailedInstancesCount"]) == (len(mr_files), 0)
    sent = {str(pydicom.dcmread(p).SOPInstanceUID) for p in mr_files}
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in scp.stored} == sent
    # and a modality that does not answer is an error, not a silent success
    pacs.add_modality("nobody", aet="NOBODY", port=scp.port)
    with pytest.raises(OrthancError, match="echo"):
        pacs.echo("nobody")


def test_orthanc_takes_seg_edges_binary_seg_and_sr_over_c_store(pacs, mr_files, tmp_path):
    source = [pydicom.dcmread(p) for p in mr_files]
    labels = np.zeros((len(source), 64, 64), np.uint8)
    labels[6:12, 20:44, 20:44], labels[8:10, 28:36, 28:36] = 2, 4
    seg = write_seg(labels, source, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
    write_sr({"WT": 2.0, "TC": 0.5, "ET": 0.5, "NCR": 0.0, "ED": 1.5}, seg, source, out=tmp_path / "sr.dcm")
    assert c_store(mr_files, port=pacs.dicom_port, called_aet=pacs.aet) == [0] * len(mr_files)
    assert c_store([tmp_path / "seg.dcm", tmp_path / "sr.dcm"], port=pacs.dicom_port, called_aet=pacs.aet) == [0, 0]
    by_modality = pacs.series_by_modality(pacs.find_study(source[0].StudyInstanceUID))
    assert sorted(by_modality) == ["MR", "SEG", "SR"]
    (seg_instance,) = pacs.instances(by_modality["SEG"][0]["ID"])
    back = pydicom.dcmread(pacs.download(seg_instance["ID"], tmp_path / "seg_back.dcm"))
    assert back.SOPClassUID == SEG_STORAGE and back.SegmentationType == "BINARY"
    (sr_instance,) = pacs.instances(by_modality["SR"][0]["ID"])
    assert pydicom.dcmread(pacs.download(sr_instance["ID"], tmp_path / "sr_back.dcm")).SOPClassUID == \
        COMPREHENSIVE_3D_SR


# The Lua script docs/DICOM.md gives for forwarding a study to seg-edge as it arrives (Orthanc's own hook): MR
# only, so the SEG and SR that come back are not sent to the node again (a whole-study forward on
# OnStableStudy would send the study back each time its results arrive, and segment it again).
FORWARD_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'MR' then
    SendToModality(instanceId, 'segedge')
  end
end
"""


def test_the_documented_lua_script_forwards_mr_instances_and_not_the_results(tmp_path, request, mr_files):
    lua = tmp_path / "forward.lua"
    lua.write_text(FORWARD_LUA)
    with storage_scp(tmp_path / "node", aet="SEGEDGE") as node, \
            running_orthanc(tmp_path / "o", modalities={"segedge": ["SEGEDGE", HOST, node.port]},
                            lua_scripts=[lua]) as pacs, logs_on_failure(request, {"Orthanc log": pacs.log_tail}):
        assert c_store(mr_files, port=pacs.dicom_port, called_aet=pacs.aet, calling_aet="SCANNER") == [0] * 20
        wait_for(lambda: len(node.stored) == len(mr_files), timeout=60, what="Orthanc forwarding the MR series",
                 explain=pacs.log_tail)
        source = [pydicom.dcmread(p) for p in mr_files]
        labels = np.zeros((len(source), 64, 64), np.uint8)
        labels[6:12, 20:44, 20:44] = 2
        seg = write_seg(labels, source, label_scheme="brats2021", out=tmp_path / "seg.dcm", **MODEL)
        write_sr({"WT": 1.0, "TC": 0.0, "ET": 0.0, "NCR": 0.0, "ED": 1.0}, seg, source, out=tmp_path / "sr.dcm")
        assert c_store([tmp_path / "seg.dcm", tmp_path / "sr.dcm"], port=pacs.dicom_port, called_aet=pacs.aet,
                       calling_aet="SEGEDGE") == [0, 0]
        stored = pacs.series_by_modality(pacs.find_study(source[0].StudyInstanceUID))
        assert sorted(stored) == ["MR", "SEG", "SR"]
        time.sleep(2.0)  # a forward would have begun: each MR one began within 0.1 s of its store (Orthanc's log)
    assert len(node.stored) == len(mr_files)
    assert {pydicom.dcmread(p).Modality for p in node.stored} == {"MR"}


def _label_map_seg(source: list, out: Path) -> Path:
    """A LABELMAP SEG (highdicom, Label Map Segmentation Storage) of two segments on ``source``."""
    labels = np.zeros((len(source), 64, 64), np.uint8)
    labels[6:12, 20:44, 20:44], labels[8:10, 28:36, 28:36] = 1, 2
    concept = hd.sr.CodedConcept
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=f"segment {k}",
        segmented_property_category=concept("49755003", "SCT", "Morphologically Abnormal Structure"),
        segmented_property_type=concept("79654002", "SCT", "Edema"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for k in (1, 2)]
    seg = hd.seg.Segmentation(
        source_images=source, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    seg.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("promiscuous", [False, True], ids=["default", "UnknownSopClassAccepted"])
def test_orthanc_1_10_refuses_a_label_map_seg_at_association_unless_told_to_accept_unknown_classes(
        tmp_path, request, mr_files, promiscuous):
    source = [pydicom.dcmread(p) for p in mr_files]
    label_map = _label_map_seg(source, tmp_path / "labelmap.dcm")
    assert str(pydicom.dcmread(label_map).SOPClassUID) == LABEL_MAP_SEG_STORAGE
    with running_orthanc(tmp_path / "o", unknown_sop_class_accepted=promiscuous) as pacs, \
            logs_on_failure(request, {"Orthanc log": pacs.log_tail}):
        version = pacs.get("/system")["Version"]
        if not version.startswith("1.10."):
            pytest.skip(f"measured on Orthanc 1.10 (Debian 12); this is {version}")
        if promiscuous:
            assert c_store([label_map], port=pacs.dicom_port, called_aet=pacs.aet) == [0]
        else:
            # DCMTK 3.6.7 does not know the Label Map SOP class: its presentation context is rejected in the
            # association negotiation, so no C-STORE is ever sent (pynetdicom then aborts the association)
            with pytest.raises(OrthancError, match="Abstract Syntax Not Supported"):
                c_store([label_map], port=pacs.dicom_port, called_aet=pacs.aet)
            assert "no valid presentation contexts" in pacs.log_tail(20)
        # over REST (POST /instances) Orthanc stores it either way: the refusal is its DICOM server's
        assert pacs.upload_file(label_map)["Status"] in ({"AlreadyStored"} if promiscuous else {"Success"})


# --- the round trip: Orthanc -> seg-edge listen -> Orthanc, against seg-edge predict on the same study ---------

ROUND_TRIP_TIMEOUT_S = 400.0  # the node segments a half-scale study in ~40 s alone; predict runs beside it


@pytest.fixture(scope="module")
def dicom_study(raw_studies, tmp_path_factory) -> Path:
    """The first small raw study (conftest) as a Siemens-style DICOM study with its extra series (localiser,
    DWI/ADC, an MPR): ~400 files."""
    from seg_edge.synth.dicom import write_dicom_study

    return write_dicom_study(raw_studies[0], tmp_path_factory.mktemp("roundtrip"), vendor="siemens", seed=RAW_SEED)


def _predict(study: Path, out: Path) -> subprocess.Popen:
    """``seg-edge predict STUDY_DIR --threads 1 --json`` started: it runs beside the node, one core each (the
    same --threads for both, so that they compute the same thing)."""
    return subprocess.Popen([sys.executable, "-m", "seg_edge", "predict", str(study), "--out", str(out), "--json",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_study_sent_by_orthanc_to_seg_edge_listen_comes_back_with_predicts_labels(dicom_study, tmp_path, request):
    truth = json.loads((dicom_study.parent / "dicom_truth.json").read_text())
    n_files = sum(1 for p in dicom_study.rglob("*") if p.is_file())
    predict = _predict(dicom_study, tmp_path / "predict")
    try:
        with running_orthanc(tmp_path / "orthanc") as pacs, \
                running_listener(tmp_path / "node", pacs, quiet_seconds=1.0, extra=["--threads", "1"]) as node, \
                logs_on_failure(request, {"Orthanc log": pacs.log_tail, "seg-edge listen output": node.log_tail}):
            uploaded = pacs.upload_folder(dicom_study)
            assert {a["Status"] for a in uploaded} == {"Success"} and len(uploaded) == n_files
            start = time.perf_counter()
            job = pacs.send("segedge", [uploaded[0]["ParentStudy"]])  # Orthanc's C-STORE SCU, as a PACS forwards
            sent = time.perf_counter() - start
            assert (job["InstancesCount"], job["FailedInstancesCount"]) == (n_files, 0)
            found = wait_for(lambda: results_in_orthanc(pacs, truth["study_instance_uid"], node),
                             timeout=ROUND_TRIP_TIMEOUT_S, interval=0.5, what="the SEG and SR back in Orthanc",
                             explain=lambda: f"--- listen ---\n{node.log_tail()}\n--- Orthanc ---\n{pacs.log_tail()}")
            back = time.perf_counter() - start
            seg = pacs.download(found["SEG"], tmp_path / "back" / "seg.dcm")
            sr = pacs.download(found["SR"], tmp_path / "back" / "sr.dcm")
            node_log = node.log_path.read_text(errors="replace")
        out, err = predict.communicate(timeout=ROUND_TRIP_TIMEOUT_S)
    finally:
        if predict.poll() is None:
            predict.kill()
            predict.wait()
    assert predict.returncode == 0, err
    report = json.loads(out)
    print(f"round trip: {n_files} instances sent in {sent:.1f} s, SEG and SR back in Orthanc after {back:.1f} s")

    # what came back is a BINARY SEG and a TID 1500 SR of the same study, on the T1ce series the rules chose
    header = pydicom.dcmread(seg, stop_before_pixels=True)
    assert (header.SOPClassUID, header.SegmentationType) == (SEG_STORAGE, "BINARY")
    assert pydicom.dcmread(sr, stop_before_pixels=True).SOPClassUID == COMPREHENSIVE_3D_SR
    assert header.StudyInstanceUID == truth["study_instance_uid"]
    assert header.ReferencedSeriesSequence[0].SeriesInstanceUID == truth["modalities"]["t1ce"]

    # the node's labels are predict's: its SEG, and its NIfTI label map taken onto the same frames
    source = reference_datasets(seg, dicom_study)
    scheme = report.get("label_scheme", "brats2021")
    labels = seg_labels(seg, source, label_scheme=scheme)
    assert np.count_nonzero(labels) > 1000  # a tumour was found: equal empty maps would prove nothing
    (predict_seg,) = (tmp_path / "predict").glob("*_seg.dcm")
    assert np.array_equal(labels, seg_labels(predict_seg, source, label_scheme=scheme))
    nifti = nib.load(report["output"])
    assert np.array_equal(labels, frames_from_nifti(np.asarray(nifti.dataobj), nifti.affine, source))

    # and its SR's volumes are predict's report's
    volumes = sr_volumes(sr)
    assert set(volumes) == set(report["volumes_ml"]) == {"WT", "TC", "ET", "NCR", "ED"}
    for region, value in report["volumes_ml"].items():
        assert volumes[region] == pytest.approx(value, abs=1e-3), region
    (predict_sr,) = (tmp_path / "predict").glob("*_sr.dcm")
    assert sr_volumes(predict_sr) == pytest.approx(volumes, abs=1e-9)

    # nothing about the patient in the node's log
    assert truth["patient"]["name"] not in node_log and truth["patient"]["id"] not in node_log
