"""The README's screenshot of the browser viewer, made in real headless Chromium (run by hand):
a ``seggradcam web`` server on the held-out demo case, a HiResCAM run of the demo model with its
faithfulness score, the page captured. Prints the server's start-up time and memory on the way.

    .venv/bin/python scripts/render_web_screenshots.py [--out docs/images/web_viewer.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "SegGradCAM")]

from browser import Browser, ViewerServer  # noqa: E402

from SegGradCAMLib.demo import data as demo_data  # noqa: E402

VIEWS_SHOWN = "[...document.querySelectorAll('img.image-display-area')].filter(i => i.naturalWidth > 0).length >= 4"


def memory_mb(pid: int) -> dict[str, int]:
    """Resident memory now and at its peak (MiB) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) // 1024, "peak_mb": int(fields["VmHWM"].split()[0]) // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "web_viewer.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        case = demo_data.write_case(demo_data.make_case(demo_data.EVAL_SEED, "colin27"), Path(folder))
        server = ViewerServer(*(str(case[channel]) for channel in demo_data.CHANNELS))
        browser = Browser()
        try:
            print(f"server ready in {server.ready_s:.1f} s; {memory_mb(server.process.pid)}")
            browser.open(server.url)
            browser.wait_for(VIEWS_SHOWN)
            browser.choose("#method", "hirescam")
            browser.choose("#classes", "edema")
            browser.click("#faithfulness")
            start = time.monotonic()
            browser.click("#run")
            browser.wait_for("document.querySelector('#progress-text').innerText.startsWith('done')", timeout=300)
            print(f"run shown after {time.monotonic() - start:.1f} s; {memory_mb(server.process.pid)}")
            time.sleep(2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(args.out)
            print(f"wrote {args.out}")
        finally:
            browser.close()
            server.stop()


if __name__ == "__main__":
    main()
