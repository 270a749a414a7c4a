"""A study through the DICOM node against ``seg-edge predict`` on the same study (issue 23: a study through the
node ≤ 1.2 × the time of predict).

Full-size synthetic DICOM studies (``seg-edge synth --raw`` written as DICOM by ``seg_edge.synth.dicom``, with
the extra series a real study holds; synthetic, never patient data). For each study, in alternating order:

* **predict**: ``python -m seg_edge predict STUDY_DIR --out ... --json``, process start to process exit;
* **node**: the study stored in Orthanc (Debian's, a plain process on loopback, tests/dicom/orthanc.py), then
  timed from Orthanc's C-STORE request (REST ``/modalities/segedge/store``) until its REST API lists the SEG
  and the SR that ``seg-edge listen`` (running, model loaded) sent back. It includes the transfer, the quiet
  period the node waits before a study counts as complete, the segmentation and the return C-STORE.

The node's SEG is checked against predict's on the same study (same labels on the reference series' frames)
and its SR's volumes against predict's report, so the two timed paths did the same work. Also measured: the
study's transfer alone, Orthanc to a pynetdicom storage SCP, with Orthanc's default DCMTK networking (Nagle's
algorithm on) and with TCP_NODELAY=1 in its environment.

    python benchmarks/dicom_node.py --runs 3 --json docs/dicom_node.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "dicom"))

from node_roundtrip import (reference_datasets, results_in_orthanc, running_listener, seg_labels,  # noqa: E402
                            sr_volumes)
from orthanc import running_orthanc, storage_scp, wait_for  # noqa: E402

from seg_edge.runtime.machine import this_machine  # noqa: E402

VENDORS = ("siemens", "ge", "philips")
RESULT_TIMEOUT_S = 900.0


def make_studies(out: Path, n: int, seed: int, scale: float) -> list[Path]:
    """``n`` synthetic DICOM studies (one per vendor style in turn), each ``out/study_<i>/dicom``."""
    from seg_edge.synth.dicom import write_dicom_study
    from seg_edge.synth.raw import write_raw_study

    studies = []
    for i in range(n):
        raw = write_raw_study(out / "raw", seed, i, scale=scale)
        studies.append(write_dicom_study(raw, out / f"study_{i}", vendor=VENDORS[i % len(VENDORS)], seed=seed))
    return studies


def study_facts(study: Path) -> dict:
    """Files, megabytes, series and the StudyInstanceUID of a synthetic study (its dicom_truth.json)."""
    truth = json.loads((study.parent / "dicom_truth.json").read_text())
    files = [p for p in study.rglob("*") if p.is_file()]
    return {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
            "series": len(truth["series"]), "vendor": truth["vendor"], "study_uid": truth["study_instance_uid"]}


def run_predict(study: Path, out: Path, threads: int | None) -> tuple[float, dict]:
    """``seg-edge predict STUDY --json``: wall seconds, process to process, and its report."""
    command = [sys.executable, "-m", "seg_edge", "predict", str(study), "--out", str(out), "--json"]
    if threads:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"seg-edge predict {study}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return seconds, json.loads(done.stdout)


def run_node(pacs, listener, study_id: str, study_uid: str, out: Path) -> dict:
    """Orthanc sends the study to the node; seconds until the SEG and SR are listed in Orthanc."""
    start = time.perf_counter()
    job = pacs.send("segedge", [study_id])
    transfer = time.perf_counter() - start
    if job.get("FailedInstancesCount", 0):
        raise RuntimeError(f"Orthanc could not send {job['FailedInstancesCount']} instance(s) to the node")
    found = wait_for(lambda: results_in_orthanc(pacs, study_uid, listener), timeout=RESULT_TIMEOUT_S, interval=0.2,
                     what="the SEG and SR back in Orthanc",
                     explain=lambda: f"--- listen ---\n{listener.log_tail()}\n--- Orthanc ---\n{pacs.log_tail()}")
    seconds = time.perf_counter() - start
    seg = pacs.download(found["SEG"], out / "seg.dcm")
    sr = pacs.download(found["SR"], out / "sr.dcm")
    return {"seconds": seconds, "transfer_s": transfer, "instances": job.get("InstancesCount"), "seg": seg, "sr": sr}


def predict_seg(out: Path) -> Path:
    """The SEG predict wrote into ``out`` (``<study>_seg.dcm``)."""
    found = sorted(out.glob("*_seg.dcm"))
    if len(found) != 1:
        raise RuntimeError(f"{out}: {len(found)} *_seg.dcm files (expected the one predict writes)")
    return found[0]


def same_results(study: Path, node: dict, predict_out: Path, report: dict) -> dict:
    """The node's SEG and SR against predict's SEG and report on the same study."""
    source = reference_datasets(node["seg"], study)
    scheme = str(report.get("label_scheme", "brats2021"))
    node_labels = seg_labels(node["seg"], source, label_scheme=scheme)
    predict_labels = seg_labels(predict_seg(predict_out), source, label_scheme=scheme)
    volumes = sr_volumes(node["sr"])
    expected = report["volumes_ml"]
    return {"labels_equal": bool(np.array_equal(node_labels, predict_labels)),
            "tumour_voxels": int(np.count_nonzero(node_labels)),
            "volumes_equal": all(abs(volumes[k] - float(expected[k])) <= 1e-3 for k in expected),
            "volumes_ml": {k: round(v, 3) for k, v in sorted(volumes.items())}}


def transfer_only(study: Path, work: Path) -> dict:
    """Seconds for Orthanc to send the study to a pynetdicom storage SCP, without and with TCP_NODELAY=1."""
    out = {}
    for nodelay in (False, True):
        name = "tcp_nodelay" if nodelay else "orthanc_default"
        with running_orthanc(work / f"transfer_{name}", tcp_nodelay=nodelay) as pacs, \
                storage_scp(work / f"scp_{name}") as scp:
            study_id = pacs.upload_folder(study)[0]["ParentStudy"]
            pacs.add_modality("scp", aet="PYSCP", port=scp.port)
            start = time.perf_counter()
            job = pacs.send("scp", [study_id])
            out[name] = {"seconds": round(time.perf_counter() - start, 2), "instances": job["InstancesCount"],
                         "received": len(scp.stored)}
    return out


def median(values: list[float]) -> float:
    """The median, rounded to 0.1 s."""
    return round(statistics.median(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="studies, each through predict and through the node")
    parser.add_argument("--seed", type=int, default=2311)
    parser.add_argument("--scale", type=float, default=1.0, help="raw study scale (1.0: full size)")
    parser.add_argument("--studies", type=Path, help="reuse studies made before (folders study_<i>/dicom)")
    parser.add_argument("--quiet-seconds", type=float, default=5.0, help="the node's quiet period")
    parser.add_argument("--threads", type=int, default=None, help="--threads for predict (and the node)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = this_machine()
    with tempfile.TemporaryDirectory(prefix="seg-edge-dicom-node-") as tmp:
        work = Path(tmp)
        if args.studies:
            studies = [args.studies / f"study_{i}" / "dicom" for i in range(args.runs)]
        else:
            start = time.perf_counter()
            studies = make_studies(work / "studies", args.runs, args.seed, args.scale)
            print(f"{len(studies)} studies written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        facts = [study_facts(s) for s in studies]
        transfer = transfer_only(studies[0], work)
        print(f"transfer alone: {transfer}", file=sys.stderr)
        runs = []
        extra = ["--threads", str(args.threads)] if args.threads else []
        with running_orthanc(work / "orthanc") as pacs, \
                running_listener(work / "node", pacs, quiet_seconds=args.quiet_seconds, extra=extra) as listener:
            ids = [pacs.upload_folder(s)[0]["ParentStudy"] for s in studies]
            for i, (study, fact) in enumerate(zip(studies, facts)):
                row: dict = {"study": i, "vendor": fact["vendor"], "order": "predict first" if i % 2 == 0 else
                             "node first"}
                predict_out = work / f"predict_{i}"
                node_out = work / f"node_{i}"
                node_out.mkdir()
                steps = ["predict", "node"] if i % 2 == 0 else ["node", "predict"]
                for step in steps:
                    if step == "predict":
                        row["predict_s"], report = run_predict(study, predict_out, args.threads)
                    else:
                        node = run_node(pacs, listener, ids[i], fact["study_uid"], node_out)
                        row["node_s"], row["transfer_s"] = node["seconds"], node["transfer_s"]
                row.update(same_results(study, node, predict_out, report))
                row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                print(json.dumps(row), file=sys.stderr)
                runs.append(row)
    predict_s = median([r["predict_s"] for r in runs])
    node_s = median([r["node_s"] for r in runs])
    record = {
        "what": "one full-size synthetic DICOM study: seg-edge predict STUDY_DIR (process to process) vs the "
                "node (Orthanc's C-STORE to seg-edge listen until Orthanc lists the SEG and SR sent back)",
        "machine": {"cpu": machine.cpu, "flags": list(machine.flags), "cores": machine.cores},
        "orthanc": "Debian 1.10 (tests/dicom/orthanc.py; TCP_NODELAY=1 in its environment for the node runs)",
        "studies": [{k: v for k, v in f.items() if k != "study_uid"} for f in facts],
        "quiet_seconds": args.quiet_seconds, "threads": args.threads, "runs": runs,
        "predict_median_s": predict_s, "node_median_s": node_s, "ratio": round(node_s / predict_s, 2),
        "ratio_without_quiet": round((node_s - args.quiet_seconds) / predict_s, 2),
        "all_labels_equal": all(r["labels_equal"] for r in runs),
        "all_volumes_equal": all(r["volumes_equal"] for r in runs),
        "transfer_only": transfer,
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
