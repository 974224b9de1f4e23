"""The worker process (``python -m SegGradCAMLib ... --progress json``): a real run, cancel that
kills the whole tree behind a launcher, and a failure's one-line message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.mrml.worker import NNUNET_FOLDERS, WorkerProcess

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
