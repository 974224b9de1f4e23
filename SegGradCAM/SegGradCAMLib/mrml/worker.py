"""The worker process: the command line (``python -m SegGradCAMLib ... --progress json``) in a
process of its own, started, polled and killed without threads and without Qt.

3D Slicer keeps the GIL on its main thread while idle, so neither inference nor a pipe reader
may run in a Python thread there. The worker writes its JSON events to a file in its folder
(stdout) and everything else to a log beside it (stderr); :meth:`WorkerProcess.poll` reads
the new complete lines, from a QTimer slot in Slicer or a loop elsewhere. Cancel kills the
whole process tree: ``PythonSlicer`` is a launcher that starts the real interpreter as a
child, so killing the launcher's pid alone would leave the worker running. nnU-Net's folder
variables point into the worker's folder (as SlicerNNUnet sets them), so nnU-Net neither warns
nor writes anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

LIBRARY_PARENT = Path(__file__).resolve().parents[2]  # the folder holding SegGradCAMLib
EVENTS_FILE = "events.jsonl"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
LOG_FILE = "worker.log"


def workerPython() -> str:
    """Slicer's own Python (``PythonSlicer``, as SlicerTotalSegmentator finds it) inside 3D
    Slicer; this interpreter elsewhere."""
    return shutil.which("PythonSlicer") or sys.executable


class WorkerProcess:
    """One run of the command line in its own process (its own session, so its tree can be killed).

    ``arguments``: the command line after ``python -m SegGradCAMLib`` (``--progress json`` is
    added). ``folder``: an existing folder for the event file and the log. ``python`` and
    ``launcher`` (a command put before the interpreter) are injected by tests.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        folder: Path,
        python: str | None = None,
        launcher: Sequence[str] = (),
        popen: Callable = subprocess.Popen,
    ) -> None:
        self.arguments = [*arguments, "--progress", "json"]
        self.folder = Path(folder)
        self.python = python or workerPython()
        self.launcher = list(launcher)
        self.popen = popen
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
        posix = os.name == "posix"
        with open(self.eventsPath, "wb") as stdout, open(self.logPath, "wb") as stderr:
            self.process = self.popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=str(self.folder),
                start_new_session=posix,
                creationflags=0 if posix else subprocess.CREATE_NEW_PROCESS_GROUP,
            )

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
        lines = (
            self.logPath.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if self.logPath.exists()
            else []
        )
        code = None if self.process is None else self.process.poll()
        return lines[-1] if lines else f"The worker process ended with exit code {code} and no message."

    def kill(self) -> None:
        """Kill the worker and every process it started; wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        if os.name == "posix":
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        self.process.wait()
