"""Benchmark: many classes on an nnU-Net network. nnU-Net's PlainConvUNet as its planner configured
it for the demo data (SegGradCAM/Resources/Models/demo-lesions-nnunet), built for 100 foreground labels, random
weights; one window of the plans' patch size with 2 channels: plain inference, one class, and all
100 classes on the finest decoder stage; time and peak memory, each in a fresh process. A 256^3 volume
is (ceil((256 - p) / (p / 2)) + 1) windows per axis of such patches: its time is windows x the
per-window time (the 100-class run on the whole volume takes too long for this CPU).

    .venv/bin/python bench/nnunet_many_classes.py --out bench/results/nnunet_many_classes.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fresh_process import in_fresh_process, measured, write_report

PLANS = next(
    (Path(__file__).resolve().parents[1] / "SegGradCAM" / "Resources" / "Models" / "demo-lesions-nnunet").rglob(
        "plans.json"
    )
)
LABELS = 101  # background + 100


def one_run(mode: str) -> dict:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from SegGradCAMLib import seg_grad_cam

    configuration = json.loads(PLANS.read_text())["configurations"]["3d_fullres"]
    architecture = configuration["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        2,
        LABELS,
        deep_supervision=False,
    ).eval()
    patch = configuration["patch_size"]
    x = torch.randn(1, 2, *patch, generator=torch.Generator().manual_seed(1))
    layer = f"decoder.stages.{architecture['arch_kwargs']['n_stages'] - 2}"
    regions = torch.zeros(1, LABELS - 1, *patch, dtype=torch.bool)
    for c in range(LABELS - 1):  # each class a different slab: every class has a non-empty target
        regions[0, c, :, :, c % patch[2]] = True
    classes = [1] if mode == "one_class" else list(range(1, LABELS))

    def run():
        if mode == "plain":
            with torch.no_grad():
                network(x)
        else:
            seg_grad_cam(network, x, layer, classes, regions=regions[:, [c - 1 for c in classes]])

    return {"mode": mode, "layer": layer, "patch": patch, "threads": torch.get_num_threads(), **measured(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    runs = [in_fresh_process(__file__, mode) for mode in ("plain", "one_class", "all_classes")]
    patch = runs[0]["patch"]
    windows = math.prod(math.ceil((256 - p) / (p / 2)) + 1 for p in patch)
    runs.append(
        {
            "mode": "256^3 estimate",
            "windows": windows,
            "all_classes_s": round(windows * runs[2]["seconds"], 1),
            "per_window_and_class_s": round(runs[2]["seconds"] / (LABELS - 1), 3),
        }
    )
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
