"""All-classes explanation in one forward pass costs less than Captum looped per class."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from one_forward_vs_captum import build, captum_per_class, median_time  # noqa: E402

from SegGradCAMLib import seg_grad_cam  # noqa: E402
from SegGradCAMLib.cam import predicted_regions  # noqa: E402


def test_one_forward_is_faster_than_captum_per_class_with_the_same_maps():
    network = build("BasicUNet3D", classes=4)
    inputs = torch.randn(1, 1, 48, 48, 48, generator=torch.Generator().manual_seed(0))
    classes = [0, 1, 2, 3]
    with torch.no_grad():
        regions = predicted_regions(network(inputs), classes)
    ours = seg_grad_cam(network, inputs, "upcat_1", classes)["upcat_1"]
    theirs = captum_per_class(network, inputs, "upcat_1", classes, regions)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5
    t_ours = median_time(lambda: seg_grad_cam(network, inputs, "upcat_1", classes), 3)
    t_captum = median_time(lambda: captum_per_class(network, inputs, "upcat_1", classes, regions), 3)
    print(f"one forward {t_ours:.3f}s, Captum per class {t_captum:.3f}s, ratio {t_captum / t_ours:.2f}")
    assert t_captum / t_ours > 1.3
