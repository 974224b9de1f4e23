"""Cohort runs of the command line (``explain --cohort LIST``, ``evaluate --data LIST``): their
options, the per-case tasks the engines of :mod:`SegGradCAMLib.cohort.run` run, and the summary.

A task object holds the command's options (it travels to Ray's worker processes by value); its
``run`` writes one case's outputs into a folder, through the same functions a single run uses,
with the model loaded once per process.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

from ..cohort.cases import CohortCase
from ..cohort.model_cache import cached_model
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
    """The engine options of ``args`` (checked by :func:`~SegGradCAMLib.cohort.run.run_cohort`)."""
    return EngineOptions(args.engine, args.ray_address, args.workers, args.cpus_per_case, args.gpus_per_case,
                         args.max_retries)


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


@dataclass
class ExplainTask:
    """``seggradcam explain`` of one case into ``OUT/<case id>/``, as a single run writes it."""

    args: argparse.Namespace
    command = "explain"
    done_file = "explain.json"

    def folder(self, out: Path, case: CohortCase) -> Path:
        return out / case.id

    def fingerprint(self) -> dict:
        """The options that shape a case's outputs (a resumed run must use the same)."""
        keep = ("model", "layers", "method", "classes", "region", "heatmap_dtype", "amp", "step_size", "folds",
                "checkpoint", "faithfulness", "mirror", "no_overview")
        return {k: str(getattr(self.args, k)) for k in keep}

    def run(self, case: CohortCase, folder: Path) -> None:
        from .explain import explain_command, load_explain_model

        args = copy.copy(self.args)
        args.inputs, args.out, args.cohort = list(case.inputs), folder, None

        def load(a: argparse.Namespace, device: str):
            key = (a.model, a.trust_model, device, a.folds, a.checkpoint)
            return cached_model(key, lambda: load_explain_model(a, device))

        explain_command(args, None, load)


@dataclass
class EvaluateTask:
    """``seggradcam evaluate``'s rows, curves and gallery of one case into ``OUT/cases/<case id>/``
    (merged over the cohort afterwards)."""

    model: str
    trust_model: bool
    config: object  # EvalConfig
    max_slices: int
    command = "evaluate"
    done_file = "evaluation.json"

    def folder(self, out: Path, case: CohortCase) -> Path:
        return out / "cases" / case.id

    def fingerprint(self) -> dict:
        from ..evaluation.dataset import config_dict

        return {"model": self.model, "max_slices": self.max_slices,
                **{k: str(v) for k, v in config_dict(self.config).items() if k != "device"}}

    def run(self, case: CohortCase, folder: Path) -> None:
        from ..evaluation.dataset import evaluate_volume, save_result
        from ..models import load_model

        device = self.config.device
        model = cached_model((self.model, self.trust_model, device),
                             lambda: load_model(self.model, trust=self.trust_model, device=device))
        result = evaluate_volume(model, case.inputs, case.id, case.index, self.config, self.max_slices)
        save_result(result, folder, with_gallery=case.index < self.config.gallery)
