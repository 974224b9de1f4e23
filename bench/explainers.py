"""Benchmark: this engine vs Captum's LayerGradCam looped per class vs pytorch-grad-cam, and
plain inference, on the same inputs, timed side by side in one process (medians of repeats).

Cases:
- ``demo2d``: the shipped 2D demo model on a 181-slice volume (Colin27 at 1 mm, a T1 and a
  FLAIR-like channel, slices resampled to the model's 2 mm in-plane grid), all 3 classes,
  batches of 16 slices, its finest decoder stage;
- ``UNet3D``, ``BasicUNet3D`` (64^3) and ``DynUNet2D`` (8 x 128^2), 4 classes, random weights,
  every decoder stage.

Per case and layer: F (plain inference, no gradients), T1 (Captum for one class), this engine
for all classes, Captum looped over the classes, pytorch-grad-cam (``GradCAM`` with
``SemanticSegmentationTarget``) looped over the classes; the floor F + n (T1 - F) of any
per-class method; the largest difference between the maps (relative to the largest map value
for Captum; after pytorch-grad-cam's per-image min-max scaling for pytorch-grad-cam).

pytorch-grad-cam needs torchvision, which does not import beside the test environment's CPU
torch 2.13.0: run the whole comparison in the benchmark environment (``bash bench/setup_env.sh``)::

    bench/.venv/bin/python bench/explainers.py --repeats 3 --out bench/results/explainers.json

Without pytorch-grad-cam installed its column is left out (e.g. in .venv for reference).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerGradCam

from SegGradCAMLib import decoder_layers, seg_grad_cam
from SegGradCAMLib.cam import predicted_regions, upsample_maps


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    fn()
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


def demo_volume_batches(batch: int = 16) -> tuple[torch.nn.Module, list[torch.Tensor], str]:
    """The demo model and Colin27 (181 axial slices) on its grid, in batches ``(B, 2, H, W)``."""
    import SimpleITK as sitk

    from SegGradCAMLib.demo.data import flair_like
    from SegGradCAMLib.model_grid import prepare_input
    from SegGradCAMLib.models import load_model
    from SegGradCAMLib.preprocessing import pad_end, padded_shape

    model = load_model("demo-lesions-unet2d")
    image = sitk.ReadImage("/usr/share/mricron/templates/ch2.nii.gz", sitk.sitkFloat32)
    t1 = sitk.GetArrayFromImage(image)
    t1 = np.clip(t1, 0, None) / np.percentile(t1[t1 > t1.mean()], 90)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    x, _ = prepare_input(model.spec, np.stack([t1, flair_like(t1)]), image.GetSpacing()[::-1], direction)
    slices = x.permute(1, 0, 2, 3)
    slices = pad_end(slices, padded_shape(slices.shape[2:], model.spec.divisible_by))
    return model.network, list(slices.split(batch)), model.layers[-1]


def captum_per_class(network, inputs, layer, classes, regions):
    """Captum's way: one LayerGradCam call (one forward + backward) per class. ``(n, B, *s)``."""
    module = dict(network.named_modules())[layer]
    maps = []
    for i, c in enumerate(classes):

        def f_c(x, c=c, i=i):
            return (network(x)[:, c] * regions[:, i]).flatten(1).sum(1)

        maps.append(LayerGradCam(f_c, module).attribute(inputs, relu_attributions=True)[:, 0].detach())
    return torch.stack(maps)


def grad_cam_per_class(network, inputs, layer, classes, regions) -> np.ndarray | None:
    """pytorch-grad-cam's GradCAM with SemanticSegmentationTarget, one call per class:
    ``(n, B, *S)`` at the input size, min-max scaled per image (its output), or None."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    except ImportError:
        return None
    module = dict(network.named_modules())[layer]
    maps = []
    with GradCAM(model=network, target_layers=[module]) as cam:
        for i, c in enumerate(classes):
            targets = [SemanticSegmentationTarget(c, regions[b, i].float().numpy()) for b in range(inputs.shape[0])]
            maps.append(cam(input_tensor=inputs, targets=targets))
    return np.stack(maps)


def scaled_per_image(maps: torch.Tensor) -> np.ndarray:
    """``(n, B, *S)`` min-max scaled per image, as pytorch-grad-cam returns its maps."""
    flat = maps.flatten(2)
    low, high = flat.min(2, keepdim=True).values, flat.max(2, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-7)).reshape(maps.shape).numpy()


def measure(network, batches: list[torch.Tensor], layer: str, classes: list[int], repeats: int) -> dict:
    """Times (s, over all batches) and map differences for one network and layer."""
    regions = []
    with torch.no_grad():
        for inputs in batches:
            regions.append(predicted_regions(network(inputs), classes))

    def plain():
        with torch.no_grad():
            for inputs in batches:
                network(inputs)

    def ours():
        return [seg_grad_cam(network, x, layer, classes)[layer] for x in batches]

    def captum(which=classes):
        return [captum_per_class(network, x, layer, which, r[:, : len(which)]) for x, r in zip(batches, regions)]

    def grad_cam():
        return [grad_cam_per_class(network, x, layer, classes, r) for x, r in zip(batches, regions)]

    mine, theirs = ours(), captum()
    result = {
        "layer": layer,
        "max_relative_difference_captum": max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(mine, theirs)
        ),
        "plain_s": median_time(plain, repeats),
        "ours_s": median_time(ours, repeats),
        "captum_one_class_s": median_time(lambda: captum(classes[:1]), repeats),
        "captum_looped_s": median_time(captum, repeats),
    }
    pgc = grad_cam()
    if pgc[0] is not None:
        result["max_difference_grad_cam_scaled"] = max(
            float(np.abs(scaled_per_image(upsample_maps(m, x.shape[2:])) - p).max())
            for m, p, x in zip(mine, pgc, batches)
        )
        result["grad_cam_looped_s"] = median_time(grad_cam, repeats)
    f, t1, n = result["plain_s"], result["captum_one_class_s"], len(classes)
    result["floor_s"] = f + n * (t1 - f)
    result["ours_over_floor"] = result["ours_s"] / result["floor_s"]
    result["ours_over_plain"] = result["ours_s"] / f
    result["captum_over_ours"] = result["captum_looped_s"] / result["ours_s"]
    if "grad_cam_looped_s" in result:
        result["grad_cam_over_ours"] = result["grad_cam_looped_s"] / result["ours_s"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def run(repeats: int, size3d: int, classes: int, cases: list[str]) -> dict:
    results = []
    for name in cases:
        if name == "demo2d":
            network, batches, finest = demo_volume_batches()
            layers, class_ids = [finest], [1, 2, 3]
        else:
            network = build(name, classes)
            shape = (1, 1, size3d, size3d, size3d) if name.endswith("3D") else (8, 1, 128, 128)
            batches = [torch.randn(*shape, generator=torch.Generator().manual_seed(0))]
            layers, class_ids = decoder_layers(network), list(range(classes))
        for layer in layers:
            entry = {
                "network": name,
                "input": [list(b.shape) for b in batches[:1]],
                "batches": len(batches),
                "classes": len(class_ids),
                "finest": layer == layers[-1],
                **measure(network, batches, layer, class_ids, repeats),
            }
            results.append(entry)
            print(json.dumps(entry), flush=True)
    import importlib.util

    return {
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "pytorch_grad_cam": importlib.util.find_spec("pytorch_grad_cam") is not None,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="3D input edge length")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--cases", default="demo2d,UNet3D,BasicUNet3D,DynUNet2D")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args.repeats, args.size, args.classes, args.cases.split(","))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
