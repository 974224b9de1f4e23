"""``seggradcam evaluate``: how faithful the heatmaps are, over a data set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SegGradCAMError
from ..selection import (
    ALL_CLASSES,
    AUTO_LAYER,
    DEFAULT_PERCENTAGES_TEXT,
    class_indices,
    fractions_from_percentages,
    layer_selection,
    pick_device,
    split_list,
)
from ..models.cards import AUTO_METHOD, resolve_method
from .cohort import EvaluateTask, add_engine_options, case_device, engine_options, finish_cohort
from .resources import set_threads

if TYPE_CHECKING:  # torch stays out of the import of the command line
    from ..inference import ProgressCallback


def add_evaluate_parser(sub, parents: list) -> None:
    """The ``evaluate`` subcommand."""
    evaluate = sub.add_parser("evaluate", parents=parents, help="faithfulness of the heatmaps: Deletion/Insertion, ROAD, sanity checks")
    evaluate.add_argument("--model", default="hdbet", help="registered model name or a model file/folder")
    evaluate.add_argument("--data", required=True,
                          help="folder of volumes (one case each), a list file (one case per line, channels "
                               "comma-separated), or 'demo' (the demo model's held-out slices)")
    evaluate.add_argument("--out", required=True, type=Path, help="output folder")
    evaluate.add_argument("--metrics", default="deletion,insertion,road,randomization",
                          help="comma-separated: deletion, insertion (computed together), road, randomization")
    evaluate.add_argument("--methods", default="gradcam",
                          help="comma-separated CAM methods (gradcam, gradcam++, hirescam, layercam; auto: the "
                               "model card's choice, as explain)")
    evaluate.add_argument("--baselines", default="random,mask,gradient",
                          help="comma-separated baseline explanations (random, mask, gradient), or 'none'")
    evaluate.add_argument("--layers", default=AUTO_LAYER, help="'auto' (finest decoder stage) or comma-separated layer names")
    evaluate.add_argument("--classes", default=ALL_CLASSES, help="'all' or comma-separated class names or indices")
    evaluate.add_argument("--max-slices", type=int, default=100,
                          help="2D models: at most this many slices per volume (drawn with --seed), or of the "
                               "'demo' set in all; a 3D volume is one case")
    evaluate.add_argument("--step", type=float, default=0.01, help="fraction of voxels per Deletion/Insertion step")
    evaluate.add_argument("--baseline", default="blur", choices=["blur", "mean"], help="what removed voxels become")
    evaluate.add_argument("--sigma-mm", type=float, default=20.0,
                          help="blur sigma in mm for --baseline blur (larger than the structures to remove)")
    evaluate.add_argument("--road-percentages", default=DEFAULT_PERCENTAGES_TEXT, help="ROAD removal percentages")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", type=int, default=32, help="perturbed inputs per network call")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--threads", type=int, default=0,
                          help="CPU threads for torch (0: torch's default; 1 is fastest for small 2D "
                               "models on a busy machine)")
    evaluate.add_argument("--trust-model", action="store_true", help="allow model formats that run code")
    evaluate.add_argument("--write-card", action="store_true",
                          help="write the method with the lowest Deletion AUC on the default stage into the model "
                               "folder's seggradcam_card.json (what --method auto then uses)")
    evaluate.add_argument("--force", action="store_true", help="with --write-card: replace an existing card's choice")
    add_engine_options(evaluate)


def evaluate_command(args: argparse.Namespace, progress: ProgressCallback | None = None) -> dict:
    """Load model and cases, evaluate, write metrics.json/csv, plots and report.html;
    ``progress(stage, done, total)``: stages ``read`` and ``cases``. A list of volumes is a
    cohort (each volume a task of ``--engine``, its results in ``OUT/cases/<id>/``, merged here)."""
    from ..cohort.cases import cohort_cases
    from ..evaluation.dataset import DEMO_DATA, EvalConfig, check_scorable, demo_cases, evaluate
    from ..evaluation.report import write_outputs
    from ..models import load_model

    if args.max_slices < 1 or not 0 < args.step <= 1:
        raise SegGradCAMError("--max-slices must be >= 1 and --step a fraction in (0, 1].")
    if args.write_card:
        check_card_writable(args)
    percentages = fractions_from_percentages(args.road_percentages, "--road-percentages")
    step = progress or (lambda stage, done, total: None)
    step("read", 0, 1)
    set_threads(args.threads)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = pick_device(args.device)
    model = load_model(args.model, trust=args.trust_model, device=device)
    check_scorable(model)
    step("startup", 1, 1)
    classes = class_indices(args.classes, model.spec.labels)
    methods = [resolve_method(m, args.model).method if m == AUTO_METHOD else m for m in split_list(args.methods)]
    config = EvalConfig(
        metrics=split_list(args.metrics), methods=list(dict.fromkeys(methods)), baselines=split_list(args.baselines),
        layers=layer_selection(args.layers), classes=classes, step=args.step,
        baseline=args.baseline, sigma_mm=args.sigma_mm, road_percentages=percentages, seed=args.seed,
        batch_size=args.batch_size, device=device,
    )
    config.check()
    ran = None
    if args.data == DEMO_DATA:
        if args.engine != "local":
            raise SegGradCAMError(f"--data {DEMO_DATA} runs in this process; give a list of volumes for --engine ray.")
        cases = demo_cases(model, args.max_slices)
        timings["load_s"] = time.perf_counter() - start
        step("read", 1, 1)
        step("cases", 0, len(cases))
        result = evaluate(model, cases, config, progress=lambda done, total: step("cases", done, total))
        timings["evaluate_s"] = result.seconds
    else:
        options = engine_options(args)
        cohort = cohort_cases(args.data)
        timings["load_s"] = time.perf_counter() - start
        step("read", 1, 1)
        ran, result = evaluate_cohort(args, config, options, cohort, progress)
        timings["evaluate_s"] = ran.seconds
    report = write_outputs(args.out, model, args.data, result, config, timings, device) if result.rows else {}
    if report:
        print(f"Evaluated {report['cases']} cases in {report['timings']['evaluate_s']:.0f} s; "
              f"wrote {args.out / 'metrics.json'}, metrics.csv, report.html")
    if ran is not None:  # failed cases end the command here, after the others' outputs are written
        report["cohort"] = finish_cohort("evaluate", ran, options, len(cohort), args.out)
    if not report:
        raise SegGradCAMError(f"The network predicts none of the chosen classes anywhere in {args.data}; "
                              "nothing to evaluate.")
    if args.write_card:
        path = write_card(args, report, model.chosen_layers(AUTO_LAYER))
        print(f"Wrote the method choice to {path}")
    return report


def evaluate_cohort(args: argparse.Namespace, config, options, cases, progress) -> tuple:
    """Each volume of ``cases`` evaluated by the engine of ``options`` into ``OUT/cases/<id>/``;
    returns what the run did and the results of every finished case (of this run and earlier
    ones) merged in list order."""
    import dataclasses

    from ..cohort.run import run_cohort
    from ..evaluation.dataset import load_result, merge_results

    task = EvaluateTask(args.model, args.trust_model,
                        dataclasses.replace(config, device=case_device(args.device, options)), args.max_slices)
    ran = run_cohort(task, cases, args.out, options, progress)
    parts = [load_result(task.folder(args.out, c)) for c in cases if c.id not in ran.failed]
    return ran, merge_results(parts, config.gallery)


def check_card_writable(args: argparse.Namespace) -> None:
    """--write-card needs a model folder or file, Deletion among the metrics, and --force to
    replace a card's earlier choice (checked before the evaluation runs)."""
    from ..models.cards import card_path, read_card
    from ..models.registry import REGISTRY

    if args.model in REGISTRY:
        raise SegGradCAMError(f"{args.model} is a registry model: its card ships with SegGradCAM "
                              "(SegGradCAM/Resources/Models/cards); --write-card is for model folders and files.")
    if "deletion" not in split_list(args.metrics):
        raise SegGradCAMError("--write-card chooses by Deletion AUC: include deletion in --metrics.")
    card = read_card(card_path(args.model))
    if card and card.get("default_method") and not args.force:
        raise SegGradCAMError(f"{card_path(args.model)} already records a method choice; add --force to replace it.")


