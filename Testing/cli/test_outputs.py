"""What ``explain`` leaves in ``--out``: one run's outputs, whole, or none; the inputs and the
user's other files untouched; one line when it cannot write; an interrupted run under
``--progress json`` ends with the ``error`` event."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from SegGradCAMLib.cli import main, signals_end_the_run
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.runs.outputs import RunFolder

DEMO = ["--model", DEFAULT_MULTICLASS_MODEL]


def seggradcam(*args: str, **popen) -> subprocess.Popen:
    """The real command line in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "SegGradCAMLib.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_run_or_none(out: Path) -> str | None:
    """``out`` holds one run's outputs (every map explain.json names, of its method, and no other
    map) or none; returns that run's method."""
    heatmaps = {p.name for p in out.glob("heatmap_*.nrrd")}
    if not (out / "explain.json").exists():
        assert not heatmaps and not (out / "segmentation.nrrd").exists()
        return None
    report = json.loads((out / "explain.json").read_text())
    files = {layer["file"] for entry in report["classes"] for layer in entry["layers"].values()}
    assert heatmaps == files
    for name in files:
        assert sitk.ReadImage(str(out / name)).GetMetaData("SegGradCAM.Method") == report["method"]
    return report["method"]


@pytest.fixture(scope="module")
def hirescam_run(small_case, tmp_path_factory) -> Path:
    """A finished hirescam run of the demo model on the small case, next to a file of the user's."""
    out = tmp_path_factory.mktemp("hirescam")
    assert main(["explain", *small_case, *DEMO, "--method", "hirescam", "--out", str(out), "--quiet"]) == 0
    (out / "notes.txt").write_text("the user's own file")
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_rerun_interrupted_in_faithfulness_leaves_the_earlier_run(small_case, hirescam_run, tmp_path, sig):
    out = tmp_path / "o"
    shutil.copytree(hirescam_run, out)
    before = snapshot(out)
    args = ["explain", *small_case, *DEMO, "--method", "gradcam", "--faithfulness", "--out", str(out)]
    proc = seggradcam(*args, "--progress", "json")
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1].get("stage") == "faithfulness":
            proc.send_signal(sig)
            break
    rest, stderr = proc.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines()]
    assert assert_one_run_or_none(out) == "hirescam", stderr
    assert (out / "notes.txt").read_text() == "the user's own file"
    if sig != signal.SIGKILL:
        code, message = (130, "interrupted") if sig == signal.SIGINT else (143, "terminated")
        assert proc.returncode == code, stderr
        assert events[-1] == {"event": "error", "message": message}
        assert [e["event"] for e in events].count("error") == 1 and "Traceback" not in stderr
        assert snapshot(out) == before  # nothing of the new run left, not even its temporary folder
    else:
        assert list(out.glob(".seggradcam-partial-*"))  # a killed run cannot clean up after itself
        assert main(["explain", *small_case, *DEMO, "--method", "hirescam", "--out", str(out), "--quiet"]) == 0
        assert not list(out.glob(".seggradcam-partial-*"))  # the next run removes what it left


