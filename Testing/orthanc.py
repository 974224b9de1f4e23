"""A real Orthanc PACS for the tests: 127.0.0.1, a free HTTP port, a temporary storage folder, DICOMweb.

:func:`running_orthanc` starts ``/usr/sbin/Orthanc`` (Debian package ``orthanc``) with the DICOMweb
plugin (``orthanc-dicomweb``) at ``/dicom-web/``, no authentication, remote access off and the DICOM
(DIMSE) server off: the tests speak DICOMweb only. ``refuse_stow=True`` loads a Lua
``IncomingHttpRequestFilter`` that refuses every POST to the DICOMweb studies resource, so the server
answers STOW-RS with 403 Forbidden and stores nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0
# Orthanc answers 403 Forbidden where this filter returns false.
REFUSE_STOW_LUA = """
function IncomingHttpRequestFilter(method, uri, ip, username, headers)
  return not (method == 'POST' and string.find(uri, '^/dicom%-web/studies') ~= nil)
end
"""


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST root (``http://127.0.0.1:PORT``) and DICOMweb root."""

    url: str

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def get(self, path: str):
        """The JSON answer of Orthanc's REST API at ``path`` (e.g. ``/instances``)."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def upload(self, paths) -> None:
        """Store DICOM files through Orthanc's own REST API (``POST /instances``), which a DICOMweb filter passes."""
        for path in paths:
            request = urllib.request.Request(self.url + "/instances", data=Path(path).read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass

    def instance_count(self) -> int:
        """How many instances the server holds."""
        return int(self.get("/statistics")["CountInstances"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(folder: Path, http_port: int, refuse_stow: bool) -> dict:
    """Orthanc's configuration: storage and index in ``folder``, the DICOMweb plugin, no DIMSE server."""
    scripts = []
    if refuse_stow:
        script = folder / "refuse_stow.lua"
        script.write_text(REFUSE_STOW_LUA, encoding="utf-8")
        scripts.append(str(script))
    return {
        "Name": "SegGradCAM-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": scripts,
    }


def _wait_until_up(server: Orthanc, process: subprocess.Popen, log: Path) -> None:
    """Return once ``GET /system`` answers; raise with Orthanc's log where it exits or times out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            server.get("/system")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s:\n{log.read_text(errors='replace')}")


def _end_with_parent() -> None:
    """In the child before Orthanc starts: SIGTERM to it when the test process dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed pytest leaves no server behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def running_orthanc(refuse_stow: bool = False) -> Iterator[Orthanc]:
    """A started Orthanc, stopped (terminate, wait, kill) and its folder removed on exit."""
    assert ORTHANC.is_file() and DICOMWEB_PLUGIN.is_file(), "apt-get install orthanc orthanc-dicomweb"
    with tempfile.TemporaryDirectory(prefix="orthanc-") as name:
        folder = Path(name)
        port = free_port()
        config = folder / "orthanc.json"
        config.write_text(json.dumps(_config(folder, port, refuse_stow)), encoding="utf-8")
        log = folder / "orthanc.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(ORTHANC), str(config)], stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent
            )
        try:
            server = Orthanc(f"http://127.0.0.1:{port}")
            _wait_until_up(server, process, log)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
