"""Evaluate how faithful a model's heatmaps are over a data set: load the model into its
pipeline, score the cases (the demo set here; a list of volumes case by case through a cohort
engine), write ``metrics.json`` (an :class:`~SegGradCAMLib.reports.EvaluationReport`), tables,
plots and report, and, when asked, the model card's method choice."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegGradCAMError
from ..evaluation.cases import DEMO_DATA, demo_cases
from ..evaluation.scoring import EvalConfig, EvalResult, evaluate
from ..findings import FindingRequest
from ..inference import ProgressCallback
from ..models.cards import card_path, read_card, resolve_method
from ..models.registry import REGISTRY
from ..declared_options import option_text
from ..options import EvaluateOptions
from ..pipelines import Pipeline, load_pipeline
from ..reports import EvaluationReport
from ..selection import AUTO_LAYER, AUTO_METHOD, class_indices, layer_selection, pick_device
from .outputs import check_out_folder, unwritable
from .resources import peak_memory_mb, set_threads


def check_card_writable(options: EvaluateOptions) -> None:
    """--write-card needs a model folder or file, Deletion among the metrics, and --force to
    replace a card's earlier choice (checked before the evaluation runs)."""
    if options.model in REGISTRY:
        raise SegGradCAMError(
            f"{options.model} is a registry model: its card ships with SegGradCAM "
            "(SegGradCAM/Resources/Models/cards); --write-card is for model folders and files."
        )
    if "deletion" not in options.metrics:
        raise SegGradCAMError("--write-card chooses by Deletion AUC: include deletion in --metrics.")
    card = read_card(card_path(options.model))
    if card and card.get("default_method") and not options.force:
        raise SegGradCAMError(f"{card_path(options.model)} already records a method choice; add --force to replace it.")


def eval_config(options: EvaluateOptions, labels, device: str) -> EvalConfig:
    """The engine's configuration of ``options`` (``auto`` methods resolved by the model's card)."""
    methods = [resolve_method(m, options.model).method if m == AUTO_METHOD else m for m in options.methods]
    return EvalConfig(
        metrics=list(options.metrics),
        methods=list(dict.fromkeys(methods)),
        baselines=list(options.baselines),
        layers=layer_selection(options.layers),
        classes=class_indices(options.classes, labels),
        step=options.step,
        baseline=options.baseline,
        sigma_mm=options.sigma_mm,
        neighbourhood_mm=options.neighbourhood_mm,
        road_percentages=options.road_fractions,
        seed=options.seed,
        batch_size=options.batch_size,
        max_memory_gb=options.max_memory_gb,
        device=device,
        findings=FindingRequest(options.min_finding_mm3, options.max_findings) if options.findings else None,
    )


@dataclass
class EvaluationRun:
    """An evaluation once its model is loaded: options, pipeline, configuration, timings."""

    options: EvaluateOptions
    pipeline: Pipeline
    config: EvalConfig
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, options: EvaluateOptions, progress: ProgressCallback | None = None) -> "EvaluationRun":
        """Load the model and check that its heatmaps can be scored as asked."""
        step = progress or (lambda stage, done, total: None)
        if options.write_card:
            check_card_writable(options)
        if options.findings and options.data == DEMO_DATA:
            raise SegGradCAMError(
                f"--findings scores the components of whole volumes; --data {DEMO_DATA} holds single slices. "
                "Give volumes (e.g. cases written by python -m SegGradCAMLib.demo.data) or leave out --findings."
            )
        check_out_folder(Path(options.out))
        step("read", 0, 1)
        set_threads(options.threads)
        start = time.perf_counter()
        device = pick_device(options.device)
        pipeline = load_pipeline(options.model, trust=options.trust_model, device=device)
        pipeline.check_scorable(options.findings)
        step("startup", 1, 1)
        run = cls(options, pipeline, eval_config(options, pipeline.model.spec.labels, device))
        run.timings["load_s"] = time.perf_counter() - start
        return run

    def evaluate_demo(self, progress: ProgressCallback | None = None) -> EvalResult:
        """The demo model's held-out slices, in this process."""
        step = progress or (lambda stage, done, total: None)
        if self.options.engine.engine != "local":
            raise SegGradCAMError(f"--data {DEMO_DATA} runs in this process; give a list of volumes for --engine ray.")
        cases = demo_cases(self.pipeline.model, self.options.max_slices)
        step("read", 1, 1)
        step("cases", 0, len(cases))
        result = evaluate(
            self.pipeline.model, cases, self.config, progress=lambda done, total: step("cases", done, total)
        )
        self.timings["evaluate_s"] = result.seconds
        return result

    def write(self, result: EvalResult) -> EvaluationReport | None:
        """metrics.json, tables, plots and report.html into the output folder; None without rows."""
        from ..evaluation.report import write_outputs

        if not result.rows:
            return None
        out = Path(self.options.out)
        try:
            report = write_outputs(
                out,
                self.pipeline.model,
                self.options.data,
                result,
                self.config,
                self.timings,
                self.config.device,
                peak_memory_mb(self.config.device),
            )
        except OSError as error:
            raise unwritable(out, error) from None
        print(
            f"Evaluated {report.cases} cases in {report.timings['evaluate_s']:.0f} s; "
            f"wrote {out / 'metrics.json'}, metrics.csv, report.html"
        )
        return report

    def finish(self, report: EvaluationReport | None) -> EvaluationReport:
        """Refuse an evaluation that scored nothing; write the card's choice when asked."""
        if report is None:
            raise SegGradCAMError(
                f"The network predicts none of the chosen classes anywhere in {self.options.data}; nothing to evaluate."
            )
        if self.options.write_card:
            path = write_card(self.options, report, self.pipeline.model.chosen_layers(AUTO_LAYER))
            print(f"Wrote the method choice to {path}")
        return report


def write_card(options: EvaluateOptions, report: EvaluationReport, stage) -> Path:
    """The evaluated method with the lowest pooled Deletion AUC on the default stage, with its
    figures, written into the model's card (other fields of an existing card kept)."""
    methods = report.config["methods"]
    evaluated = {s["layer"] for s in report.summary if s["method"] in methods}
    layer = stage[0] if isinstance(stage, list) and stage else (min(evaluated) if len(evaluated) == 1 else None)
    rows = {
        s["method"]: s["deletion_auc"]
        for s in report.summary
        if s["class"] == "all classes" and s["layer"] == layer and s["method"] in methods
    }
    if not rows:
        raise SegGradCAMError(f"No CAM method was evaluated on the default stage {layer}; nothing to choose from.")
    best = min(rows, key=lambda m: rows[m]["mean"])
    path = card_path(options.model)
    card = read_card(path) or {}
    shown = (
        "model",
        "data",
        "metrics",
        "methods",
        "baselines",
        "layers",
        "classes",
        "max_slices",
        "step",
        "baseline",
        "sigma_mm",
        "neighbourhood_mm",
        "road_percentages",
        "seed",
    )
    card["default_method"] = {
        "method": best,
        "layer": layer,
        "metric": "Deletion AUC (lower is better), all classes pooled, mean [95% CI]",
        "evidence": {m: f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for m, v in rows.items()},
        "data": f"{options.data} ({report.cases} cases)",
        "command": " ".join(
            [
                "seggradcam evaluate",
                *(f"--{name.replace('_', '-')} {option_text(getattr(options, name))}" for name in shown),
                "--write-card",
            ]
        ),
        "basis": f"lowest Deletion AUC on the default stage among {', '.join(rows)} in seggradcam evaluate",
    }
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path
