"""Cohorts: `explain --cohort LIST` and `evaluate --data LIST` on this process and on a local Ray
instance (real Ray, real worker processes killed and interrupted), with the 2D demo model."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegGradCAMLib.cli import main
from SegGradCAMLib.cohort.cases import cohort_cases
from SegGradCAMLib.demo import data as demo_data

ray = pytest.importorskip("ray", reason='Ray is in the [test] extra (pip install -e ".[test]")')

MODEL = ["--model", "demo-lesions-unet2d"]
CASES = 6
RAY = ["--engine", "ray", "--workers", "2", "--cpus-per-case", "1"]
EVALUATE = [
    "--max-slices",
    "2",
    "--step",
    "0.25",
    "--metrics",
    "deletion,insertion",
    "--baselines",
    "random",
    "--methods",
    "hirescam",
    "--threads",
    "1",
]
RAY_MARKS = ("ray::", "raylet", "gcs_server", "/ray/dashboard", "/ray/_private", "ray/core/src")


def ray_processes() -> list[str]:
    """Command lines of the Ray processes on this machine (the test suite starts none outside these tests)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in RAY_MARKS):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.fixture(autouse=True)
def no_ray_process_left():
    """Every test here starts and ends with no Ray process on the machine."""
    assert ray_processes() == []
    yield
    deadline = time.monotonic() + 20
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes() == []


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """Six held-out demo cases (one folder each, two channels) in a list file, and the same list
    with a 2D image as a seventh case; the cases' ids (``ids``, ``flat``)."""
    root = tmp_path_factory.mktemp("cohort")
    lines = []
    for i, (case, _) in enumerate(itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), CASES)):
        demo_data.write_case(case, root / f"case_{i}")
        lines.append(f"case_{i}/t1c.nrrd,case_{i}/flair.nrrd")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "flat").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((96, 96), np.float32)), str(root / "flat" / "t1c.nrrd"))
    (root / "with_bad.txt").write_text("\n".join([*lines[:3], "flat/t1c.nrrd,flat/t1c.nrrd", *lines[3:]]) + "\n")
    ids = [case.id for case in cohort_cases(str(root / "with_bad.txt"))]
    return {
        "root": root,
        "list": root / "list.txt",
        "with_bad": root / "with_bad.txt",
        "ids": ids[:3] + ids[4:],
        "flat": ids[3],
    }


def run_cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "SegGradCAMLib", *argv], capture_output=True, text=True, timeout=timeout
    )


def last_run(out: Path) -> dict:
    return json.loads((out / "cohort.json").read_text())["last_run"]


def test_case_ids_name_the_first_channels_folder_and_file(cohort):
    cases = cohort_cases(str(cohort["list"]))
    assert [c.id.rsplit("-", 1)[0] for c in cases] == [f"case_{i}_t1c" for i in range(CASES)]
    assert [c.id for c in cases] == cohort["ids"] and cohort["flat"].startswith("flat_t1c-")
    assert cases[2].inputs == (
        str(cohort["root"] / "case_2" / "t1c.nrrd"),
        str(cohort["root"] / "case_2" / "flair.nrrd"),
    )


def test_ray_cohort_equals_the_sequential_run(cohort, tmp_path):
    sequential, parallel = tmp_path / "sequential", tmp_path / "ray"
    assert (
        run_cli(
            "explain",
            "--cohort",
            str(cohort["list"]),
            *MODEL,
            "--out",
            str(sequential),
            "--no-overview",
            "--threads",
            "1",
            "--quiet",
        ).returncode
        == 0
    )
    done = run_cli(
        "explain", "--cohort", str(cohort["list"]), *MODEL, "--out", str(parallel), "--no-overview", *RAY, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    for i in range(CASES):
        one, other = sequential / cohort["ids"][i], parallel / cohort["ids"][i]
        files = sorted(p.name for p in one.glob("*.nrrd"))
        assert (
            files == sorted(p.name for p in other.glob("*.nrrd")) and "segmentation.nrrd" in files and len(files) == 4
        )
        for name in files:
            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))) for folder in (one, other))
            if name == "segmentation.nrrd":
                assert np.array_equal(a, b) and a.any()
            else:
                assert np.abs(a - b).max() <= 1e-6
    run = last_run(parallel)
    assert run["done"] == CASES and run["worker_processes"] == 2
    assert run["model_loads"] == run["worker_processes"]  # once per Ray worker process, not once per case

    metrics = {}
    for name, engine in (("sequential", []), ("ray", RAY)):
        out = tmp_path / f"evaluate_{name}"
        done = run_cli(
            "evaluate", "--data", str(cohort["list"]), *MODEL, *EVALUATE, "--out", str(out), *engine, "--quiet"
        )
        assert done.returncode == 0, done.stderr
        metrics[name] = json.loads((out / "metrics.json").read_text())
    assert metrics["ray"]["cases"] == metrics["sequential"]["cases"] == 2 * CASES  # 2 slices per volume
    for key in ("rows", "summary", "comparisons", "curves"):  # same thread count: the same numbers
        assert metrics["ray"][key] == metrics["sequential"][key], key
    assert {r["case"].split("[")[0] for r in metrics["ray"]["rows"]} == set(cohort["ids"])


