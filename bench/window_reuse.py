"""Benchmark: how many of nnU-Net's sliding windows each 3D target's neighbourhood meets (the windows a
Deletion/Insertion step could change), on the shipped nnU-Net's held-out case 0 as ``explain
--faithfulness`` scores it (nnU-Net's 2 mm grid, its patch, its half-window step).

    .venv/bin/python bench/window_reuse.py --out bench/results/window_reuse.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from faithfulness_3d import scored_case
from fresh_process import write_report
from SegGradCAMLib.evaluation.deletion_insertion import neighbourhood
from SegGradCAMLib.options import DEFAULT_NEIGHBOURHOOD_MM

PATCH = (48, 64, 64)  # the shipped plans' patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _, pipeline, case = scored_case("nnunet", Path(tmp))
    labels_names = pipeline.model.spec.labels
    with torch.no_grad():
        labels = pipeline.model.network(case.image[None]).argmax(1)[0]
    shape = tuple(labels.shape)
    steps = compute_steps_for_sliding_window(shape, PATCH, 0.5)
    windows = [(z, y, x) for z in steps[0] for y in steps[1] for x in steps[2]]
    runs = []
    for c in range(1, len(labels_names)):
        region = neighbourhood(labels == c, case.spacing, DEFAULT_NEIGHBOURHOOD_MM).numpy()
        met = sum(bool(region[z : z + PATCH[0], y : y + PATCH[1], x : x + PATCH[2]].any()) for z, y, x in windows)
        runs.append(
            {
                "class": labels_names[c],
                "voxels": int((labels == c).sum()),
                "neighbourhood": int(region.sum()),
                "windows_met": met,
            }
        )
    summary = {
        "shape": shape,
        "windows": len(windows),
        "window_voxels_over_volume": len(windows) * np.prod(PATCH) / np.prod(shape),
    }
    print(summary, runs)
    write_report(args.out, [{"volume": summary}, *runs])


if __name__ == "__main__":
    main()
