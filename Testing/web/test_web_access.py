"""Only the viewer's own page may talk to its server: a raw WebSocket client (aiohttp, as a
browser on another site would connect) is refused for a foreign Origin, and with its own Origin
it needs the per-server secret that only the served page can read."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import msgpack
import pytest
from browser import ViewerServer
from wslink.chunking import UnChunker, generate_chunks

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server():
    viewer = ViewerServer("--allowed-origin", "https://viewer.example.org")
    yield viewer
    assert viewer.stop() == 0, viewer.errors()[-2000:]


def own_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def hello(url: str, origin: str, secret: str | None = None) -> dict:
    """Open the WebSocket with ``origin``, say wslink's hello with ``secret`` (the page's, unless
    given); the server's reply."""
    async with aiohttp.ClientSession() as http:
        if secret is None:
            async with http.post(f"{url}paraview/", headers={"Origin": origin}, data="{}") as response:
                secret = (await response.json(content_type=None))["secret"]
        async with http.ws_connect(f"{url}ws", origin=origin) as ws:
            message = {"wslink": "1.0", "id": "system:c0:0", "method": "wslink.hello", "args": [{"secret": secret}]}
            for chunk in generate_chunks(msgpack.packb(message), 2**20):
                await ws.send_bytes(chunk)
            return UnChunker().process_chunk((await ws.receive(timeout=30)).data)


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1.evil.example"])
def test_a_foreign_origin_is_refused(server, origin):
    with pytest.raises(aiohttp.WSServerHandshakeError, match="403"):
        asyncio.run(hello(server.url, origin, secret="wslink-secret"))

    async def secret_status() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}paraview/", headers={"Origin": origin}, data="{}") as response:
                return response.status

    assert asyncio.run(secret_status()) == 403


def test_the_own_origin_needs_the_pages_secret(server):
    assert "error" in asyncio.run(hello(server.url, own_origin(server.url), secret="wslink-secret"))
    assert "clientID" in asyncio.run(hello(server.url, own_origin(server.url)))["result"]
    assert "clientID" in asyncio.run(hello(server.url, "https://viewer.example.org"))["result"]  # --allowed-origin


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://x.org:80", "http://x.org"),
        ("https://y.org:443/", "https://y.org"),
        ("HTTPS://Y.org:8443", "https://y.org:8443"),
        ("http://[::1]:80", "http://[::1]"),
    ],
)
def test_allowed_origins_are_compared_as_browsers_send_them(url, origin):
    from SegGradCAMLib.web.access import PageAccess, origin_of

    access = PageAccess("127.0.0.1", [url])
    assert origin_of(url) == origin and access.allowed(origin, 8080)
    assert access.allowed(url, 8080) and access.allowed("http://localhost:80", 80)


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://x.org:99999", "http://x.org:0", "http://u@x.org", "ftp://x.org"]
)
def test_a_malformed_allowed_origin_is_one_line_and_exit_2(url, capsys):
    from SegGradCAMLib.cli import main

    assert main(["web", "--allowed-origin", url]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"seggradcam: error: --allowed-origin {url}: give an address like") and "\n" not in error
