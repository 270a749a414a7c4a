"""Screenshots of the page for docs/: ``seg-edge serve`` with the shipped model, the example case uploaded
through the page in Debian's chromium (Playwright), the viewer once the labels are in.

    .venv/bin/python tools/page_screenshots.py --case examples/SynBraTS_3007_000 --out docs/

Writes serve_page.png (the whole page: upload, progress, the four-view viewer and legend) and
serve_viewer.png (the axial view alone on FLAIR), and prints the legend's and the API's volumes.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _start(data: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "seg_edge", "serve", "--port", str(port), "--data", str(data)])
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("seg-edge serve did not start")


def shoot(case: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    files = [str(p) for p in sorted(case.glob("*.nii.gz")) if not p.name.endswith("_seg.nii.gz")]
    with tempfile.TemporaryDirectory() as data:
        proc, base = _start(Path(data))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(base + "/")
                page.wait_for_function("window.segEdge && window.segEdge.state.model !== null")
                page.set_input_files("#drop-input", files)
                page.click("#submit")
                page.wait_for_selector("#legend[data-ready=true]", timeout=600_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "serve_page.png"), full_page=True)
                legend = page.eval_on_selector_all("#legend [data-volume-ml]", "els => els.map(e => "
                                                   "[e.closest('tr').dataset.label || 'WT', e.dataset.volumeMl])")
                job = page.evaluate("window.segEdge.state.job.id")
                page.select_option("#modality", "flair")
                page.select_option("#layout", "axial")
                page.wait_for_timeout(1000)
                page.locator(".viewer").screenshot(path=str(out / "serve_viewer.png"))
                browser.close()
            api = json.loads(urllib.request.urlopen(f"{base}/v1/cases/{job}").read())
            print("legend:", legend)
            print("API:   ", api["volumes_ml"], "timings", api["timings_s"])
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=Path("examples/SynBraTS_3007_000"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    shoot(args.case, args.out)


if __name__ == "__main__":
    main()
