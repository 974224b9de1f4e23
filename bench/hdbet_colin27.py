"""Benchmark: HD-BET (fold 0) on Colin27, plain inference vs explain, with its checkpoint as
shipped (7.4 million subnormal weights) and with the subnormals set to zero (what every loader
does); and a small 3D network with planted subnormals. Each configuration runs in a fresh
process so its peak resident memory is its own.

    .venv/bin/python bench/hdbet_colin27.py --out bench/results/hdbet_colin27.json

Takes about 15 minutes on a 2-core CPU (the subnormal runs are the slow ones).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from fresh_process import in_fresh_process, write_report

COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"


def one_run(kind: str, subnormals: str) -> dict:
    """In this process: load, prepare, run ``kind`` (plain | explain); time and peak memory."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from SegGradCAMLib.models.hdbet import load_hdbet
    from SegGradCAMLib.models.subnormal import zero_subnormals

    if kind == "planted":
        return planted_run(subnormals)
    model = load_hdbet(0)  # the loader without load_model: subnormals as shipped
    zeroed = zero_subnormals(model.network) if subnormals == "zeroed" else 0
    image = sitk.ReadImage(COLIN27, sitk.sitkFloat32)
    from SegGradCAMLib.inference import explain_volume
    from SegGradCAMLib.model_grid import prepare_input
    from SegGradCAMLib.preprocessing import pad_end, padded_shape

    spacing, direction = image.GetSpacing()[::-1], np.asarray(image.GetDirection()).reshape(3, 3)
    volume = sitk.GetArrayFromImage(image)[None]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "plain":
        x, _ = prepare_input(model.spec, volume, spacing, direction)
        x = pad_end(x, padded_shape(x.shape[1:], model.spec.divisible_by, model.spec.min_size))
        with torch.no_grad():
            model.network(x[None])
        shape = list(x.shape[1:])
    else:
        result = explain_volume(model, volume, spacing, direction)
        shape = list(result.labels.shape)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": kind,
        "subnormals": subnormals,
        "zeroed": zeroed,
        "seconds": round(seconds, 2),
        "peak_resident_mb": round(peak / 1024),
        "peak_above_loaded_mb": round((peak - baseline) / 1024),
        "grid": shape,
    }


def planted_run(subnormals: str) -> dict:
    """A MONAI 3D UNet (random weights) with 30 % of its weights set to subnormal values."""
    import torch
    from monai.networks import nets

    from SegGradCAMLib.models.subnormal import zero_subnormals

    torch.manual_seed(0)
    network = nets.UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
    with torch.no_grad():
        for p in network.parameters():
            chosen = torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            p[chosen] = 1e-39
    zeroed = zero_subnormals(network) if subnormals == "zeroed" else 0
    x = torch.randn(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(2))
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return {
        "kind": "planted",
        "subnormals": subnormals,
        "zeroed": zeroed,
        "seconds": round(sorted(times)[1], 3),
        "note": "UNet 3D 16-128 channels, 30 % of weights 1e-39, one 96^3 forward, median of 3",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SUBNORMALS"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-shipped", action="store_true", help="skip the slow runs with HD-BET's subnormals")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    configs = [("planted", "shipped"), ("planted", "zeroed"), ("plain", "zeroed"), ("explain", "zeroed")]
    if not args.skip_shipped:
        configs += [("plain", "shipped"), ("explain", "shipped")]
    write_report(args.out, [in_fresh_process(__file__, kind, subnormals) for kind, subnormals in configs])


if __name__ == "__main__":
    main()
