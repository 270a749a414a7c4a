"""The page in a real browser: Debian's chromium driven by Playwright against ``seg-edge serve``.

Upload a case's four files through the drop zone's file input, wait for the viewer, compare the
legend's volumes (counted in the browser from the label map NiiVue loaded) with the API's, and
look at the canvas' pixels: not blank, each label's colour present, the toggles and the opacity
slider change what is drawn. No request may leave the server (no CDN). The shipped model runs
on a small synthetic case (a few seconds; the tiny test model's labels would be noise).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import case_files

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run does)")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
SHIPPED = Path(__file__).resolve().parents[2] / "src" / "seg_edge" / "assets" / "seg-edge-edge.onnx"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    """``seg-edge serve`` in a subprocess (the console command's path), its base URL."""
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "seg_edge", "serve", "--model", str(SHIPPED), "--port",
                             str(port), "--data", str(tmp_path / "data"), "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "serve.log").read_text()) from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _api(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return json.loads(response.read())


def _label_pixels(png: bytes) -> dict[str, int]:
    """How many canvas pixels lean to each label colour (blended over grey)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {"NCR": int(((r - g > 40) & (r - b > 40)).sum()), "ED": int(((g - r > 40) & (g - b > 40)).sum()),
            "ET": int(((r - b > 40) & (g - b > 40) & (abs(r - g) < 40)).sum())}


def _canvas_stats(png: bytes) -> tuple[float, float]:
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(float)
    return float(grey.std()), float((grey > 20).mean())


def _legend(page) -> dict[str, float]:
    """Every legend row's volume: the labels (NCR, ED, ET) and the regions (TC, WT) in its footer."""
    return dict(page.eval_on_selector_all(
        "#legend tr[data-label]", "rows => rows.map(r => [r.dataset.label, Number(r.querySelector('[data-volume-ml]')"
                            ".dataset.volumeMl)])"))


def _segment(page, server: str, choose) -> tuple[str, dict[str, float]]:
    """Open the page, let ``choose(page)`` pick the files, submit, wait for the viewer: (job id, legend volumes)."""
    page.goto(server + "/")
    page.wait_for_function("window.segEdge && window.segEdge.state.model !== null")
    choose(page)
    assert page.is_enabled("#submit")
    page.click("#submit")
    page.wait_for_selector("#legend[data-ready=true]", timeout=120_000)
    page.wait_for_timeout(500)  # one more frame drawn
    return page.evaluate("window.segEdge.state.job.id"), _legend(page)


def _npy_stack(case: Path, out: Path, order: tuple[str, ...]) -> Path:
    import nibabel as nib

    files = case_files(case)
    np.save(out, np.stack([np.asarray(nib.load(str(files[m])).dataobj, dtype=np.float32) for m in order]))
    return out


def test_page_uploads_segments_and_shows_the_labels(server, cases_dir, tmp_path):
    case = sorted(p for p in cases_dir.iterdir() if p.is_dir())[0]
    stack = _npy_stack(case, tmp_path / "stack.npy", ("t2", "flair", "t1ce", "t1"))
    outside: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(server)
                                          else (outside.append(route.request.url), route.abort())))
        job_id, shown = _segment(page, server, lambda pg: pg.set_input_files(
            "#drop-input", [str(p) for p in case_files(case).values()]))  # the drop zone's input: sorted by name
        timings = page.inner_text("#timings")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        canvas = page.locator("#gl").screenshot()
        colours = _label_pixels(canvas)
        page.locator("#legend tr[data-label=ED] input").uncheck()
        page.wait_for_timeout(300)
        without_ed = _label_pixels(page.locator("#gl").screenshot())
        page.fill("#opacity", "0")
        page.dispatch_event("#opacity", "input")
        page.wait_for_timeout(300)
        faded_png = page.locator("#gl").screenshot()
        faded = _label_pixels(faded_png)
        page.select_option("#modality", "flair")
        page.wait_for_timeout(300)
        flair = page.locator("#gl").screenshot()

        def choose_stack(pg) -> None:
            pg.click("#tab-stack")
            pg.set_input_files("#file-stack", str(stack))
            order = ("t2", "flair", "t1ce", "t1")
            # nothing is pre-filled: the run button stays disabled until each volume is chosen, distinct
            assert [pg.input_value(f"#stack-order-{i}") for i in range(4)] == ["", "", "", ""]
            assert not pg.is_enabled("#submit")
            for i, m in enumerate(order[:3]):
                pg.select_option(f"#stack-order-{i}", m)
            pg.select_option("#stack-order-3", order[0])  # twice the same modality
            assert not pg.is_enabled("#submit") and "one volume only" in pg.inner_text("#error")
            pg.select_option("#stack-order-3", order[3])
            assert pg.is_hidden("#error")

        stack_id, stack_shown = _segment(page, server, choose_stack)
        stack_canvas = page.locator("#gl").screenshot()
        browser.close()
    assert errors == [] and outside == []
    api = _api(server, f"/v1/cases/{job_id}")
    assert api["status"] == "done"
    assert set(shown) == {"NCR", "ED", "ET", "TC", "WT"}  # issue 21: TC was missing from the page
    assert api["configuration"] and timings.endswith(api["configuration"])  # the configuration run, said
    for name in shown:
        assert shown[name] == pytest.approx(api["volumes_ml"][name], rel=1e-9, abs=1e-9), name
    std, lit = _canvas_stats(canvas)
    assert std > 15 and lit > 0.1, (std, lit)  # the canvas shows images, not a blank
    present = [name for name in ("NCR", "ED", "ET") if api["volumes_ml"][name] > 0.5]
    assert present and all(colours[name] > 30 for name in present), colours
    assert without_ed["ED"] < colours["ED"] / 10, (colours, without_ed)
    assert sum(faded.values()) < sum(colours.values()) / 10, (colours, faded)
    assert _canvas_stats(flair) != _canvas_stats(faded_png)  # the modality picker changed the image
    # the .npy stack (its images parsed in the page) gives the same labels as the four files
    assert _api(server, f"/v1/cases/{stack_id}")["volumes_ml"] == api["volumes_ml"]
    assert stack_shown == shown
    assert _canvas_stats(stack_canvas)[0] > 15 and sum(_label_pixels(stack_canvas).values()) > 30
