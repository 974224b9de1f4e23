"""Options and summary of cohort runs (``explain --cohort LIST``, ``evaluate --data LIST``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cohort.run import ENGINES, FAILURES_FILE, CohortReport, EngineOptions
from ..errors import SegGradCAMError


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and the Ray options, shared by ``explain`` and ``evaluate``."""
    group = parser.add_argument_group("cohorts (a list of cases; see README 'Run on a cohort / a cluster')")
    group.add_argument("--engine", default="local", choices=ENGINES,
                       help="local: one case after another in this process; ray: Ray tasks, one per case")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="join an existing Ray cluster ('auto' or host:port); without it a local Ray instance "
                            "starts on 127.0.0.1 and stops at the end")
    group.add_argument("--workers", type=int, metavar="N",
                       help="local Ray instance: cases at once (default: as many as the CPUs allow)")
    group.add_argument("--cpus-per-case", type=float, default=1.0, help="Ray: CPUs each case reserves (default 1)")
    group.add_argument("--gpus-per-case", type=float, default=0.0,
                       help="Ray: GPUs each case reserves, fractions allowed (e.g. 0.25); > 0 runs the cases on the GPU")
    group.add_argument("--max-retries", type=int, default=2,
                       help="Ray: re-runs of a case whose worker process died (killed, out of memory)")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    options = EngineOptions(args.engine, args.ray_address, args.workers, args.cpus_per_case, args.gpus_per_case,
                            args.max_retries)
    options.check()
    return options


def case_device(device: str, options: EngineOptions) -> str:
    """The device the cases run on: with Ray and ``auto``, the GPU when cases reserve one, else the
    CPU (Ray's accounting decides who uses a GPU); otherwise as for a single run."""
    from ..selection import pick_device

    if options.engine == "ray" and device == "auto":
        return "cuda" if options.gpus_per_case > 0 else "cpu"
    return device if options.engine == "ray" else pick_device(device)


def finish_cohort(command: str, report: CohortReport, options: EngineOptions, cases: int, out: Path) -> dict:
    """Print what the run did; a run with failed cases ends in an error naming failures.csv (the
    other cases' outputs stay)."""
    where = f"Ray ({options.ray_address or 'local instance'})" if options.engine == "ray" else "this process"
    print(f"{command}: {cases} cases -> {out}: {len(report.done)} done in {report.seconds:.1f} s, "
          f"{len(report.skipped)} complete before (skipped), {len(report.failed)} failed; {where}, "
          f"{len(report.processes)} worker process(es), model loaded {report.model_loads} time(s)")
    if report.failed:
        first = next(iter(report.failed.items()))
        raise SegGradCAMError(f"{len(report.failed)} of {cases} cases failed, listed in {out / FAILURES_FILE} "
                              f"(first: {first[0]}: {first[1]}); the other cases' outputs are complete.")
    return report.as_dict(options.engine, cases)
