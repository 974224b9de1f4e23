"""Benchmark: the 3D faithfulness protocol against the whole-volume one, on the shipped nnU-Net's
held-out case 0 and on HD-BET's Colin27 (each target perturbed within 10 mm of its mask, in steps of
that neighbourhood, against the whole volume in steps of the volume): AUCs, verdicts, network calls,
seconds, and how many voxels the first step removes against the size of each class.

    .venv/bin/python bench/faithfulness_3d.py --cases nnunet --out bench/results/faithfulness_3d.json

Each setting runs :func:`~SegGradCAMLib.evaluation.faithfulness.explanation_faithfulness` in this
process on the case as ``explain --faithfulness`` scores it (the model's default stage, the method of
its card); settings alternate with ``--repeats`` (seconds: medians).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from SegGradCAMLib.evaluation.deletion_insertion import neighbourhood
from SegGradCAMLib.evaluation.faithfulness import Target, explanation_faithfulness
from SegGradCAMLib.pipelines import load_pipeline
from SegGradCAMLib.selection import AUTO_METHOD
from SegGradCAMLib.models.cards import resolve_method

ROOT = Path(__file__).resolve().parents[1]
NNUNET = (
    ROOT
    / "SegGradCAM/Resources/Models/demo-lesions-nnunet/Dataset901_DemoLesions"
    / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
)
# (name, margin in mm: 0 is the whole volume, step)
SETTINGS = (("whole volume, 5 %", 0.0, 0.05), ("within 10 mm, 5 %", 10.0, 0.05), ("within 10 mm, 10 %", 10.0, 0.1))


def case_inputs(name: str, folder: Path) -> tuple[str, list[str]]:
    """(model, input files) of a case."""
    if name == "hdbet":
        return "hdbet", ["/usr/share/mricron/templates/ch2.nii.gz"]
    from SegGradCAMLib.demo import data as demo_data

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, folder / "demo")
    return str(NNUNET), [str(paths[c]) for c in demo_data.CHANNELS]


def scored_case(name: str, folder: Path):
    """(model name, pipeline, the case as ``explain --faithfulness`` scores it) of a case, every class
    asked."""
    model_name, paths = case_inputs(name, folder)
    pipeline = load_pipeline(model_name)
    classes = list(range(1, len(pipeline.model.spec.labels)))
    (case,) = pipeline.evaluation_cases(paths, name, classes, 1, 0, 32, "cpu")
    return model_name, pipeline, case


def measure(name: str, settings: list[tuple[str, float, float]], repeats: int, folder: Path) -> dict:
    """Every setting on one case, alternating, ``repeats`` times."""
    model_name, pipeline, case = scored_case(name, folder)
    model = pipeline.model
    classes = list(range(1, len(model.spec.labels)))
    layers = list(model.chosen_layers("auto"))
    method = resolve_method(AUTO_METHOD, model_name).method
    with torch.no_grad():
        labels = model.network(case.image[None]).argmax(1)[0]
    sizes = {}
    for c in classes:
        mask = labels == c
        if mask.any():
            region = neighbourhood(mask, case.spacing, 10.0)
            assert region is not None
            sizes[model.spec.labels[c]] = {"mask_voxels": int(mask.sum()), "neighbourhood_voxels": int(region.sum())}
    runs: dict[str, dict] = {}
    volume = case.image[0].numel()
    for _ in range(repeats):
        for label, margin, step in settings:
            start = time.perf_counter()
            scores = explanation_faithfulness(
                model, [case], [Target(c) for c in classes], layers, method, step=step, neighbourhood_mm=margin
            )
            seconds = time.perf_counter() - start
            run = runs.setdefault(label, {"seconds": [], "margin_mm": margin, "step": step})
            run["seconds"].append(seconds)
            run["targets"] = {
                model.spec.labels[t.class_index]: {
                    "deletion_auc": s["deletion_auc"],
                    "insertion_auc": s["insertion_auc"],
                    "random_deletion": [s["random"]["deletion_mean"], s["random"]["deletion_sd"]],
                    "random_insertion": [s["random"]["insertion_mean"], s["random"]["insertion_sd"]],
                    "mask": [s["mask"]["deletion_auc"], s["mask"]["insertion_auc"]],
                    "verdict": s["verdict"],
                    "network_calls": s["network_calls"],
                    "steps": s["steps"],
                    "first_step": s["first_step"],
                }
                for (t, _), s in scores.items()
            }
            calls = max(s["network_calls"] for s in scores.values())
            print(f"{name} {label}: {seconds:.1f} s, {calls} calls")
            for target, entry in run["targets"].items():
                print(
                    f"  {target}: {entry['verdict']} (Deletion {entry['deletion_auc']:.3f}, Insertion "
                    f"{entry['insertion_auc']:.3f})"
                )
    for label, margin, _ in settings:
        run = runs[label]
        run["median_s"] = statistics.median(run["seconds"])
        run["first_step_voxels"] = {
            target: round(run["targets"][target]["first_step"] * (size["neighbourhood_voxels"] if margin else volume))
            for target, size in sizes.items()
        }
    return {
        "model": model_name,
        "method": method,
        "layers": layers,
        "grid": list(case.image.shape[1:]),
        "classes": sizes,
        "settings": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="*", default=["nnunet"], choices=["nnunet", "hdbet"])
    parser.add_argument("--settings", nargs="*", default=[s[0] for s in SETTINGS], choices=[s[0] for s in SETTINGS])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [s for s in SETTINGS if s[0] in args.settings]
    with tempfile.TemporaryDirectory() as folder:
        results = {name: measure(name, chosen, args.repeats, Path(folder)) for name in args.cases}
    record = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "cases": results,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
