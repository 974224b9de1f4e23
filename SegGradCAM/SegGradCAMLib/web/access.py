"""Who may talk to the browser viewer's server: only its own page.

A web page on another site can open a WebSocket to any address the browser reaches (the
browser sends that page's ``Origin``, nothing more), and trame's default secret is the same for
every server. So the server refuses a WebSocket handshake, and the request for the connection
settings, whose ``Origin`` is not one of its own (the address it listens on; the loopback names
when that is this computer; ``--allowed-origin`` adds more), and it accepts only a secret made
for this server. The page gets that secret from the connection settings it asks for (trame's
client POSTs to ``paraview/`` beside the page); another site's script cannot read that answer
(same-origin policy, no CORS headers), and its request is refused for its ``Origin`` anyway.
"""

from __future__ import annotations

import secrets
import socket
from typing import Sequence
from urllib.parse import urlsplit

from aiohttp import web as aiohttp_web

from ..errors import SegGradCAMError

WS_PATH = "/ws"  # trame's WebSocket
SETTINGS_PATH = "/paraview/"  # where trame's page asks for its connection settings
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
ANY_ADDRESS = {"0.0.0.0", "::", ""}
DEFAULT_PORTS = {"http": 80, "https": 443}  # dropped from origins, as browsers do


def origin_of(url: str) -> str:
    """``url`` as an allowed origin (:func:`normal_origin`); :class:`SegGradCAMError` when it is
    not an http(s) address."""
    origin = normal_origin(url)
    if origin is None:
        raise SegGradCAMError(
            f"--allowed-origin {url}: give an address like http://viewer.example.org:8080 "
            "(http or https, a host, a port from 1 to 65535, no user, path or query)."
        )
    return origin


def normal_origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) ``url`` as browsers send it in ``Origin`` (lower
    case, IPv6 in brackets, the scheme's default port dropped, no path); None when it is not one."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port  # a port outside 0-65535 raises, as a bad IPv6 address does above
    except ValueError:
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or port == 0
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return f"{parts.scheme}://{url_host(parts.hostname)}" + (
        "" if port in (None, DEFAULT_PORTS[parts.scheme]) else f":{port}"
    )


def own_hosts(host: str) -> set[str]:
    """The host names (as in a URL) under which a server listening on ``host`` is this server."""
    if host in LOOPBACK or host == "::1":
        return set(LOOPBACK)
    if host not in ANY_ADDRESS:
        return {url_host(host)}
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        addresses = set()
    names = {socket.gethostname(), socket.getfqdn(), host, *addresses}
    return LOOPBACK | {url_host(name) for name in names}


def url_host(name: str) -> str:
    """A host name or address as it stands in a URL (IPv6 in brackets), lower case."""
    return f"[{name}]" if ":" in name else name.lower()


class PageAccess:
    """The origins and the secret of one server listening on ``host``, plus ``extra_origins``."""

    def __init__(self, host: str, extra_origins: Sequence[str] = ()):
        self.hosts = own_hosts(host)
        self.extra = {origin_of(url) for url in extra_origins}
        self.secret = secrets.token_urlsafe(32)

    def allowed(self, origin: str | None, port: int) -> bool:
        """Whether a request with this ``Origin`` header, to the server's ``port``, comes from its page."""
        own = {normal_origin(f"http://{host}:{port}") for host in self.hosts}
        return origin is not None and normal_origin(origin) in (own | self.extra) - {None}

    def bind(self, server) -> None:
        """Guard the trame ``server`` (before it starts listening): its secret, the origin check,
        and the connection settings for its page."""

        @aiohttp_web.middleware
        async def check_origin(request: aiohttp_web.Request, handler):
            if request.path in (WS_PATH, SETTINGS_PATH):
                port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
                if not self.allowed(request.headers.get("Origin"), port):
                    raise aiohttp_web.HTTPForbidden(text="Only the viewer's own page may connect.")
            return await handler(request)

        async def settings(_request: aiohttp_web.Request) -> aiohttp_web.Response:
            return aiohttp_web.json_response({"sessionURL": f"ws://USE_HOST{WS_PATH}", "secret": self.secret})

        def on_bind(wslink_server) -> None:
            server.protocol.updateSecret(self.secret)
            wslink_server.app.middlewares.append(check_origin)
            wslink_server.app.router.add_post(SETTINGS_PATH, settings)

        server.controller.on_server_bind.add(on_bind)
