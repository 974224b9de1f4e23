"""Benchmark: one-forward Seg-Grad-CAM for all classes vs Captum's LayerGradCam looped per class.

Same maps (checked), timed side by side in one process; medians of repeated runs.

    python bench/one_forward_vs_captum.py --repeats 5 --out bench/results/one_forward_vs_captum.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from captum.attr import LayerGradCam

from SegGradCAMLib import decoder_layers, seg_grad_cam
from SegGradCAMLib.cam import predicted_regions


def captum_per_class(network, inputs, layer, classes, regions):
    """Captum's way: one LayerGradCam call (one forward + backward) per class. ``(n, B, *s)``."""
    module = dict(network.named_modules())[layer]
    maps = []
    for i, c in enumerate(classes):
        def f_c(x, c=c, i=i):
            return (network(x)[:, c] * regions[:, i]).flatten(1).sum(1)

        maps.append(LayerGradCam(f_c, module).attribute(inputs, relu_attributions=True)[:, 0].detach())
    return torch.stack(maps)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, classes: int) -> torch.nn.Module:
    from monai.networks import nets

    torch.manual_seed(0)
    if name == "UNet3D":
        return nets.UNet(3, 1, classes, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
    if name == "BasicUNet3D":
        return nets.BasicUNet(3, 1, classes, features=(16, 16, 32, 64, 128, 16)).eval()
    if name == "DynUNet2D":
        return nets.DynUNet(2, 1, classes, [3] * 5, [1, 2, 2, 2, 2], [2, 2, 2, 2]).eval()
    raise ValueError(name)


def run(repeats: int, size3d: int, classes: int) -> dict:
    cases = [("UNet3D", (1, 1, size3d, size3d, size3d)), ("BasicUNet3D", (1, 1, size3d, size3d, size3d)),
             ("DynUNet2D", (8, 1, 128, 128))]
    results = []
    for name, shape in cases:
        network = build(name, classes)
        inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        layer = decoder_layers(network)[-1]
        class_ids = list(range(classes))
        with torch.no_grad():
            regions = predicted_regions(network(inputs), class_ids)
        ours = seg_grad_cam(network, inputs, layer, class_ids)[layer]
        theirs = captum_per_class(network, inputs, layer, class_ids, regions)
        error = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))
        t_ours = median_time(lambda: seg_grad_cam(network, inputs, layer, class_ids), repeats)
        t_captum = median_time(lambda: captum_per_class(network, inputs, layer, class_ids, regions), repeats)
        results.append({"network": name, "input": list(shape), "layer": layer, "classes": classes,
                        "seg_grad_cam_s": round(t_ours, 4), "captum_per_class_s": round(t_captum, 4),
                        "speedup": round(t_captum / t_ours, 2), "max_relative_difference": error})
        print(f"{name:<12} {layer:<22} ours {t_ours:.3f}s  captum {t_captum:.3f}s  x{t_captum / t_ours:.2f}  diff {error:.1e}")
    return {"repeats": repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="3D input edge length")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args.repeats, args.size, args.classes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