def _kill_one_running_case(process: subprocess.Popen, timeout: float = 120) -> int:
    """Wait until a Ray worker runs a case, then kill it (SIGKILL, as the out-of-memory killer
    does); its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        running = [line for line in ray_processes() if "ray::seggradcam_case" in line]
        if running:
            pid = int(running[0].split(":")[0])
            time.sleep(1.0)  # well inside the case (each takes seconds with --faithfulness)
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.2)
    raise AssertionError("no Ray worker ran a case")


def test_a_killed_worker_is_retried_a_bad_case_is_recorded_and_a_rerun_skips_finished_cases(cohort, tmp_path):
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "SegGradCAMLib",
        "explain",
        "--cohort",
        str(cohort["with_bad"]),
        *MODEL,
        "--out",
        str(out),
        "--no-overview",
        "--faithfulness",
        *RAY,
        "--progress",
        "json",
    ]
    with open(tmp_path / "events.jsonl", "w") as events, open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(argv, stdout=events, stderr=log)
        try:
            killed = _kill_one_running_case(process)
            assert process.wait(timeout=600) == 2  # the bad case fails the command, after the others finished
        finally:
            process.kill()
    assert not Path(f"/proc/{killed}").exists()
    log = (tmp_path / "log.txt").read_text()
    for i in range(CASES):  # the killed worker's case was run again: nothing is missing
        report = json.loads((out / cohort["ids"][i] / "explain.json").read_text())
        assert report["inputs"][0].endswith(f"case_{i}/t1c.nrrd") and all(
            "faithfulness" in layer for c in report["classes"] for layer in c["layers"].values() if c["voxels"]
        )
    with open(out / "failures.csv") as f:
        failures = list(csv.DictReader(f))
    assert [row["case"] for row in failures] == [cohort["flat"]] and "2D image" in failures[0]["message"]
    assert "1 of 7 cases failed" in log and "failures.csv" in log.splitlines()[-1]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    cases = [e for e in events if e.get("stage") == "cases"]
    assert cases[-1]["done"] == cases[-1]["total"] == CASES + 1 and cases[-1]["failed"] == 1
    assert events[-1]["event"] == "error" and not list(out.glob(".*.partial"))

    finished = {p: p.stat().st_mtime_ns for p in out.glob("case_*/*")}
    again = run_cli(*argv[3:-2], "--quiet")
    assert again.returncode == 2 and "1 of 7 cases failed" in again.stderr
    run = last_run(out)
    assert (run["skipped"], run["done"], run["failed"]) == (CASES, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in out.glob("case_*/*")} == finished  # no work for finished cases


def test_ctrl_c_cancels_the_cohort_and_leaves_no_ray_process_or_partial_output(cohort, tmp_path):
    out = tmp_path / "out"
    before = set(Path("/tmp").glob("sgc-ray-*"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "SegGradCAMLib",
            "explain",
            "--cohort",
            str(cohort["list"]),
            *MODEL,
            "--out",
            str(out),
            "--faithfulness",
            *RAY,
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any("ray::seggradcam_case" in p for p in ray_processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130 and "interrupted" in err
    assert not list(out.glob(".*.partial")) and len(list(out.glob("case_*"))) < CASES
    assert set(Path("/tmp").glob("sgc-ray-*")) == before  # the local instance's folder is gone


def test_joins_an_existing_cluster_and_leaves_it_running(cohort, tmp_path):
    import socket

    with socket.socket() as probe:  # a free port for the cluster's head
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_command = str(Path(sys.executable).with_name("ray"))
    temp = Path(tempfile.mkdtemp(prefix="sgc-test-ray-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    two = tmp_path / "two.txt"
    two.write_text("\n".join(cohort["list"].read_text().splitlines()[:2]).replace("case_", f"{cohort['root']}/case_"))
    try:
        subprocess.run(
            [
                ray_command,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
        done = run_cli(
            "explain",
            "--cohort",
            str(two),
            *MODEL,
            "--out",
            str(tmp_path / "out"),
            "--no-overview",
            "--engine",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--quiet",
        )
        assert done.returncode == 0, done.stderr
        assert last_run(tmp_path / "out")["done"] == 2 and "Ray (127.0.0.1:" in done.stdout
        assert any("raylet" in p for p in ray_processes())  # the user's cluster is still up
    finally:
        subprocess.run([ray_command, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_local_cohort_records_a_bad_case_resumes_and_refuses_other_options(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "explain",
        "--cohort",
        str(cohort["with_bad"]),
        *MODEL,
        "--out",
        str(out),
        "--no-overview",
        "--classes",
        "edema",
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 7 cases failed" in err[0] and "flat" in err[0]
    assert sorted(p.name for p in out.iterdir()) == sorted([*cohort["ids"], "cohort.json", "failures.csv"])
    second = cohort["ids"][1]
    shutil.rmtree(out / second)
    (out / f".{second}.partial").mkdir()  # as if the run had been killed inside that case
    assert main(argv) == 2
    run = last_run(out)
    assert (run["skipped"], run["done"], run["failed"]) == (CASES - 1, 1, 1)
    assert (out / second / "explain.json").is_file() and not (out / f".{second}.partial").exists()
    mine = tmp_path / "mine"
    (mine / cohort["ids"][0]).mkdir(parents=True)
    (mine / cohort["ids"][0] / "notes.txt").write_text("the user's")
    assert main([*argv[:6], str(mine), *argv[7:]]) == 2  # a folder of the user's is never replaced
    assert "is not a finished case" in capsys.readouterr().err and (mine / cohort["ids"][0] / "notes.txt").is_file()
    assert main([*argv[:-3], "--classes", "all", "--quiet"]) == 2
    assert "other options (classes)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "INPUT", "--cohort", "LIST"], "not both"),
        (["explain"], "or --cohort LIST"),
        (["explain", "--cohort", "LIST", "--workers", "2"], "need --engine ray"),
        (["explain", "--cohort", "LIST", "--engine", "ray", "--cpus-per-case", "0"], "--cpus-per-case must be > 0"),
        (
            ["explain", "--cohort", "LIST", "--engine", "ray", "--gpus-per-case", "1", "--workers", "1"],
            "has 0; lower --gpus-per-case",
        ),
        (["evaluate", "--data", "demo", "--engine", "ray"], "give a list of volumes for --engine ray"),
        (["explain", "--cohort", "MISSING"], "Data not found"),
    ],
)
def test_cohort_options_are_checked_with_one_line(cohort, tmp_path, capsys, argv, message):
    values = {
        "INPUT": str(cohort["root"] / "case_0" / "t1c.nrrd"),
        "LIST": str(cohort["list"]),
        "MISSING": str(tmp_path / "missing.txt"),
    }
    assert main([values.get(a, a) for a in argv] + [*MODEL, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list((tmp_path / "out").glob("case_*"))


def test_cohort_fingerprint_records_the_options_as_typed():
    """A cohort folder of an earlier release (options recorded as typed) is resumed, not refused."""
    from SegGradCAMLib.cohort.tasks import ExplainTask
    from SegGradCAMLib.options import ExplainOptions

    options = ExplainOptions(cohort="l.txt", out="o", classes="edema", layers="model.2", folds=["0", "1"])
    recorded = ExplainTask(options, "cpu").fingerprint()
    assert recorded["classes"] == "edema" and recorded["layers"] == "model.2" and recorded["folds"] == "0,1"
    assert recorded["region"] == "None" and recorded["no_overview"] == "False" and recorded["step_size"] == "0.5"


def test_evaluate_on_a_list_reports_reading_then_cases(cohort, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text(cohort["list"].read_text().splitlines()[0].replace("case_0/", f"{cohort['root']}/case_0/") + "\n")
    argv = ["evaluate", "--data", str(one), *MODEL, *EVALUATE, "--out", str(tmp_path / "e"), "--progress", "json"]
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [(e["stage"], e["done"], e["total"]) for e in events if e["event"] == "progress"]
    assert ("read", 1, 1) in steps and steps.index(("read", 1, 1)) < steps.index(("cases", 0, 1))


def test_an_evaluate_cohort_of_a_2d_model_from_before_the_3d_neighbourhood_is_resumed(cohort, tmp_path):
    """``--neighbourhood-mm`` changes what 3D models measure only: a 2D model's cohort folder recorded
    before the option existed resumes (its finished case is kept), a 3D model's options name it."""
    from SegGradCAMLib.cohort.tasks import EvaluateTask
    from SegGradCAMLib.evaluation.scoring import EvalConfig

    one = tmp_path / "one.txt"
    one.write_text(cohort["list"].read_text().splitlines()[0].replace("case_0/", f"{cohort['root']}/case_0/") + "\n")
    argv = ["evaluate", "--data", str(one), *MODEL, *EVALUATE, "--out", str(tmp_path / "e"), "--quiet"]
    assert run_cli(*argv).returncode == 0
    state = tmp_path / "e" / "cohort.json"
    recorded = json.loads(state.read_text())
    recorded["options"].pop("neighbourhood_mm", None)  # as the release before recorded them
    state.write_text(json.dumps(recorded))
    again = run_cli(*argv)
    assert again.returncode == 0, again.stderr
    assert (last_run(tmp_path / "e")["skipped"], last_run(tmp_path / "e")["done"]) == (1, 0)
    volume = EvaluateTask("m", False, EvalConfig(), 5, 10**9, volumes=True).fingerprint()
    assert volume["neighbourhood_mm"] == "10.0"
    # a 3D cohort recorded before the finer ends of a small target's steps is not resumed; a 2D one is
    slices = EvaluateTask("m", False, EvalConfig(), 5, 10**9, volumes=False).fingerprint()
    assert "steps_3d" in volume and "steps_3d" not in slices


