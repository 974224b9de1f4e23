"""The one entry for every front end: :func:`explain` and :func:`evaluate`, typed options in,
typed report out (the command line, the worker the 3D Slicer module and the web viewer start,
the cohort engines and the library user all call these)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .options import EvaluateOptions, ExplainOptions
from .reports import CohortSummary, EvaluationReport, ExplainReport

if TYPE_CHECKING:  # torch is imported when a run starts, not with the entry points
    from .inference import ProgressCallback


def explain(options: ExplainOptions, progress: ProgressCallback | None = None) -> ExplainReport | CohortSummary:
    """Segment and explain ``options.inputs`` into ``options.out`` (explain.json, the segmentation,
    one heatmap per class and layer, the overview); returns the report. With ``options.cohort``:
    every case of the list into ``OUT/<case id>/`` by the options' engine; returns what the
    cohort run did (a :class:`CohortSummary`). ``progress(stage, done, total)``."""
    if options.cohort is not None:
        from .cohort.tasks import explain_cohort

        return explain_cohort(options, progress)
    from .runs.explain import explain_files

    return explain_files(options, progress)


def evaluate(options: EvaluateOptions, progress: ProgressCallback | None = None) -> EvaluationReport:
    """Score the model's heatmaps over ``options.data`` (Deletion/Insertion, ROAD, sanity checks)
    into ``options.out`` (metrics.json, tables, plots, report.html); returns the report. A list of
    volumes is a cohort: each volume a task of the options' engine, merged here; failed cases end in
    an error after the others' outputs are written. ``progress(stage, done, total)``: stages
    ``read`` and ``cases``."""
    from .evaluation.cases import DEMO_DATA
    from .runs.evaluate import EvaluationRun

    run = EvaluationRun.start(options, progress)
    if options.data == DEMO_DATA:
        return run.finish(run.write(run.evaluate_demo(progress)))
    from .cohort.tasks import evaluate_cohort, finish_cohort

    ran, cases, result = evaluate_cohort(run, progress)
    report = run.write(result)
    cohort = finish_cohort("evaluate", ran, options.engine, len(cases), options.out)  # failed cases raise here
    if report is not None:
        report.cohort = cohort.to_json()  # returned with the report; metrics.json holds the merged cases
    return run.finish(report)
