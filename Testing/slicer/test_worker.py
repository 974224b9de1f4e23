"""The worker process (``python -m SegGradCAMLib ... --progress json``): a real run, cancel that
kills the whole tree behind a launcher, a failure's one-line message and its log, no console
window on Windows, the worker's interpreter and the run folders inside 3D Slicer (its
``slicer.app`` a stand-in here)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
import slicer

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.mrml import worker as worker_module
from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic
from SegGradCAMLib.mrml.worker import NNUNET_FOLDERS, WorkerProcess

PYTHON = sys.executable  # this interpreter (a test may stand in Slicer's executable for sys.executable)
# A one-level launcher like PythonSlicer: it starts the real interpreter as its child.
LAUNCHER = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"]


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory) -> list[str]:
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, tmp_path_factory.mktemp("case"))
    return [str(paths[channel]) for channel in demo_data.CHANNELS]


@pytest.fixture(scope="module")
def long_case(demo_case, tmp_path_factory) -> list[str]:
    """The demo case repeated 8 times along its slices (608 slices): a run that lasts seconds."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("long")
    paths = []
    for path in demo_case:
        image = sitk.ReadImage(path)
        long = sitk.GetImageFromArray(np.tile(sitk.GetArrayFromImage(image), (8, 1, 1)))
        long.SetSpacing(image.GetSpacing())
        long.SetOrigin(image.GetOrigin())
        long.SetDirection(image.GetDirection())
        paths.append(str(folder / Path(path).name))
        sitk.WriteImage(long, paths[-1])
    return paths


def wait(worker: WorkerProcess, until, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        worker.poll()
        if until():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out; events so far: {worker.events[-3:]}")


def processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if text in line and "ps -ww" not in line]


def test_worker_runs_the_command_line_and_reports_its_events(demo_case, tmp_path):
    out = tmp_path / "out"
    worker = WorkerProcess(
        ["explain", *demo_case, "--model", DEFAULT_MULTICLASS_MODEL, "--out", str(out)],
        tmp_path,
        python=sys.executable,
        launcher=LAUNCHER,
    )
    worker.start()
    wait(worker, lambda: not worker.running and worker.finalEvent is not None)
    assert worker.process.returncode == 0
    assert worker.finalEvent == {"event": "done", "out": str(out), "seconds": worker.finalEvent["seconds"]}
    stages = [e["stage"] for e in worker.events if e["event"] == "progress"]
    assert stages[:2] == ["startup", "read"] and {"preprocess", "slices", "backward", "write"} <= set(stages)
    assert (out / "explain.json").is_file() and (out / "segmentation.nrrd").is_file()


def test_cancel_kills_the_worker_behind_its_launcher(long_case, tmp_path):
    out = tmp_path / "cancelled-run"
    worker = WorkerProcess(
        ["explain", *long_case, "--threads", "1", "--model", DEFAULT_MULTICLASS_MODEL, "--out", str(out)],
        tmp_path,
        python=sys.executable,
        launcher=LAUNCHER,
    )
    worker.start()
    wait(worker, lambda: any(e.get("stage") in ("windows", "slices", "backward") for e in worker.events))
    assert len(processes_mentioning(str(out))) == 2  # the launcher and the worker it started
    start = time.monotonic()
    worker.kill()
    while processes_mentioning(str(out)) and time.monotonic() - start < 2:
        time.sleep(0.05)
    assert processes_mentioning(str(out)) == [] and time.monotonic() - start < 2
    assert not worker.running and worker.finalEvent is None


def test_a_failing_worker_gives_the_command_lines_one_line_message(demo_case, tmp_path):
    worker = WorkerProcess(
        ["explain", *demo_case, "--model", "no-such-model", "--out", str(tmp_path / "o")],
        tmp_path,
        python=sys.executable,
    )
    worker.start()
    wait(worker, lambda: not worker.running)
    assert worker.process.returncode == 2
    assert worker.finalEvent["event"] == "error"
    assert worker.errorMessage().startswith("Unknown model 'no-such-model'")
    assert worker.logTail(1) == "seggradcam: error: " + worker.errorMessage()


def test_poll_skips_lines_that_are_not_events_and_keeps_partial_lines(tmp_path):
    worker = WorkerProcess(["models"], tmp_path, python=sys.executable)
    worker.eventsPath.write_bytes(
        b'not json\n{"event": "progress", "stage": "read", "done": 0, "total": 1}\n{"event": "do'
    )
    assert [e["stage"] for e in worker.poll()] == ["read"]
    with open(worker.eventsPath, "ab") as stream:
        stream.write(b'ne", "out": "x", "seconds": 1}\n')
    assert worker.poll() == [{"event": "done", "out": "x", "seconds": 1}]
    assert np.array_equal([e["event"] for e in worker.events], ["progress", "done"])


def test_nnunet_folder_variables_point_into_the_workers_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/somewhere/else")
    started = {}
    worker = WorkerProcess(
        ["models"], tmp_path, python=sys.executable, popen=lambda command, **options: started.update(options)
    )
    worker.start()
    assert {name: started["env"][name] for name in NNUNET_FOLDERS} == {name: str(tmp_path) for name in NNUNET_FOLDERS}