def test_the_library_entry_runs_a_cohort_and_says_what_it_did(cohort, tmp_path):
    from SegGradCAMLib import ExplainOptions, explain
    from SegGradCAMLib.reports import CohortSummary

    one = tmp_path / "one.txt"
    one.write_text(cohort["list"].read_text().splitlines()[0].replace("case_0/", f"{cohort['root']}/case_0/") + "\n")
    out = tmp_path / "c"
    summary = explain(ExplainOptions(cohort=one, model="demo-lesions-unet2d", out=out, threads=1, overview=False))
    assert isinstance(summary, CohortSummary) and (summary.cases, summary.done, summary.failed) == (1, 1, 0)
    assert last_run(out) == summary.to_json() and len(list(out.glob("*/explain.json"))) == 1


def _list_file(root: Path, lines: list[str], name: str = "list.txt") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_case_ids_are_unique_never_empty_and_depend_only_on_the_case_itself(tmp_path):
    """Issue 22.5: ``d/a.nrrd``, ``d/a-1.nrrd``, ``d/a.nii.gz`` gave ``d_a-1`` twice; a CJK name an empty id;
    appending a case renamed every case."""
    from SegGradCAMLib.errors import SegGradCAMError

    names = ["d/a.nrrd", "d/a-1.nrrd", "d/a.nii.gz", "e/a.nrrd", "d/脑部扫描.nrrd", "d/.nrrd"]
    ids = {n: c.id for n, c in zip(names, cohort_cases(str(_list_file(tmp_path, names))))}
    assert len(set(ids.values())) == len(names) and all(ids.values()), ids
    assert "脑部扫描" in ids["d/脑部扫描.nrrd"] and not any(i.startswith((".", "-")) for i in ids.values())
    for order in (names[:2], names[::-1], [names[3], "f/b.nrrd"]):  # other cases, other positions: the same id
        for case in cohort_cases(str(_list_file(tmp_path, order, "other.txt"))):
            name = next(n for n in names + ["f/b.nrrd"] if case.inputs == (str((tmp_path / n).resolve()),))
            assert case.id == ids.get(name, case.id)
    two = cohort_cases(str(_list_file(tmp_path, ["d/a.nrrd,d/a-1.nrrd", "d/a.nrrd,d/a.nii.gz"], "two.txt")))
    assert two[0].id != two[1].id  # every channel counts
    with pytest.raises(SegGradCAMError, match="case 3 repeats case 1"):
        cohort_cases(str(_list_file(tmp_path, ["d/a.nrrd", "d/b.nrrd", "d/a.nrrd"], "twice.txt")))


