"""The worker process: the command line (``python -m SegGradCAMLib ... --progress json``) in a
process of its own, started, polled and killed without threads and without Qt.

3D Slicer keeps the GIL on its main thread while idle, so neither inference nor a pipe reader
may run in a Python thread there. The worker writes its JSON events to a file in its folder
(stdout) and everything else to a log beside it (stderr); :meth:`WorkerProcess.poll` reads
the new complete lines, from a QTimer slot in Slicer or a loop elsewhere. Cancel kills the
whole process tree: ``PythonSlicer`` is a launcher that starts the real interpreter as a
child, so killing the launcher's pid alone would leave the worker running. nnU-Net's folder
variables point into the worker's folder (as SlicerNNUnet sets them), so nnU-Net neither warns
nor writes anywhere else. On Windows neither the worker nor ``taskkill`` gets a console window
(one would flash up, and closing it would kill the run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SegGradCAMError

LIBRARY_PARENT = Path(__file__).resolve().parents[2]  # the folder holding SegGradCAMLib
EVENTS_FILE = "events.jsonl"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
LOG_FILE = "worker.log"
# Windows process creation values (subprocess defines them on Windows only)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def insideSlicer() -> bool:
    """Whether this runs in the 3D Slicer application (``slicer.app``; the slicer-core wheel has none)."""
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app")


def temporaryFolder() -> Path:
    """A fresh folder for a run: in Slicer's per-user temporary folder inside 3D Slicer, else in the system's."""
    parent = None
    if insideSlicer():
        import slicer

        parent = slicer.app.temporaryPath  # Slicer creates it when asked for it
    return Path(tempfile.mkdtemp(prefix="SegGradCAM-", dir=parent))


def workerPython() -> str:
    """The worker's interpreter: inside 3D Slicer its ``PythonSlicer`` (on the PATH, else beside
    Slicer's executable or in its ``bin`` folder), never ``sys.executable`` (the Slicer application
    itself); this interpreter elsewhere."""
    if not insideSlicer():
        return sys.executable
    import slicer

    found = shutil.which("PythonSlicer")
    if found is not None:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = (Path(sys.executable).parent / name, Path(slicer.app.slicerHome) / "bin" / name)
    found = next((str(path) for path in candidates if path.is_file()), None)
    if found is None:
        raise SegGradCAMError(
            f"3D Slicer's Python launcher {name} was not found (not on the PATH, nor beside {sys.executable}, "
            f"nor in {candidates[1].parent}), so SegGradCAM cannot start its worker process. Reinstall 3D Slicer; "
            "if the problem remains, report it at https://github.com/SegGradCAM/SlicerSegGradCAM/issues."
        )
    return found


class WorkerProcess:
    """One run of the command line in its own process (its own session, so its tree can be killed).

    ``arguments``: the command line after ``python -m SegGradCAMLib`` (``--progress json`` is
    added). ``folder``: an existing folder for the event file and the log. ``python``,
    ``launcher`` (a command put before the interpreter), ``popen``, ``run`` (for ``taskkill``)
    and ``osName`` (``os.name``) are injected by tests.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        folder: Path,
        python: str | None = None,
        launcher: Sequence[str] = (),
        popen: Callable = subprocess.Popen,
        run: Callable = subprocess.run,
        osName: str = os.name,
    ) -> None:
        self.arguments = [*arguments, "--progress", "json"]
        self.folder = Path(folder)
        self.python = python or workerPython()
        self.launcher = list(launcher)
        self.popen = popen
        self.run = run
        self.osName = osName
        self.process = None
        self.events: list[dict] = []
        self._offset = 0

    @property
    def eventsPath(self) -> Path:
        return self.folder / EVENTS_FILE

    @property
    def logPath(self) -> Path:
        return self.folder / LOG_FILE

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LIBRARY_PARENT), env.get("PYTHONPATH", "")) if p)
        env.update({name: str(self.folder) for name in NNUNET_FOLDERS})
        command = [*self.launcher, self.python, "-m", "SegGradCAMLib", *self.arguments]
        with open(self.eventsPath, "wb") as stdout, open(self.logPath, "wb") as stderr:
            self.process = self.popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=str(self.folder),
                **self._processOptions(ownGroup=True),
            )

    def _processOptions(self, ownGroup: bool) -> dict:
        """Popen's platform options. Windows: no console window (``CREATE_NO_WINDOW``, and a hidden
        one as ``slicer.util.launchConsoleProcess`` asks for); ``ownGroup``: a process group of its
        own. Elsewhere: ``ownGroup``: a session of its own, so :meth:`kill` reaches the whole tree."""
        if self.osName == "nt":
            options: dict = {"creationflags": CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if ownGroup else 0)}
            startupInfo = getattr(subprocess, "STARTUPINFO", None)  # Windows only
            if startupInfo is not None:
                options["startupinfo"] = startupInfo(dwFlags=STARTF_USESHOWWINDOW, wShowWindow=SW_HIDE)
            return options
        return {"start_new_session": ownGroup}

    def poll(self) -> list[dict]:
        """The events written since the last call (complete lines only; other lines skipped)."""
        new: list[dict] = []
        if not self.eventsPath.exists():
            return new
        with open(self.eventsPath, "rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                new.append(event)
        self.events += new
        return new

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def finalEvent(self) -> dict | None:
        """The ``done`` or ``error`` event, once the worker wrote it."""
        return next((e for e in reversed(self.events) if e["event"] in ("done", "error")), None)

    def errorMessage(self) -> str:
        """The worker's one-line message: its error event, else the last line of its log."""
        final = self.finalEvent
        if final is not None and final["event"] == "error":
            return final["message"]
        code = None if self.process is None else self.process.poll()
        return self.logTail(1).strip() or f"The worker process ended with exit code {code} and no message."

    def logTail(self, lines: int = 200) -> str:
        """The last ``lines`` lines of the worker's log (its stderr; "" before it exists)."""
        if not self.logPath.exists():
            return ""
        text = self.logPath.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def kill(self) -> None:
        """Kill the worker and every process it started; wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.osName == "nt":
            command = ["taskkill", "/F", "/T", "/PID", str(self.process.pid)]
            self.run(command, capture_output=True, **self._processOptions(ownGroup=False))
        else:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
