"""Run a task over a cohort, in this process (``local``) or as Ray tasks (``ray``).

Either engine calls :func:`run_case` for each case that is not complete. A case writes into a
hidden ``.<id>.partial`` folder that becomes its output folder only when the case succeeded,
so an output folder is always complete, and a re-run of the same command skips it unless one of
its input files changed since (``cohort.json`` records each case's files with size and
modification time; such a case is removed and run again, and the run says so). A case that
fails (bad input, or a defect) is recorded with its one-line message in ``failures.csv`` and
does not stop the others; a Ray worker that dies (killed, out of memory) is retried
(``max_retries``). ``cohort.json`` records the options, so that a re-run with other options
refuses to mix its outputs with the earlier ones. Ctrl-C cancels the outstanding tasks, stops
the local Ray instance and removes the partial folders.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SegGradCAMError
from ..engine_options import EngineOptions
from ..runs.outputs import check_out_folder, unwritable
from ..reports import CohortSummary
from .cases import CohortCase
from .model_cache import model_loads

STATE_FILE = "cohort.json"
FAILURES_FILE = "failures.csv"
PARTIAL_SUFFIX = ".partial"


@dataclass
class CohortReport:
    """What a cohort run did: case ids done now, skipped (complete before), failed (id -> message)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    recomputed: list[str] = field(default_factory=list)  # finished before, run again: their inputs changed
    notes: list[str] = field(default_factory=list)  # what the run did besides its cases, one line each
    findings: dict[str, int] = field(default_factory=dict)  # case id -> findings explained (explain --findings)
    processes: set = field(default_factory=set)
    model_loads: int = 0
    seconds: float = 0.0

    def summary(self, engine: str, cases: int) -> CohortSummary:
        return CohortSummary(
            engine,
            cases,
            len(self.done),
            len(self.skipped),
            len(self.failed),
            len(self.processes),
            self.model_loads,
            round(self.seconds, 3),
            len(self.recomputed),
            dict(self.findings) or None,
        )


