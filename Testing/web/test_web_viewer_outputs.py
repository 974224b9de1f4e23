"""The browser viewer opened on a folder ``seggradcam explain`` wrote (its own server, in real
headless Chromium): the inputs explain.json names as the background, the heatmaps shown."""

from __future__ import annotations

import json

from browser import Browser, ViewerServer
from test_web_viewer import VIEWS_SHOWN, heat_pixels

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data


def test_an_output_folder_opens_with_its_background(tmp_path):
    case = demo_data.write_case(demo_data.make_case(demo_data.EVAL_SEED, "colin27"), tmp_path / "case")
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *(str(case[c]) for c in demo_data.CHANNELS),
                "--model",
                "demo-lesions-unet2d",
                "--out",
                str(out),
                "--quiet",
                "--no-overview",
            ]
        )
        == 0
    )
    viewer = ViewerServer(str(out))
    browser = Browser()
    try:
        browser.open(viewer.url)
        browser.wait_for(VIEWS_SHOWN, timeout=60)
        assert browser.text("#case") == "out (2 channel(s))"  # the inputs explain.json names, as the background
        assert browser.text("#message") == ""
        report = json.loads((out / "explain.json").read_text())
        assert report["classes"][0]["name"] in browser.text("#legend") and report["method"] in browser.text("#legend")
        browser.click("#show-segmentation")  # the outlines are warm-coloured too: count the heatmap alone
        heat_pixels(browser, expected=True)
    finally:
        browser.close()
        assert viewer.stop() == 0