def write_card(args: argparse.Namespace, report: dict, stage) -> Path:
    """The evaluated method with the lowest pooled Deletion AUC on the default stage, with its
    figures, written into the model's card (other fields of an existing card kept)."""
    import json

    from ..models.cards import card_path, read_card

    methods = report["config"]["methods"]
    evaluated = {s["layer"] for s in report["summary"] if s["method"] in methods}
    layer = stage[0] if isinstance(stage, list) and stage else (min(evaluated) if len(evaluated) == 1 else None)
    rows = {s["method"]: s["deletion_auc"] for s in report["summary"]
            if s["class"] == "all classes" and s["layer"] == layer and s["method"] in methods}
    if not rows:
        raise SegGradCAMError(f"No CAM method was evaluated on the default stage {layer}; nothing to choose from.")
    best = min(rows, key=lambda m: rows[m]["mean"])
    path = card_path(args.model)
    card = read_card(path) or {}
    card["default_method"] = {
        "method": best, "layer": layer, "metric": "Deletion AUC (lower is better), all classes pooled, mean [95% CI]",
        "evidence": {m: f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for m, v in rows.items()},
        "data": f"{args.data} ({report['cases']} cases)",
        "command": " ".join(["seggradcam evaluate", *(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in (
            "model", "data", "metrics", "methods", "baselines", "layers", "classes", "max_slices", "step", "baseline",
            "sigma_mm", "road_percentages", "seed")), "--write-card"]),
        "basis": f"lowest Deletion AUC on the default stage among {', '.join(rows)} in seggradcam evaluate",
    }
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path