class Recorder:
    """Stands in for ``subprocess.Popen`` / ``subprocess.run``: keeps each call's command and options."""

    def __init__(self):
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, command, **options):
        self.calls.append((command, options))
        return types.SimpleNamespace(pid=4242, poll=lambda: None, wait=lambda: 0)


def test_on_windows_the_worker_and_taskkill_have_no_console_window(tmp_path, monkeypatch):
    # subprocess.STARTUPINFO exists only on Windows: a stand-in that keeps its fields
    monkeypatch.setattr(subprocess, "STARTUPINFO", types.SimpleNamespace, raising=False)
    popen, run = Recorder(), Recorder()
    worker = WorkerProcess(["models"], tmp_path, python=sys.executable, popen=popen, run=run, osName="nt")
    worker.start()
    worker.kill()
    (_, started), (kill_command, killed) = popen.calls[0], run.calls[0]
    assert kill_command == ["taskkill", "/F", "/T", "/PID", "4242"]
    for options in (started, killed):
        assert options["creationflags"] & 0x08000000  # CREATE_NO_WINDOW
        assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0  # SW_HIDE
        assert not options.get("start_new_session")
    assert started["creationflags"] & 0x00000200  # CREATE_NEW_PROCESS_GROUP: the tree can be killed


def test_windows_flags_can_be_checked_by_injecting_the_os_name_alone(tmp_path):
    """Where ``subprocess.STARTUPINFO`` does not exist (not Windows), the injected "nt" still starts
    the worker and taskkill without a console window (CREATE_NO_WINDOW)."""
    popen, run = Recorder(), Recorder()
    worker = WorkerProcess(["models"], tmp_path, python=sys.executable, popen=popen, run=run, osName="nt")
    worker.start()
    worker.kill()
    for options in (popen.calls[0][1], run.calls[0][1]):
        assert options["creationflags"] & 0x08000000 and "startupinfo" not in options


def test_on_posix_the_worker_starts_in_a_session_of_its_own(tmp_path):
    popen = Recorder()
    WorkerProcess(["models"], tmp_path, python=sys.executable, popen=popen, osName="posix").start()
    options = popen.calls[0][1]
    assert options["start_new_session"] is True
    assert not options.get("creationflags") and options.get("startupinfo") is None


@pytest.fixture()
def slicer_app(tmp_path, monkeypatch):
    """A stand-in for 3D Slicer's ``slicer.app`` (the slicer-core wheel has none): its home and temporary folders."""
    app = types.SimpleNamespace(slicerHome=str(tmp_path / "Slicer"), temporaryPath=str(tmp_path / "SlicerTemp"))
    Path(app.temporaryPath).mkdir()
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "Slicer" / "MacOS" / "Slicer"))  # the Slicer application
    return app


def python_slicer(folder: Path) -> str:
    path = folder / ("PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return str(path)


def test_outside_slicer_the_worker_runs_on_this_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(worker_module.shutil, "which", lambda name: python_slicer(tmp_path))
    assert worker_module.workerPython() == sys.executable
    assert not worker_module.insideSlicer()


def test_inside_slicer_the_worker_runs_on_python_slicer(slicer_app, monkeypatch, tmp_path):
    on_path = python_slicer(tmp_path / "path")
    monkeypatch.setattr(worker_module.shutil, "which", lambda name: on_path if name == "PythonSlicer" else None)
    assert worker_module.workerPython() == on_path
    monkeypatch.setattr(worker_module.shutil, "which", lambda name: None)
    in_bin = python_slicer(Path(slicer_app.slicerHome) / "bin")
    assert worker_module.workerPython() == in_bin
    beside_slicer = python_slicer(Path(sys.executable).parent)  # beside Slicer's executable (here not in bin)
    assert worker_module.workerPython() == beside_slicer
    assert worker_module.insideSlicer()


def test_inside_slicer_without_python_slicer_there_is_no_fallback_to_slicer_itself(slicer_app, monkeypatch):
    monkeypatch.setattr(worker_module.shutil, "which", lambda name: None)
    with pytest.raises(SegGradCAMError, match="PythonSlicer.*not found.*Reinstall 3D Slicer"):
        worker_module.workerPython()


def test_run_folders_go_to_slicers_temporary_folder_inside_slicer(monkeypatch, tmp_path):
    outside = worker_module.temporaryFolder()
    assert outside.parent == Path(tempfile.gettempdir()) and outside.name.startswith("SegGradCAM-")
    outside.rmdir()
    app = types.SimpleNamespace(temporaryPath=str(tmp_path))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    inside = worker_module.temporaryFolder()
    assert inside.parent == tmp_path and inside.is_dir() and inside.name.startswith("SegGradCAM-")


def test_a_failed_runs_log_outlives_its_folder(slicer_app):
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "input")
    slicer.util.updateVolumeFromArray(volume, np.zeros((4, 8, 8), np.float32))
    logic = SegGradCAMSceneLogic(scene, python=PYTHON)
    run = logic.waitFor(logic.startRun([volume], "no-such-model"), 0.05)
    with pytest.raises(SegGradCAMError, match="Unknown model 'no-such-model'") as error:
        logic.finishRun(run)
    assert "\n" not in str(error.value) and not run.folder.exists()
    assert run.log.splitlines()[-1] == "seggradcam: error: " + str(error.value)
    assert run.folder.parent == Path(slicer_app.temporaryPath)
