"""The per-case tasks of ``explain --cohort LIST`` and ``evaluate --data LIST``, and the cohort
runs of both.

A task holds typed options (it travels to Ray's worker processes by value); its ``run`` writes
one case's outputs into a folder through the same function a single run uses, with the model
loaded once per process.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from ..errors import SegGradCAMError
from ..declared_options import option_text
from ..engine_options import EngineOptions
from ..options import ExplainOptions
from ..reports import CohortSummary
from .cases import CohortCase, cohort_cases
from .model_cache import cached_model
from .run import FAILURES_FILE, CohortReport, run_cohort


def cached_pipeline(model: str, trust: bool, device: str, folds=None, checkpoint=None):
    """The pipeline of ``model`` loaded once per process (a Ray worker runs many cases)."""
    from ..pipelines import load_pipeline

    key = (model, trust, device, folds, checkpoint)
    return cached_model(
        key, lambda: load_pipeline(model, trust=trust, device=device, folds=folds, checkpoint=checkpoint)
    )


@dataclass
class ExplainTask:
    """``seggradcam explain`` of one case into ``OUT/<case id>/``, as a single run writes it."""

    options: ExplainOptions  # the cohort's options; each case gets its inputs, folder and ``device``
    device: str
    command = "explain"
    done_file = "explain.json"

    def folder(self, out: Path, case_id: str) -> Path:
        return out / case_id

    def fingerprint(self) -> dict:
        """The options that shape a case's outputs (a resumed run must use the same)."""
        o = self.options
        keep = {
            "model": o.model,
            "layers": o.layers,
            "method": o.method,
            "classes": o.classes,
            "region": o.region,
            "heatmap_dtype": o.heatmap_dtype,
            "amp": o.amp,
            "step_size": o.step_size,
            "folds": o.folds,
            "checkpoint": o.checkpoint,
            "faithfulness": o.faithfulness,
            "mirror": o.mirror,
            "no_overview": not o.overview,
        }
        if o.dicom.write_dicom:  # recorded only when given: cohorts of earlier releases resume
            keep["dicom"] = True
        keep.update(self._finding_options())
        return {k: option_text(v) for k, v in keep.items()}  # as typed on the command line

    def _finding_options(self) -> dict:
        """The findings and probability options in effect, recorded only when given (as ``dicom``)."""
        f = self.options.findings
        keep: dict = {}
        if f.wanted:
            keep.update(findings=True, min_finding_mm3=f.min_finding_mm3, max_findings=f.max_findings)
            if f.point is not None:
                keep.update(point=f.point, point_radius_mm=f.point_radius_mm)
        if f.writes_probabilities:
            keep["probabilities"] = True
        return keep

    def run(self, case: CohortCase, folder: Path) -> dict:
        """One case's outputs into ``folder``; what its record adds: the findings it explained."""
        from ..runs.explain import explain_files

        options = self.options.for_case(case.inputs, folder, self.device)
        report = explain_files(
            options, None, lambda o, device: cached_pipeline(o.model, o.trust_model, device, o.folds, o.checkpoint)
        )
        return {} if report.findings is None else {"findings": len(report.findings["findings"])}


@dataclass
class EvaluateTask:
    """``seggradcam evaluate``'s rows, curves and gallery of one case into ``OUT/cases/<case id>/``
    (merged over the cohort afterwards)."""

    model: str
    trust_model: bool
    config: object  # EvalConfig
    max_slices: int
    max_voxels: int  # refused, not a different result: not in the fingerprint
    volumes: bool  # a 3D model: 2D models perturb whole slices, their neighbourhood_mm changes nothing
    command = "evaluate"
    done_file = "evaluation.json"

    def folder(self, out: Path, case_id: str) -> Path:
        return out / "cases" / case_id

    def fingerprint(self) -> dict:
        from ..evaluation.scoring import config_dict

        ignored = {"device", "max_memory_gb", *(() if self.volumes else ("neighbourhood_mm",))}
        # 3D targets smaller than a step are stepped more finely at both ends since this was recorded: a
        # 3D cohort recorded before it is not resumed (its cases' AUCs would be pooled with other steps)
        steps = {"steps_3d": "finer at both ends for a target smaller than a step"} if self.volumes else {}
        return {
            "model": self.model,
            "max_slices": self.max_slices,
            **{k: str(v) for k, v in config_dict(self.config).items() if k not in ignored},
            **steps,
        }

    def run(self, case: CohortCase, folder: Path) -> dict:
        from ..evaluation.scoring import evaluate_volume, save_result

        pipeline = cached_pipeline(self.model, self.trust_model, self.config.device)
        result = evaluate_volume(
            pipeline, case.inputs, case.id, case.index, self.config, self.max_slices, self.max_voxels
        )
        save_result(result, folder, with_gallery=case.index < self.config.gallery)
        return {}


