"""The browser viewer's findings in a real headless Chromium, against a real ``seggradcam web``
server and its CLI worker: one ``--findings`` run of the 2D demo model on the demo case (one
class, to keep it short) shared by the module's tests. The findings list matches findings.json;
a click on a row shows that finding's own map (its file in the legend) with the views centred on
it; the overlays offer the probability and entropy maps; "Why here?" runs ``--point`` where a
slice view is clicked: far from any finding its one-line message is shown, on the finding that
finding is shown."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from browser import Browser, ViewerServer, viewer_page
from test_web_viewer import RUN_ENDED, heat_pixels

CLASS = "necrotic_core"  # the demo case's smallest class: one finding, a short run
ROWS = "[...document.querySelectorAll('.finding-row')].map(r => [...r.cells].map(c => c.innerText.trim()))"
OVERLAYS = "[...document.querySelectorAll('.v-overlay .v-list-item')].map(e => e.innerText.trim())"


def workers_of(server: ViewerServer) -> list[str]:
    """The server's worker processes (``python -m SegGradCAMLib explain``, its children)."""
    listing = subprocess.run(
        ["ps", "-ww", "-o", "args=", "--ppid", str(server.process.pid)], capture_output=True, text=True
    ).stdout
    return [line for line in listing.splitlines() if "SegGradCAMLib explain" in line]


@pytest.fixture(scope="module")
def page():
    """The viewer after a findings run (its server and workers stopped after)."""
    with viewer_page() as (server, browser):
        browser.choose("#sample", "Demo lesion case (t1c, flair)")
        browser.wait_for("document.querySelector('#case').innerText.startsWith('Demo lesion case')", timeout=60)
        browser.choose("#classes", CLASS)
        browser.click("#findings")
        browser.click("#run")
        browser.wait_for(RUN_ENDED, timeout=300)
        assert browser.text("#error") == "", browser.text("#error")
        print(f"findings run: {browser.text('#progress-text')}")
        browser.click("#show-segmentation")  # the label outlines are warm-coloured too: count the maps alone
        yield browser
        assert workers_of(server) == []  # every run's worker ended with it


def findings_json(page: Browser, folder) -> dict:
    """The run's findings.json, downloaded through the page."""
    names = page.js("[...document.querySelectorAll('.download')].map(b => b.textContent.trim())")
    return json.loads(
        page.download(f".download:nth-of-type({names.index('findings.json') + 1})", folder, "findings.json").read_text()
    )


def probe_ras(page: Browser) -> list[float]:
    """The RAS point the probe shows for the mouse at the axial view's centre."""
    page.hover("img.image-display-area", 0)
    text = page.wait_for("(/RAS \\(.*?\\)/.exec(document.querySelector('#probe').innerText) || [''])[0]", timeout=15)
    return [float(v) for v in re.findall(r"-?\d+", text)]


def test_the_list_matches_findings_json_and_a_click_shows_that_findings_map(page, tmp_path):
    report = findings_json(page, tmp_path)
    rows = page.wait_for(ROWS, timeout=10)
    assert [row[:3] for row in rows] == [
        [str(f["id"]), f["class"], f"{f['volume_ml']:.2f}"] for f in report["findings"]
    ]
    assert rows[0][3] == f"{report['findings'][0]['probability_mean']:.2f}"
    occlusion = report["findings"][0]["reliance"]["occlusion"]
    assert rows[0][4] == " · ".join(f"{name} {occlusion[name]:.2f}" for name in report["channels"])
    finding = report["findings"][0]
    file = next(iter(finding["layers"].values()))["file"]
    assert page.text("#legend").startswith(f"{CLASS} — ")  # the class's map before the click
    page.click(".finding-row")
    legend = page.wait_for(f"document.querySelector('#legend').innerText.includes({json.dumps(file)})", timeout=15)
    assert legend and page.text("#legend").startswith(f"finding {finding['id']}, {CLASS} ({file}) — ")
    assert "bg-primary" in page.js("document.querySelector('.finding-row').className")
    chosen = page.js("document.querySelector('#overlay').closest('.v-field').innerText")
    assert chosen.endswith(f"finding {finding['id']}, {CLASS}"), chosen
    heat_pixels(page, expected=True)
    ras = probe_ras(page)  # the axial view is centred on the finding's centroid, through its slice
    assert all(abs(a - b) <= 1.5 for a, b in zip(ras, finding["centroid_ras"])), (ras, finding["centroid_ras"])


def test_the_overlays_offer_the_probability_and_entropy_maps(page):
    page.choose("#overlay", "entropy")
    overlays = page.js(OVERLAYS)
    assert {f"probability {CLASS}", "probability background", "entropy"} <= set(overlays), overlays
    page.wait_for("document.querySelector('#legend').innerText.startsWith('entropy: the predictive entropy')", 15)
    page.choose("#overlay", f"probability {CLASS}")
    page.wait_for(f"document.querySelector('#legend').innerText.startsWith('probability of {CLASS}: ')", 15)
    page.choose("#overlay", "heatmap (chosen above)")
    page.wait_for(f"document.querySelector('#legend').innerText.startsWith('{CLASS} — ')", 15)


def test_why_here_runs_at_the_clicked_point(page):
    page.click(".finding-row")  # the views centred on the finding
    page.click("#why-here")
    page.wait_for("document.querySelector('#message').innerText.startsWith('Why here? Click a point')", timeout=15)
    page.click_at("img.image-display-area", 0, 0.15, 0.15)  # the axial view's corner: far from the finding
    message = page.wait_for(
        "document.querySelector('#error').offsetParent && document.querySelector('#error').innerText", timeout=120
    )
    assert "no finding within 10 mm" in message and f"finding 1 ({CLASS})" in message, message
    assert "\n" not in message.strip() and "Traceback" not in message
    assert page.js(ROWS)[0][1] == CLASS  # the shown run's outputs stay
    page.click_at("img.image-display-area", 0)  # its centre: the finding's centroid
    page.wait_for("!document.querySelector('#error').offsetParent", timeout=15)  # cleared: the run started
    page.wait_for(RUN_ENDED, timeout=120)
    assert page.text("#error") == "", page.text("#error")
    assert re.fullmatch(
        r"Why here\? \(-?\d+, -?\d+, -?\d+\) (lies in|is \d+\.\d mm from) finding 1\.", page.text("#message")
    )
    assert page.text("#legend").startswith(f"finding 1, {CLASS} (")
    assert [row[:2] for row in page.js(ROWS)] == [["1", CLASS]]
    assert [c for c in page.console if c.get("exceptionDetails")] == []