def _copy_case(source: Path, first: Path) -> str:
    """Eight middle slices of a two-channel demo case, whose first channel is ``first`` (any
    volume format) and second ``first`` + ``.flair.nrrd``; its list line."""
    first.parent.mkdir(parents=True, exist_ok=True)
    second = first.with_name(first.name + ".flair.nrrd")
    for channel, path in (("t1c", first), ("flair", second)):
        sitk.WriteImage(sitk.ReadImage(str(source / f"{channel}.nrrd"))[:, :, 34:42], str(path))
    return f"{first},{second}"


def test_cohort_cases_never_overwrite_each_other_append_cheaply_and_follow_changed_inputs(cohort, tmp_path, capsys):
    """Issue 22.5, end to end: three cases whose ids collided; a fourth (CJK) case appended; a changed input."""
    d, root = tmp_path / "d", cohort["root"]
    lines = [_copy_case(root / f"case_{i}", d / n) for i, n in enumerate(["a.nrrd", "a-1.nrrd", "a.nii.gz"])]
    out = tmp_path / "out"
    argv = ["explain", "--cohort", "LIST", *MODEL, "--out", str(out), "--no-overview", "--classes", "edema"]

    def run(lines: list[str]) -> dict:
        assert main([_list_file(tmp_path, lines).as_posix() if a == "LIST" else a for a in argv]) == 0
        return last_run(out)

    assert (run(lines)["done"], len(list(out.glob("*/explain.json")))) == (3, 3)
    for folder in out.glob("*/"):
        report = json.loads((folder / "explain.json").read_text())
        assert report["inputs"][0] in {str(d / n) for n in ("a.nrrd", "a-1.nrrd", "a.nii.gz")}
    assert len({json.loads(p.read_text())["inputs"][0] for p in out.glob("*/explain.json")}) == 3
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/explain.json")}

    lines.append(_copy_case(root / "case_3", tmp_path / "脑" / "扫描.nrrd"))
    ran = run(lines)
    assert (ran["done"], ran["skipped"], len(list(out.glob("*/explain.json")))) == (1, 3, 4)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # the finished cases untouched
    state = json.loads((out / "cohort.json").read_text())
    recorded = {f["path"]: f for case in state["cases"].values() for f in case["inputs"]}
    assert recorded[str(d / "a.nrrd")]["size"] == (d / "a.nrrd").stat().st_size

    capsys.readouterr()
    _copy_case(root / "case_4", d / "a-1.nrrd")  # the user replaced one input file
    ran = run(lines)
    assert (ran["done"], ran["skipped"], ran["recomputed"]) == (1, 3, 1)
    assert "changed" in capsys.readouterr().out and str(d / "a-1.nrrd") in json.dumps(state)


