"""A real PACS round trip: Debian's Orthanc (its own process on loopback, tests/dicom/orthanc.py) stores a
synthetic study, sends it to ``seg-edge listen``, and receives the SEG and the SR back; read through Orthanc's
REST API, they hold the labels and volumes ``seg-edge predict`` gives on the same study.

First the fixture's own proofs, which need no node: pynetdicom's C-STORE into Orthanc, Orthanc's C-ECHO and
C-STORE to a pynetdicom SCP, and which SEG types Orthanc 1.10's C-STORE SCP takes (seg-edge's BINARY SEG and
SR: yes; a Label Map SEG: refused at association unless UnknownSopClassAccepted). Skipped where Orthanc or the
dicom extra is absent (CI installs both)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")

from mr_series_fixture import mr_series  # noqa: E402
from orthanc import (HOST, OrthancError, c_store, logs_on_failure, running_orthanc,  # noqa: E402
                     storage_scp)

from seg_edge.dicom.seg import write_seg  # noqa: E402
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
