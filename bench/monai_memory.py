"""Benchmark: host peak memory of explaining a many-class MONAI sliding-window model against MONAI's
own ``sliding_window_inference`` of the same network on the same volume, each in a fresh process.

The network is a MONAI UNet (3D, 24 outputs: background and 23 classes, features 8-128, random
weights from a fixed seed: near-tied logits, so every class is predicted somewhere), run in
96^3 windows with SegGradCAM's overlap and Gaussian weights; the volume is Colin27's 1 mm T1 head
(181 x 217 x 181), z-scored. Rows: MONAI's prediction (the stitched logits and their argmax), and
``explain_volume`` of one class and of all 23 (default decoder stage, maps handed on as the CLI
hands them to its writer, not kept).

    .venv/bin/python bench/monai_memory.py --out bench/results/monai_memory.json [--modes predict,one_class,all_classes]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fresh_process import in_fresh_process, write_report

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
CLASSES = 23
ROI = (96, 96, 96)


def network_and_volume():
    """The network (eval mode) and the z-scored volume ``(1, Z, Y, X)`` float32 with its spacing."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.networks import nets

    torch.manual_seed(0)
    network = nets.UNet(3, 1, CLASSES + 1, (8, 16, 32, 64, 128), (2, 2, 2, 2), num_res_units=1).eval()
    image = sitk.ReadImage(str(COLIN27), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    volume = ((array - array.mean()) / array.std()).astype(np.float32)[None]
    return network, volume, tuple(reversed(image.GetSpacing()))


def one_run(mode: str, max_group_mb: str = "") -> dict:
    """One measurement in this (fresh) process: host peak resident memory (MiB) and seconds;
    ``max_group_mb``: the groups' limit (empty: the default plan)."""
    import resource

    import torch

    network, volume, spacing = network_and_volume()
    start = time.perf_counter()
    report: dict = {}
    if mode == "predict":
        from monai.inferers import sliding_window_inference

        from SegGradCAMLib.sliding_windows import OVERLAP, SIGMA_SCALE

        with torch.no_grad():
            logits = sliding_window_inference(
                torch.from_numpy(volume)[None], ROI, 1, network, OVERLAP, "gaussian", SIGMA_SCALE
            )
            labels = logits.argmax(1)
        report["labels"] = int(labels.max())
    else:
        from SegGradCAMLib.inference import explain_volume
        from SegGradCAMLib.models.spec import LoadedModel, ModelSpec

        labels = ["background", *(f"class_{c:02d}" for c in range(1, CLASSES + 1))]
        spec = ModelSpec(name="many", labels=labels, normalization="none", divisible_by=16, roi_size=ROI)
        model = LoadedModel(network, spec, [])
        classes = [1] if mode == "one_class" else None
        limit = int(float(max_group_mb) * 10**6) if max_group_mb else None
        result = explain_volume(
            model, volume, spacing, classes=classes, on_heatmap=lambda heat, labels: None, max_group_bytes=limit
        )
        report["class_groups"] = result.class_groups
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = round(time.perf_counter() - start, 1)
    return {"mode": mode, "max_group_mb": max_group_mb or None, "seconds": seconds, "peak_mb": round(peak), **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--modes", default="predict,one_class,all_classes")
    parser.add_argument("--max-group-mb", default="", help="the groups' limit (default: the plan's)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    runs = [in_fresh_process(__file__, mode, args.max_group_mb) for mode in args.modes.split(",")]
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
