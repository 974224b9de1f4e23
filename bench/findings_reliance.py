"""Benchmark: which input channel (sequence) the demo model relies on, per class, over its held-out cases.

Each of the first ``--cases`` cases of the evaluation seed (the 20 cases whose slices ``seggradcam
evaluate`` scores, docs/evaluation.md) is explained as a whole volume through ``explain_volume`` with
channel reliance asked for, as ``seggradcam explain --findings`` does for each class (the classes'
entries of explain.json; no finding maps are made here). Per class predicted in a case: the fraction of
its probability lost with ``t1c``, ``flair`` and both replaced by their in-head mean (occlusion), and
each channel's share of ``|input x gradient|`` within 7 mm of the class (SegGradCAMLib/reliance.py).
Over cases: the mean with a 95 % percentile-bootstrap interval (``evaluation.statistics.bootstrap_ci``),
the paired difference of the two channels' occlusion, and the fraction of cases where occluding both
channels loses at least as much as the larger single-channel loss.

    .venv/bin/python bench/findings_reliance.py --cases 20 --out bench/results/findings_reliance.json

Takes about 10 minutes on a 2-core CPU (one torch thread).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.evaluation.statistics import bootstrap_ci
from SegGradCAMLib.inference import explain_volume
from SegGradCAMLib.models import load_model
from SegGradCAMLib.models.cards import resolve_method
from SegGradCAMLib.targets import TargetRequest

MODEL = "demo-lesions-unet2d"
CHANNELS = list(demo_data.CHANNELS)


def case_rows(model, method: str, index: int, case: demo_data.Case) -> list[dict]:
    """One row per class predicted in ``case``: its voxels and reliance (occlusion, input x gradient)."""
    result = explain_volume(
        model,
        case.image,
        (demo_data.SPACING_MM,) * 3,
        np.eye(3),
        method=method,
        request=TargetRequest(reliance=True, channel_names=CHANNELS),
    )
    rows = []
    for class_index, reliance in zip(result.classes, result.reliance or []):
        voxels = int((result.labels == class_index).sum())
        if voxels == 0:  # not predicted in this case: no region, nothing to measure
            continue
        occlusion, gradient = reliance["occlusion"], reliance["input_gradient"]
        rows.append(
            {
                "case": index,
                "subject": case.subject,
                "class": model.spec.labels[class_index],
                "voxels": voxels,
                "true_voxels": int((case.labels == class_index).sum()),
                **{f"occlusion_{key}": value for key, value in occlusion.items()},
                **{f"input_gradient_{key}": value for key, value in gradient.items()},
                "all_at_least_max_single": occlusion["all"] >= max(occlusion[c] for c in CHANNELS),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per class: mean and 95 % bootstrap interval over cases of each measure."""
    columns = [
        *(f"occlusion_{key}" for key in [*CHANNELS, "all"]),
        *(f"input_gradient_{c}" for c in CHANNELS),
    ]
    out = {}
    for name in dict.fromkeys(r["class"] for r in rows):
        mine = [r for r in rows if r["class"] == name]
        cases = [r["case"] for r in mine]
        entry: dict = {"n": len(mine)}
        for column in columns:
            entry[column] = bootstrap_ci([r[column] for r in mine], cases=cases)
        first, second = CHANNELS
        entry[f"occlusion_{first}_minus_{second}"] = bootstrap_ci(
            [r[f"occlusion_{first}"] - r[f"occlusion_{second}"] for r in mine], cases=cases
        )
        held = [float(r["all_at_least_max_single"]) for r in mine]
        entry["all_at_least_max_single"] = bootstrap_ci(held, cases=cases)
        entry["all_below_max_single_by"] = [
            round(max(r[f"occlusion_{c}"] for c in CHANNELS) - r["occlusion_all"], 6)
            for r in mine
            if not r["all_at_least_max_single"]
        ]
        out[name] = entry
    return out


def _stat(stat: dict) -> str:
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="held-out cases, from the first (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(MODEL)
    method = resolve_method("auto", MODEL).method
    rows: list[dict] = []
    start = time.perf_counter()
    for index, (case, _) in enumerate(itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), args.cases)):
        tick = time.perf_counter()
        rows += case_rows(model, method, index, case)
        print(f"case {index} ({case.subject}): {time.perf_counter() - tick:.1f} s", flush=True)
    seconds = time.perf_counter() - start
    table = summary(rows)
    for name, entry in table.items():
        print(f"{name} (n = {entry['n']} cases)")
        for key, stat in entry.items():
            if isinstance(stat, dict):
                print(f"  {key}: {_stat(stat)}")
        print(f"  all below max single by: {entry['all_below_max_single_by']}")
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "model": MODEL,
        "method": method,
        "seed": demo_data.EVAL_SEED,
        "cases": args.cases,
        "seconds": round(seconds, 1),
        "summary": table,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
