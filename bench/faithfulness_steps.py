"""Benchmark: ``explain --faithfulness`` at its 5 % steps against 1 % steps, on the demo model's
held-out cases 0-2 (HiResCAM and Grad-CAM, default stage): AUCs, verdicts, network calls, seconds.

    .venv/bin/python bench/faithfulness_steps.py --out bench/results/faithfulness_steps.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.pipelines import cases_from_volume
from SegGradCAMLib.evaluation.faithfulness import Target, explanation_faithfulness
from SegGradCAMLib.models import load_model
from SegGradCAMLib.models.declarations import DEFAULT_MULTICLASS_MODEL

STEPS = (0.05, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    layer = model.chosen_layers("auto")
    classes = list(range(1, len(model.spec.labels)))
    targets = [Target(c) for c in classes]
    rows = []
    for index, (case, _) in enumerate(itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), args.cases)):
        found = cases_from_volume(model, case.image, (demo_data.SPACING_MM,) * 3, None, f"case {index}", classes)
        for method in ("hirescam", "gradcam"):
            scores = {}
            for step in STEPS:
                start = time.perf_counter()
                scores[step] = explanation_faithfulness(model, found, targets, layer, method, step=step)
                seconds = time.perf_counter() - start
                print(f"case {index} {method} step {step:g}: {seconds:.1f} s")
            for (target, _), coarse in scores[STEPS[0]].items():
                fine = scores[STEPS[1]][(target, layer[0])]
                rows.append(
                    {
                        "case": index,
                        "method": method,
                        "class": model.spec.labels[target.class_index],
                        "deletion": [coarse["deletion_auc"], fine["deletion_auc"]],
                        "insertion": [coarse["insertion_auc"], fine["insertion_auc"]],
                        "verdict": [coarse["verdict"], fine["verdict"]],
                        "network_calls": [coarse["network_calls"], fine["network_calls"]],
                    }
                )
                print(f"  {rows[-1]['class']}: {coarse['verdict']} | at 1 %: {fine['verdict']}")
    gap = max(abs(a - b) for r in rows for a, b in (r["deletion"], r["insertion"]))
    same = sum(r["verdict"][0] == r["verdict"][1] for r in rows)
    print(f"largest AUC difference 5 % vs 1 % steps: {gap:.3f}; same verdict in {same} of {len(rows)}")
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "steps": STEPS,
                "largest_auc_difference": gap,
                "same_verdict": same,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