def test_rerun_replaces_the_earlier_outputs_and_keeps_the_users_files(small_case, tmp_path):
    out = tmp_path / "o"
    layers = "model.1.submodule.2,model.1.submodule.1.submodule.2"
    assert main(["explain", *small_case, *DEMO, "--layers", layers, "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("heatmap_*.nrrd"))) == 6
    (out / "notes.txt").write_text("the user's own file")
    assert main(["explain", *small_case, *DEMO, "--method", "hirescam", "--out", str(out), "--quiet"]) == 0
    assert assert_one_run_or_none(out) == "hirescam"
    assert sorted(p.name for p in out.iterdir()) == [
        "explain.json",
        "heatmap_edema.nrrd",
        "heatmap_enhancing_rim.nrrd",
        "heatmap_necrotic_core.nrrd",
        "notes.txt",
        "overview.png",
        "segmentation.nrrd",
    ]


def collection(small_case, tmp_path: Path, layout: str) -> tuple[list[str], Path]:
    """Inputs and an output folder where an output file is an input: by its own name, through a
    symbolic link (either way) or a hard link."""
    coll = tmp_path / "coll"
    coll.mkdir()
    first, second = coll / "segmentation.nrrd", coll / "heatmap_edema.nrrd"
    shutil.copy(small_case[0], first)
    shutil.copy(small_case[1], second)
    if layout == "same names":
        return [str(first), str(second)], coll
    other = tmp_path / "elsewhere"
    other.mkdir()
    if layout == "input is a link to an output":
        (other / "t1c.nrrd").symlink_to(first)
        return [str(other / "t1c.nrrd"), small_case[1]], coll
    if layout == "region is an output":
        return [*small_case, "--region", str(first)], coll
    second.unlink()
    if layout == "output is a link to an input":
        second.symlink_to(small_case[1])
    else:
        os.link(small_case[1], second)
    return [small_case[0], small_case[1]], coll


@pytest.mark.parametrize(
    "layout",
    ["same names", "input is a link to an output", "region is an output", "output is a link to an input", "hard link"],
)
def test_an_output_file_that_is_an_input_is_refused(small_case, tmp_path, capsys, layout):
    inputs, coll = collection(small_case, tmp_path, layout)
    before = snapshot(coll)
    assert main(["explain", *inputs, *DEMO, "--out", str(coll), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seggradcam: error:") and "is an input" in err[0], err
    assert snapshot(coll) == before and sorted(os.listdir(coll)) == ["heatmap_edema.nrrd", "segmentation.nrrd"]


def test_a_map_named_only_after_the_run_is_checked_before_anything_moves(tmp_path):
    """Layers found while running (``--layers auto`` without declared stages) name their maps late."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "heatmap_lesion_conv.nrrd").write_text("an input")
    with pytest.raises(SegGradCAMError, match="is an input"):
        with RunFolder(out, [out / "heatmap_lesion_conv.nrrd"]) as folder:
            for name in ("segmentation.nrrd", "heatmap_lesion_conv.nrrd", "explain.json"):
                (folder.staging / name).write_text("new")
            folder.commit()
    assert snapshot(out) == {"heatmap_lesion_conv.nrrd": b"an input"}


def test_only_the_earlier_runs_own_files_are_removed(tmp_path):
    """An earlier explain.json naming other files (the user's, or a path) removes none of them."""
    out = tmp_path / "o"
    out.mkdir()
    (tmp_path / "outside.nrrd").write_text("the user's")
    for name in ("notes.txt", "heatmap_old.nrrd", "overview.png"):
        (out / name).write_text("earlier")
    maps = {"a": {"file": "notes.txt"}, "b": {"file": "../outside.nrrd"}, "c": {"file": "heatmap_old.nrrd"}}
    (out / "explain.json").write_text(json.dumps({"classes": [{"layers": maps}]}))
    with RunFolder(out, []) as folder:
        for name in ("segmentation.nrrd", "explain.json"):
            (folder.staging / name).write_text("new")
        folder.commit()
    assert snapshot(out) == {"explain.json": b"new", "notes.txt": b"earlier", "segmentation.nrrd": b"new"}
    assert (tmp_path / "outside.nrrd").read_text() == "the user's"


def test_out_that_is_a_file_is_refused(small_case, tmp_path, capsys):
    out = tmp_path / "o"
    out.write_text("a file of the user's")
    assert main(["explain", *small_case, *DEMO, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0], err
    assert out.read_text() == "a file of the user's"


def evaluate_into(out: Path, small_case, tmp_path: Path) -> int:
    cases = tmp_path / "cases.txt"
    cases.write_text(",".join(small_case) + "\n")
    argv = ["evaluate", *DEMO, "--data", str(cases), "--metrics", "deletion", "--out", str(out), "--quiet"]
    return main(argv)


def test_evaluate_out_that_is_a_file_is_refused_before_scoring(small_case, tmp_path, capsys):
    out = tmp_path / "o"
    out.write_text("a file of the user's")
    assert evaluate_into(out, small_case, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0], err
    assert out.read_text() == "a file of the user's"


def test_evaluate_into_a_read_only_folder_is_one_line(small_case, tmp_path, capsys):
    out = read_only_folder(tmp_path) / "o"
    assert evaluate_into(out, small_case, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seggradcam: error: cannot write into"), err


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into (root writes anywhere but /sys)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    try:
        os.mkdir("/sys/kernel/seggradcam-probe")
    except OSError:
        return Path("/sys/kernel")
    os.rmdir("/sys/kernel/seggradcam-probe")
    pytest.skip("no folder here that this (root) process cannot write into")


@pytest.mark.parametrize("where", ["read-only folder", "new folder in a read-only folder"])
def test_read_only_out_is_one_line(small_case, tmp_path, capsys, where):
    folder = read_only_folder(tmp_path)
    out = folder if where == "read-only folder" else folder / "o"
    before = sorted(os.listdir(folder))
    assert main(["explain", *small_case, *DEMO, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seggradcam: error: cannot write into"), err
    assert sorted(os.listdir(folder)) == before


def limit_file_size():
    """In the child: no file it writes may grow beyond 20 kB (as a full disk stops a write)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.parametrize("earlier", [False, True], ids=["new folder", "over an earlier run"])
def test_full_disk_is_one_line_and_leaves_no_partial_file(small_case, hirescam_run, tmp_path, earlier):
    out = tmp_path / "o"
    if earlier:
        shutil.copytree(hirescam_run, out)
    before = snapshot(out) if earlier else None
    proc = seggradcam(
        "explain", *small_case, *DEMO, "--method", "hirescam", "--out", str(out), "--quiet", preexec_fn=limit_file_size
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seggradcam: error: cannot write"), stderr
    if earlier:
        assert snapshot(out) == before
    else:
        assert not out.exists()


def test_a_component_of_an_output_file_is_an_input(tmp_path):
    """``FILE@N`` (one component of a multi-component file) protects ``FILE``."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "segmentation.nrrd").write_text("an input")
    with pytest.raises(SegGradCAMError, match="is an input"):
        RunFolder(out, [f"{out / 'segmentation.nrrd'}@0", f"{out / 'segmentation.nrrd'}@1"])
    assert snapshot(out) == {"segmentation.nrrd": b"an input"}


def test_the_weights_a_json_spec_names_are_an_input(small_case, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "overview.png").write_text("the weights")
    (out / "spec.json").write_text(json.dumps({"architecture": "UNet", "args": {}, "weights": "overview.png"}))
    before = snapshot(out)
    assert main(["explain", *small_case, "--model", str(out / "spec.json"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an input" in err[0], err
    assert snapshot(out) == before


@pytest.mark.parametrize("target", ["explain.json", "segmentation.nrrd", "heatmap_a.nrrd"])
def test_a_folder_where_an_output_goes_is_refused_before_anything_moves(tmp_path, target):
    out = tmp_path / "o"
    out.mkdir()
    maps = {"x": {"file": "heatmap_a.nrrd"}}
    for name in ("heatmap_a.nrrd", "segmentation.nrrd"):
        (out / name).write_text("earlier")
    (out / "explain.json").write_text(json.dumps({"classes": [{"layers": maps}]}))
    (out / target).unlink()
    (out / target).mkdir()
    before = snapshot(out)
    with pytest.raises(SegGradCAMError, match="is a folder") as caught:
        with RunFolder(out, []) as folder:
            for name in ("heatmap_a.nrrd", "segmentation.nrrd", "explain.json"):
                (folder.staging / name).write_text("new")
            folder.commit()
    assert "\n" not in str(caught.value)
    assert snapshot(out) == before and (out / target).is_dir()
    assert not list(out.glob(".seggradcam-partial-*"))


def test_signals_after_the_first_are_ignored_while_the_run_cleans_up():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with signals_end_the_run():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:  # the cleanup: another Ctrl-C (or SIGTERM) changes nothing
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
