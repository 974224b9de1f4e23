"""Real headless Chromium (Debian's ``/usr/bin/chromium``) driven through the DevTools protocol,
and the viewer's server as a real process: for the browser tests and the screenshot script.

No playwright and no downloaded browser: a small DevTools client over aiohttp (a trame
dependency), synchronous for tests. Flags as DESIGN.md gives them for this environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
]
REPO = Path(__file__).resolve().parents[1]

VIEWS_SHOWN = "[...document.querySelectorAll('img.image-display-area')].filter(i => i.naturalWidth > 0).length >= 4"
# Warm (Inferno red/orange/yellow) pixels per slice view, read from the images in the page
WARM_PIXELS = """(() => [...document.querySelectorAll('img.image-display-area')].map(img => {
  if (!img.naturalWidth) return -1;
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let warm = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 120 && d[i] - d[i + 2] > 70 && d[i] >= d[i + 1]) warm++;
  return warm;
}))()"""


class ViewerServer:
    """``seggradcam web`` in its own process session, on a free port; :meth:`stop` ends it and its workers."""

    def __init__(self, *arguments: str, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "SegGradCAM"), os.environ.get("PYTHONPATH", "")]),
        }
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "SegGradCAMLib", "web", "--port", "0", *arguments],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.url = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.url is None:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            found = re.search(r"open (http://\S+/)", line)
            self.url = found.group(1) if found else None
        if self.url is None:
            self.stop()
            raise RuntimeError(f"the viewer did not start: {self.errors()[-2000:]}")
        self.ready_s = time.monotonic() - self.started

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> int:
        """Ctrl-C as a user would; the whole process group is killed if it does not end in 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


class Browser:
    """One headless Chromium with one page, driven synchronously over the DevTools protocol."""

    def __init__(self) -> None:
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile.name}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for line in self.process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                break
        else:
            raise RuntimeError("Chromium did not start")
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)
        self.console: list[dict] = []  # the page's exceptions and console calls seen so far
        self.http = None
        self.ws = self.loop.run_until_complete(self._connect(found.group(1)))
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            page=True,
        )
        self.send("DOM.enable", page=True)
        self.send("Runtime.enable", page=True)

    async def _connect(self, url: str):
        self.http = aiohttp.ClientSession()
        return await self.http.ws_connect(url, max_msg_size=0)

    async def _send(self, message: dict) -> dict:
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await self.ws.receive(timeout=60)).data)
            if reply.get("id") == message["id"]:
                return reply
            if reply.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled"):
                self.console.append(reply["params"])

    def send(self, method: str, params: dict | None = None, page: bool = False) -> dict:
        message = {"id": next(self.ids), "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        reply = self.loop.run_until_complete(self._send(message))
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, page=True)

    def js(self, expression: str):
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, page=True
        )
        return result["result"].get("value")

    def text(self, selector: str) -> str:
        return self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    def click(self, selector: str) -> None:
        if not self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.click(); return !!e; }})()"
        ):
            raise AssertionError(f"no element {selector}")

    def choose(self, selector: str, item: str) -> None:
        """Pick ``item`` in the Vuetify select ``selector`` (opens its menu, clicks the entry)."""
        self.js(
            f"document.querySelector({json.dumps(selector)}).closest('.v-field').dispatchEvent("
            "new MouseEvent('mousedown', {bubbles: true}))"
        )
        self.wait_for(
            "[...document.querySelectorAll('.v-overlay .v-list-item')]"
            f".some(e => e.innerText.trim() === {json.dumps(item)})",
            timeout=10,
        )
        self.js(
            "[...document.querySelectorAll('.v-overlay .v-list-item')]"
            f".find(e => e.innerText.trim() === {json.dumps(item)}).click()"
        )

    def hover(self, selector: str, index: int = 0) -> None:
        """Move the mouse over the centre of the ``index``-th element matching ``selector``."""
        box = self.js(
            f"(() => {{ const r = document.querySelectorAll({json.dumps(selector)})[{index}].getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for dx in (-3, 0):  # two moves: the views react to motion
            self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0] + dx, "y": box[1]}, page=True)

    def click_at(self, selector: str, index: int = 0, x: float = 0.5, y: float = 0.5) -> None:
        """A left click (move, press, release) at the fractions ``x``, ``y`` of the width and height
        of the ``index``-th element matching ``selector`` (0.5, 0.5: its centre)."""
        box = self.js(
            f"(() => {{ const r = document.querySelectorAll({json.dumps(selector)})[{index}].getBoundingClientRect();"
            f" return [r.x + r.width * {x}, r.y + r.height * {y}]; }})()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            button = "none" if kind == "mouseMoved" else "left"
            event = {"type": kind, "x": box[0], "y": box[1], "button": button, "clickCount": 1}
            self.send("Input.dispatchMouseEvent", event, page=True)

    def set_files(self, selector: str, paths: list[str]) -> None:
        """Give a file input files, as a user choosing them would."""
        root = self.send("DOM.getDocument", page=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector}, page=True)["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": paths}, page=True)

    def wait_for(self, expression: str, timeout: float = 60.0, every: float = 0.25):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout} s waiting for {expression[:120]}")

    def download(self, button: str, folder: Path, name: str, timeout: float = 30.0) -> Path:
        """Click a download button and wait for the file ``name`` to arrive in ``folder``."""
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
        self.click(button)
        path = Path(folder) / name
        deadline = time.monotonic() + timeout
        while not (path.is_file() and path.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.2)
        return path

    def warm_pixels(self) -> list[int]:
        """Inferno-coloured pixels in each slice view's current image."""
        return self.js(WARM_PIXELS) or []

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(
            base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, page=True)["data"])
        )

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.http.close())
        self.loop.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stderr.close()
        self.profile.cleanup()


@contextlib.contextmanager
def viewer_page(*arguments: str):
    """``seggradcam web ARGUMENTS`` and a Chromium page on it once its views show: ``(server,
    browser)``; both stopped after (the server by Ctrl-C, which must end it well)."""
    server = ViewerServer(*arguments)
    browser = Browser()
    try:
        browser.open(server.url)
        browser.wait_for(VIEWS_SHOWN, timeout=60)
        yield server, browser
    finally:
        browser.close()
        assert server.stop() == 0, server.errors()[-2000:]
