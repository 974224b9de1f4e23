"""The browser viewer in a real headless Chromium (Debian's), against a real ``seggradcam web``
server process: the page loads, a run of the demo model on a bundled sample finishes through
the worker, heatmap pixels appear only after Run and go when the heatmap is hidden, a bad upload
shows its message and the page keeps working, Cancel stops the worker. One server for the
module; every server, browser and worker started here is stopped."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from browser import VIEWS_SHOWN, Browser, ViewerServer

RUN_ENDED = (
    "document.querySelector('#progress-text').innerText.startsWith('done') || "
    "!!document.querySelector('#error').offsetParent"
)


def worker_processes() -> list[str]:
    """Worker processes (``python -m SegGradCAMLib explain``) of this machine."""
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "SegGradCAMLib explain" in line]


@pytest.fixture(scope="module")
def server():
    viewer = ViewerServer()
    print(f"server ready in {viewer.ready_s:.1f} s")
    yield viewer
    assert viewer.stop() == 0, viewer.errors()[-2000:]
    assert worker_processes() == []


@pytest.fixture()
def page(server):
    browser = Browser()
    browser.open(server.url)
    browser.wait_for(VIEWS_SHOWN, timeout=60)
    yield browser
    browser.close()


def heat_pixels(page: Browser, expected: bool, timeout: float = 20.0) -> int:
    """Heatmap-coloured pixels in the slice views once they are (``expected``) or are not there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(max(n, 0) for n in page.warm_pixels()[:4])
        if (total > 200) == expected:
            return total
        time.sleep(0.3)
    raise AssertionError(f"heatmap pixels {'never appeared' if expected else 'stayed'}: {page.warm_pixels()}")


def test_run_shows_heatmaps_that_the_toggle_hides(page, server, tmp_path):
    page.choose("#sample", "Demo lesion case (t1c, flair)")
    page.wait_for("document.querySelector('#case').innerText.startsWith('Demo lesion case')", timeout=60)
    assert "(2 channel(s))" in page.text("#case")
    page.click("#show-segmentation")  # the label outlines are warm-coloured too: count the heatmap alone
    assert heat_pixels(page, expected=False) <= 200  # before Run: none
    page.choose("#method", "hirescam")
    page.click("#faithfulness")
    page.click("#run")
    page.wait_for(RUN_ENDED, timeout=300)
    assert page.text("#error") == "", page.text("#error")
    assert page.text("#progress-text").startswith("done")
    shown = heat_pixels(page, expected=True)
    assert "hirescam" in page.text("#legend") and "raw maximum" in page.text("#legend")
    assert "Faithfulness: better than random" in page.text("#legend")  # with its basis
    assert "this volume only" in page.text("#legend")
    page.click("#show-heatmap")
    assert heat_pixels(page, expected=False) < shown
    page.click("#show-heatmap")
    heat_pixels(page, expected=True)
    page.hover("img.image-display-area", 0)  # the axial view's centre: the values there
    probe = page.wait_for(
        "/heat \\d/.test(document.querySelector('#probe').innerText) && document.querySelector('#probe').innerText",
        timeout=15,
    )
    assert "image " in probe and "label " in probe
    downloads = page.js("[...document.querySelectorAll('.download')].map(b => b.textContent.trim())")
    assert {"segmentation.nrrd", "explain.json"} <= set(downloads)
    index = downloads.index("explain.json")
    report = page.download(f".download:nth-of-type({index + 1})", tmp_path, "explain.json")
    assert json.loads(report.read_text())["method"] == "hirescam"
    assert [c for c in page.console if c.get("exceptionDetails")] == []


def test_a_bad_upload_shows_its_message_and_the_page_keeps_working(page, server, tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    page.set_files("#upload", [str(bad)])
    message = page.wait_for(
        "document.querySelector('#error').offsetParent && document.querySelector('#error').innerText", timeout=30
    )
    assert "scan.nii.gz" in message and "Cannot read" in message
    page.choose("#sample", "KmeansTest T1 head")
    page.wait_for("document.querySelector('#case').innerText.startsWith('KmeansTest')", timeout=30)
    assert page.text("#error") == ""


def test_cancel_stops_the_worker_and_other_tabs_follow_the_run(page, server):
    page.choose("#sample", "Colin27 T1 head")
    page.wait_for("document.querySelector('#case').innerText.startsWith('Colin27')", timeout=30)
    page.choose("#model", "demo-lesions-unet2d")
    page.click("#run")  # one channel for a two-channel model: refused in the page
    message = page.wait_for(
        "document.querySelector('#error').offsetParent && document.querySelector('#error').innerText", timeout=30
    )
    assert "takes 2 input volume(s); got 1" in message, message
    page.choose("#model", "hdbet")
    page.click("#run")
    page.wait_for(
        "/(preprocess|windows|backward|forward)/.test(document.querySelector('#progress-text').innerText)", timeout=120
    )
    assert len(worker_processes()) >= 1
    other = Browser()  # a second tab: the same state, the run's progress, Run disabled
    try:
        other.open(server.url)
        other.wait_for(
            "document.querySelector('#progress-text') && "
            "/(preprocess|windows|backward|forward)/.test(document.querySelector('#progress-text').innerText)",
            timeout=60,
        )
        assert other.js("document.querySelector('#run').disabled") is True
    finally:
        other.close()
    page.click("#cancel")
    page.wait_for("document.querySelector('#progress-text').innerText === 'Cancelled'", timeout=30)
    deadline = time.monotonic() + 5
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_processes() == []
    assert page.js("document.querySelector('#run').disabled") is False