def partial_folder(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{PARTIAL_SUFFIX}")


def run_case(task, case: CohortCase, out: Path) -> dict:
    """One case (in whichever process runs it): its outputs into ``task.folder(out, case)``, or
    its one-line message. Returns a small record of what happened (and what the task's run adds:
    the findings an explain case explained)."""
    final = task.folder(out, case.id)
    staging = partial_folder(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    loads, start = model_loads(), time.perf_counter()
    status, message, added = "done", "", {}
    try:
        added = task.run(case, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except SegGradCAMError as error:
        status, message = "failed", (str(error).splitlines() or [type(error).__name__])[0]
    except Exception as error:  # a defect: recorded like bad input; the traceback goes to the log
        traceback.print_exc()
        status, message = "failed", f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "case": case.id,
        "status": status,
        "message": message,
        "seconds": round(time.perf_counter() - start, 3),
        "process": f"{socket.gethostname()}:{os.getpid()}",
        "model_loads": model_loads() - loads,
        **added,
    }


def _remove_partial_folders(task, out: Path, cases: Sequence[CohortCase]) -> None:
    for case in cases:
        shutil.rmtree(partial_folder(task.folder(out, case.id)), ignore_errors=True)


def input_files(case: CohortCase) -> dict:
    """What ``case``'s channel files are now: ``{"inputs": [{path, size, mtime_ns}, ...]}`` (a
    missing file without size: the case fails when it runs)."""
    files = []
    for path in case.inputs:
        try:
            stat = os.stat(path)
            files.append({"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        except OSError:
            files.append({"path": path})
    return {"inputs": files}


def _earlier_state(task, out: Path) -> dict | None:
    """``cohort.json`` of an earlier run into ``out``, or None; refuses one with other options."""
    state = out / STATE_FILE
    if not state.exists():
        return None
    try:
        recorded = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON (e.g. cut short)
        recorded = None
    valid = isinstance(recorded, dict) and isinstance(recorded.get("options", {}), dict)
    if not valid or not isinstance(recorded.get("cases", {}), (dict, list)):
        raise SegGradCAMError(
            f"{state} is damaged (not the record of a cohort run); move it away to run every case again, "
            "or give another --out."
        )
    theirs, mine = recorded.get("options", {}), task.fingerprint()
    if recorded.get("command") != task.command or theirs != mine:
        differ = sorted(k for k in {**theirs, **mine} if theirs.get(k) != mine.get(k))
        raise SegGradCAMError(
            f"{out} holds a cohort run of '{recorded.get('command')}' with other options "
            f"({', '.join(differ) or 'command'}); give another --out or remove that folder."
        )
    return recorded


def _remove_earlier_release_cases(task, out: Path, ids: list) -> str:
    """An earlier release named case folders by list position and recorded no input files
    (``cases`` a list of ids): its finished case folders are removed (every case is run again
    under its own id, nothing mixed); the line that says so."""
    removed = 0
    for name in ids:
        folder = task.folder(out, str(name))
        if str(name).strip(".") and Path(str(name)).name == name and (folder / task.done_file).is_file():
            shutil.rmtree(folder)
            removed += 1
    return (
        f"{out} was written by an earlier release whose case ids followed the list's order: its {removed} "
        "finished case folder(s) were removed and every case is computed again under an id of its own files."
    )


def _check_state(task, out: Path, cases: Sequence[CohortCase], report: CohortReport) -> tuple[list, dict]:
    """The cases still to run and the records of ``cohort.json``'s ``cases`` (id -> input
    files). A finished case is skipped when its input files are those recorded, else removed
    and run again (noted in ``report``). Refuses an output folder of a run with other options,
    and a case folder that is not a cohort run's (nothing of the user's is replaced)."""
    earlier = _earlier_state(task, out)
    recorded = {} if earlier is None else earlier.get("cases", {})
    if isinstance(recorded, list):
        report.notes.append(_remove_earlier_release_cases(task, out, recorded))
        recorded = {}
    now = {case.id: input_files(case) for case in cases}
    pending = []
    for case in cases:
        folder = task.folder(out, case.id)
        if earlier is not None and (folder / task.done_file).is_file():
            if recorded.get(case.id) == now[case.id]:
                report.skipped.append(case.id)
                continue
            report.recomputed.append(case.id)
        elif folder.exists():
            raise SegGradCAMError(
                f"{folder} exists and is not a finished case of this cohort run; give another --out or move it away."
            )
        pending.append(case)
    for case_id in report.recomputed:  # stale outputs go before their case runs again
        shutil.rmtree(task.folder(out, case_id))
    if report.recomputed:
        shown = ", ".join(report.recomputed[:5]) + (", ..." if len(report.recomputed) > 5 else "")
        report.notes.append(
            f"{len(report.recomputed)} finished case(s) run again: their input files are not those "
            f"recorded at their run ({shown})."
        )
    return pending, {**recorded, **now}


def _write_state(out: Path, state: dict) -> None:
    """``cohort.json``, replaced whole."""
    partial = out / f".{STATE_FILE}{PARTIAL_SUFFIX}"
    partial.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(partial, out / STATE_FILE)


def _write_failures(out: Path, cases: Sequence[CohortCase], failed: dict[str, str]) -> None:
    with open(out / FAILURES_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "inputs", "message"])
        for case in cases:
            if case.id in failed:
                writer.writerow([case.id, ",".join(case.inputs), failed[case.id]])


def run_cohort(
    task, cases: Sequence[CohortCase], out: Path, options: EngineOptions, progress: Callable[..., None] | None = None
) -> CohortReport:
    """Run ``task`` on every case of ``cases`` not complete in ``out``; writes ``cohort.json`` and
    ``failures.csv``. ``progress("cases", done, total, failed=n)`` after each case."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        report = CohortReport()
        pending, records = _check_state(task, out, cases, report)
        state = {"command": task.command, "options": task.fingerprint(), "cases": records}
        _write_state(out, state)
    except OSError as error:
        raise unwritable(out, error) from None
    start = time.perf_counter()

    def record(result: dict) -> None:
        if result["status"] == "done":
            report.done.append(result["case"])
            if "findings" in result:
                report.findings[result["case"]] = result["findings"]
        else:
            report.failed[result["case"]] = result["message"]
        if "process" in result:
            report.processes.add(result["process"])
            report.model_loads += result["model_loads"]
        if progress is not None:
            progress("cases", len(report.done) + len(report.failed), len(pending), failed=len(report.failed))

    if progress is not None:
        progress("cases", 0, len(pending), failed=0)
    try:
        if pending:
            (_run_on_ray if options.engine == "ray" else _run_here)(task, pending, out, options, record)
    finally:
        _remove_partial_folders(task, out, pending)
    report.seconds = time.perf_counter() - start
    _write_failures(out, cases, report.failed)
    state["last_run"] = report.summary(options.engine, len(cases)).to_json()
    _write_state(out, state)
    return report


def _run_here(
    task, pending: Sequence[CohortCase], out: Path, options: EngineOptions, record: Callable[[dict], None]
) -> None:
    for case in pending:
        record(run_case(task, case, out))


def _start_ray(options: EngineOptions) -> str | None:
    """Join the cluster at ``options.ray_address``, or start a local instance on 127.0.0.1 in a
    temporary folder (returned, to be removed after shutdown)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves this machine
    token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )
    if options.ray_address is not None and token:
        # clusters started by `ray start` use token authentication; Ray's client sends the token only when told
        # (before Ray is imported)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise SegGradCAMError(
            '--engine ray needs Ray: pip install -e ".[cluster]" (or pip install "ray>=2.40").'
        ) from None
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if options.ray_address is not None:
        try:
            ray.init(address=options.ray_address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SegGradCAMError(
                f"Cannot join the Ray cluster at {options.ray_address}: "
                f"{(str(error).splitlines() or [''])[0]} (is it running? with token authentication, "
                "this machine needs the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        return None
    folder = tempfile.mkdtemp(prefix="sgc-ray-")  # Ray's sockets need a short path
    cpus = None if options.workers is None else options.workers * options.cpus_per_case
    ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", _temp_dir=folder, **quiet)
    return folder


def _run_on_ray(
    task, pending: Sequence[CohortCase], out: Path, options: EngineOptions, record: Callable[[dict], None]
) -> None:
    folder = _start_ray(options)  # imports Ray once its environment is set
    import ray

    refs: dict = {}
    # Ctrl-C is noted here and acted on between waits: a KeyboardInterrupt raised inside Ray's calls
    # was seen lost once (the cohort then ran to its end)
    interrupted: list[bool] = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)) if main else None
    try:
        available = ray.cluster_resources()
        for name, need in (("CPU", options.cpus_per_case), ("GPU", options.gpus_per_case)):
            if need and available.get(name, 0) < need:
                raise SegGradCAMError(
                    f"Each case asks for {need:g} {name}(s) but the Ray cluster has "
                    f"{available.get(name, 0):g}; lower --{name.lower()}s-per-case."
                )
        remote = ray.remote(run_case).options(
            num_cpus=options.cpus_per_case,
            num_gpus=options.gpus_per_case,
            max_retries=options.max_retries,
            name="seggradcam_case",
        )
        refs = {remote.remote(task, case, out): case for case in pending}
        while refs:
            if interrupted:
                raise KeyboardInterrupt
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            if not ready:
                continue
            case = refs.pop(ready[0])
            try:
                record(ray.get(ready[0]))
            except ray.exceptions.RayError as error:
                record(
                    {
                        "case": case.id,
                        "status": "failed",
                        "message": f"its worker process died {options.max_retries + 1} times "
                        "(killed or out of memory): "
                        f"{(str(error).strip().splitlines() or [type(error).__name__])[0]}",
                    }
                )
    finally:
        for ref in refs:  # Ctrl-C or an error: cancel what is left
            ray.cancel(ref, force=True)
        ray.shutdown()
        if main:
            signal.signal(signal.SIGINT, previous)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