def test_a_cohort_folder_of_the_earlier_id_scheme_is_recomputed_with_a_message(cohort, tmp_path, capsys):
    """Cohort folders written before ids depended on the inputs (``cases`` a list of ids): their
    case folders are replaced by a recomputed run, said so; nothing is mixed."""
    one = _list_file(tmp_path, [_copy_case(cohort["root"] / "case_0", tmp_path / "t1c.nrrd")])
    out = tmp_path / "out"
    argv = ["explain", "--cohort", str(one), *MODEL, "--out", str(out), "--no-overview", "--classes", "edema"]
    assert main(argv) == 0
    state = json.loads((out / "cohort.json").read_text())
    (new,) = state["cases"]
    os.replace(out / new, out / "case_0")  # as the earlier release named it
    state["cases"] = ["case_0"]
    (out / "cohort.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(argv) == 0
    assert "earlier release" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([new, "cohort.json", "failures.csv"])
    assert last_run(out)["done"] == 1


@pytest.mark.parametrize(
    "state",
    [
        '{"command": "explain", "opt',
        "[]",
        "null",
        '{"command": "explain", "options": {}, "cases": 5}',
        '{"options": null}',
    ],
    ids=["truncated", "list", "null", "cases 5", "options null"],
)
def test_a_damaged_cohort_json_in_out_is_one_line(cohort, tmp_path, capsys, state):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cohort.json").write_text(state)
    argv = ["explain", "--cohort", str(cohort["list"]), *MODEL, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cohort.json is damaged" in err[0] and "move it away" in err[0], err
    assert os.listdir(out) == ["cohort.json"] and (out / "cohort.json").read_text() == state


def test_a_list_file_holding_a_nul_byte_is_one_line(cohort, tmp_path, capsys):
    listed = _list_file(tmp_path, ["case_0/t1c.nrrd,case_0/fl\0air.nrrd"])
    argv = ["explain", "--cohort", str(listed), *MODEL, "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NUL byte" in err[0], err
