"""Benchmark: Deletion/Insertion over the demo model's 100 held-out slices, perturbed inputs
scored in batches (as the evaluation does) vs one step at a time; same curves checked.

    .venv/bin/python bench/deletion_insertion.py --out bench/results/deletion_insertion.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from SegGradCAMLib import seg_grad_cam
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.evaluation.deletion_insertion import ClassScorer, deletion_insertion, make_baseline
from SegGradCAMLib.models import load_model


def curves(network, layer, data, batch_size: int, step: float) -> tuple[float, list[float]]:
    """Seconds for the Deletion/Insertion curves of every slice with a predicted lesion (class 1),
    and the AUCs."""
    aucs, seconds = [], 0.0
    for image in torch.from_numpy(data.images):
        with torch.no_grad():
            mask = network(image[None]).argmax(1)[0] == 1
        if not mask.any():
            continue
        heat = seg_grad_cam(network, image[None], layer, [1], "hirescam", upsample=True)[layer][0, 0]
        baseline = make_baseline(image, (demo_data.SPACING_MM,) * 2, "blur", 20.0)
        start = time.perf_counter()
        scorer = ClassScorer(network, 1, mask, batch_size=batch_size)
        result = deletion_insertion(scorer, image, baseline, heat, step=step)
        seconds += time.perf_counter() - start
        aucs += [result["deletion"].summary()["auc"], result["insertion"].summary()["auc"]]
    return seconds, aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--step", type=float, default=0.01)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("demo-lesions-unet2d")
    data = demo_data.evaluation_set(args.slices)
    layer = model.layers[-1]
    batched_s, batched = curves(model.network, layer, data, 32, args.step)
    looped_s, looped = curves(model.network, layer, data, 1, args.step)
    report = {
        "slices": args.slices,
        "curves": len(batched),
        "step": args.step,
        "batched_s": round(batched_s, 2),
        "one_at_a_time_s": round(looped_s, 2),
        "speedup": round(looped_s / batched_s, 2),
        "max_auc_difference": float(np.abs(np.subtract(batched, looped)).max()),
        "threads": 1,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