def finish_cohort(command: str, report: CohortReport, options: EngineOptions, cases: int, out: Path) -> CohortSummary:
    """Print what the run did (its notes first); a run with failed cases ends in an error naming failures.csv (the
    other cases' outputs stay)."""
    for note in report.notes:
        print(f"{command}: {note}")
    if report.findings:
        shown = ", ".join(f"{case} {n}" for case, n in itertools.islice(report.findings.items(), 5))
        print(
            f"{command}: {sum(report.findings.values())} findings in the {len(report.findings)} case(s) done now "
            f"({shown}{', ...' if len(report.findings) > 5 else ''}); each case's in {out}/<case>/findings.json"
        )
    where = f"Ray ({options.ray_address or 'local instance'})" if options.engine == "ray" else "this process"
    print(
        f"{command}: {cases} cases -> {out}: {len(report.done)} done in {report.seconds:.1f} s, "
        f"{len(report.skipped)} complete before (skipped), {len(report.recomputed)} run again (inputs changed), "
        f"{len(report.failed)} failed; {where}, "
        f"{len(report.processes)} worker process(es), model loaded {report.model_loads} time(s)"
    )
    if report.failed:
        first = next(iter(report.failed.items()))
        raise SegGradCAMError(
            f"{len(report.failed)} of {cases} cases failed, listed in {out / FAILURES_FILE} "
            f"(first: {first[0]}: {first[1]}); the other cases' outputs are complete."
        )
    return report.summary(options.engine, cases)


def explain_cohort(options: ExplainOptions, progress=None) -> CohortSummary:
    """``explain --cohort LIST``: each case as a single run writes it, into ``OUT/<case id>/``;
    returns what the run did."""
    from ..models.cards import resolve_method

    cases = cohort_cases(str(options.cohort))
    resolve_method(options.method, options.model)  # a bad card fails here, not in every case
    task = ExplainTask(options, cohort_device(options.engine, options.device))
    report = run_cohort(task, cases, Path(options.out), options.engine, progress)
    return finish_cohort("explain", report, options.engine, len(cases), Path(options.out))


def cohort_device(engine: EngineOptions, device: str) -> str:
    """The device the cases run on: with Ray, :meth:`EngineOptions.case_device` (Ray's accounting
    decides who uses a GPU); in this process, as for a single run."""
    from ..selection import pick_device

    return engine.case_device(device) if engine.engine == "ray" else pick_device(device)


def evaluate_cohort(run, progress=None):
    """Each volume of ``evaluate --data LIST`` (``run``: an :class:`~SegGradCAMLib.runs.evaluate.EvaluationRun`)
    evaluated by the options' engine into ``OUT/cases/<id>/``; returns what the run did, the cases,
    and the results of every finished case merged in list order."""
    import dataclasses

    from ..evaluation.scoring import load_result, merge_results

    options = run.options
    cases = cohort_cases(options.data)
    if progress is not None:
        progress("read", 1, 1)
    config = dataclasses.replace(run.config, device=cohort_device(options.engine, options.device))
    volumes = run.pipeline.model.spec.spatial_dims == 3
    task = EvaluateTask(options.model, options.trust_model, config, options.max_slices, options.max_voxels, volumes)
    ran = run_cohort(task, cases, Path(options.out), options.engine, progress)
    run.timings["evaluate_s"] = ran.seconds
    parts = [load_result(task.folder(Path(options.out), c.id)) for c in cases if c.id not in ran.failed]
    return ran, cases, merge_results(parts, run.config.gallery)
