"""Explaining an nnU-Net's targets in groups (:mod:`SegGradCAMLib.memory_plan`): the maps made one
group at a time equal the maps made all at once, the channels' reliance too, and no more than one
group's maps is alive at a time. A folder as nnU-Net writes it (the shipped plans, random weights) with 3
and 40 classes, on a block of a held-out demo case two windows wide."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from test_nnunet_explain import DATASET, PLANS, lesion_box, write_block
from test_nnunet_folder import trained_like_nnunet

from SegGradCAMLib import inference_nnunet
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.memory_plan import plan_class_groups
from SegGradCAMLib.models import load_model
from SegGradCAMLib.targets import TargetRequest

LAYERS = ["decoder.stages.2", "decoder.stages.3"]


def folder_with(tmp_path_factory, classes: int):
    labels = {"background": 0, **{f"class_{c}": c for c in range(1, classes + 1)}}
    folder = tmp_path_factory.mktemp(f"c{classes}") / "Dataset902_Many" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    trained_like_nnunet(folder, plans=PLANS, dataset={**DATASET, "labels": labels})
    return load_model(str(folder))


def block(folder, width: int) -> list[str]:
    """The held-out case's 32 x 48 x ``width`` block around its lesion (2 mm) in ``folder``: one
    48 x 64 x 64 window, two along x from ``width`` 80."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    box = lesion_box(case.labels, (32, 48, width))
    return write_block(folder, case.image, box)


@pytest.mark.parametrize(
    ("classes", "size", "layers", "reliance", "width"),
    [(3, 1, LAYERS, True, 80), (40, 8, LAYERS[1:], False, 64)],  # 40 classes: one window, to keep it short
)
def test_maps_made_in_groups_equal_the_maps_made_at_once(tmp_path_factory, classes, size, layers, reliance, width):
    model = folder_with(tmp_path_factory, classes)
    inputs = block(tmp_path_factory.mktemp("block"), width)
    request = TargetRequest(reliance=reliance, channel_names=demo_data.CHANNELS)
    spacing = (demo_data.SPACING_MM,) * 3

    def explained(max_group_bytes: int):
        return inference_nnunet.explain_nnunet(
            model,
            inputs,
            layers=layers,
            normalize=False,
            request=request,
            spacing=spacing,
            max_group_bytes=max_group_bytes,
        )

    held = explained(10**12)  # all targets at once
    grouped = explained(size * held.class_groups["bytes_per_target"])
    assert held.class_groups["groups"] == 1 and held.class_groups["size"] == classes
    why, groups = grouped.class_groups["why"], -(-classes // size)
    assert grouped.class_groups == {**held.class_groups, "size": size, "groups": groups, "why": why}
    assert "the limit given" in grouped.class_groups["why"]
    assert sum(m.max() > 0 for m in held.heatmaps[layers[0]]) >= 3  # real maps, not all empty
    for layer in layers:
        assert held.heatmaps[layer].shape == (classes, 32, 48, width)
        scale = np.abs(held.heatmaps[layer]).max()
        assert np.abs(grouped.heatmaps[layer] - held.heatmaps[layer]).max() <= 1e-6 * scale
        assert grouped.raw_max[layer] == pytest.approx(held.raw_max[layer], rel=1e-6, abs=1e-12)
    assert grouped.checks == held.checks  # the agreement with nnU-Net: from the first group's pass
    for ours, theirs in zip(grouped.reliance or [], held.reliance or []):
        assert ours["occlusion"] == theirs["occlusion"]
        assert ours["input_gradient"] == pytest.approx(theirs["input_gradient"], abs=1e-6)
    assert np.array_equal(grouped.labels, held.labels) and (grouped.reliance is None) == (not reliance)


def test_no_more_than_one_groups_maps_is_alive_at_a_time(tmp_path_factory, monkeypatch):
    """Each group's maps (counted as the arrays the window loop returned) are gone before the next
    group's are made; the first group, whose pass also stitches the logits, is the smallest; the maps
    handed on are whole (every target once, in order)."""
    model = folder_with(tmp_path_factory, 5)
    inputs = block(tmp_path_factory.mktemp("block"), 80)
    stitch, alive, most, passes = inference_nnunet._stitch_windows, [], [], []

    def counted(model, windows, padded, targets, loop, sums, *args, **kwargs):
        most.append(sum(ref() is not None for ref in alive))  # arrays of earlier groups still alive
        passes.append((len(targets), sums is not None))  # (targets, stitching the logits too)
        args = (model, windows, padded, targets, loop, sums, *args)
        maps = stitch(*args, **kwargs)
        alive.extend(weakref.ref(m) for m in maps.values())
        return maps

    handed = []
    per_target = inference_nnunet.explain_nnunet(model, inputs, layers=LAYERS).class_groups["bytes_per_target"]
    monkeypatch.setattr(inference_nnunet, "_stitch_windows", counted)
    inference_nnunet.explain_nnunet(
        model,
        inputs,
        layers=LAYERS,
        on_heatmap=lambda heat, labels: handed.append((heat.layer, heat.position)),
        max_group_bytes=2 * per_target,
    )
    assert most == [0, 0, 0]  # three groups, none overlapping another
    assert passes == [(1, True), (2, False), (2, False)]  # the remainder beside the stitched logits
    assert sum(ref() is not None for ref in alive) == 0
    assert sorted(handed) == sorted((layer, t) for layer in LAYERS for t in range(5))


def test_a_group_never_takes_more_than_half_the_free_memory_and_one_target_must_fit(monkeypatch):
    from SegGradCAMLib import memory_plan

    monkeypatch.setattr(memory_plan, "free_memory_bytes", lambda device: 10**10)
    plan = plan_class_groups(100, 2 * 10**8, 10**12, "cpu")
    assert (plan.size, len(plan.ranges()), "half the free memory" in plan.why) == (25, 4, True)
    assert plan_class_groups(100, 10**8, 35 * 10**7, "cpu").size == 3  # the logits' bytes bound it first
    assert [len(r) for r in plan_class_groups(7, 10**8, 3 * 10**8, "cpu").ranges()] == [1, 3, 3]
    assert [len(r) for r in plan_class_groups(6, 10**8, 3 * 10**8, "cpu").ranges()] == [3, 3]
    small = plan_class_groups(3, 10**6, 10**6, "cpu")  # small maps at once, though more than the logits
    assert small.size == 3 and "without a second pass" in small.why
    with pytest.raises(SegGradCAMError, match=r"maps of one class take .* more than the free memory"):
        plan_class_groups(2, 2 * 10**10, 10**12, "cpu")


def test_nnunets_logits_reach_its_export_and_the_targets_in_float16(tmp_path_factory, monkeypatch):
    """nnU-Net's logits (every class, the volume) are handed to nnU-Net's export and to the targets as
    its predictor returns them, in float16 as nnU-Net's own prediction hands them to its export: no
    float32 copy of every class is made (at 117 classes on 256^3 that copy is 7.9 GB)."""
    from nnunetv2.inference import export_prediction

    from SegGradCAMLib import nnunet_targets

    model = folder_with(tmp_path_factory, 5)
    inputs = block(tmp_path_factory.mktemp("block"), 64)
    name = "convert_predicted_logits_to_segmentation_with_correct_shape"
    export, regions_of, seen = getattr(export_prediction, name), nnunet_targets.class_regions, []

    def recorded_export(logits, *args, **kwargs):
        seen.append(("export", logits.dtype, len(logits)))
        return export(logits, *args, **kwargs)

    def recorded_regions(model, reference, *args):
        seen.append(("targets", reference.dtype, len(reference)))
        return regions_of(model, reference, *args)

    monkeypatch.setattr(export_prediction, name, recorded_export)
    monkeypatch.setattr(nnunet_targets, "class_regions", recorded_regions)
    result = inference_nnunet.explain_nnunet(model, inputs, layers=LAYERS[1:])
    assert seen == [("export", torch.float16, 6), ("targets", torch.float16, 6)]
    assert result.checks["labels_equal_to_nnunet"] > 0.999 and len(np.unique(result.labels)) >= 3


def test_the_agreement_with_nnunet_is_the_same_one_plane_at_a_time(tmp_path_factory, monkeypatch):
    """The agreement check compares a bounded number of bytes of logits at a time (whole planes, at
    least one): one plane at a time gives the figures of the whole block at once."""
    model = folder_with(tmp_path_factory, 5)
    inputs = block(tmp_path_factory.mktemp("block"), 64)
    monkeypatch.setattr(inference_nnunet, "AGREEMENT_BYTES", 10**12)
    at_once = inference_nnunet.explain_nnunet(model, inputs, layers=LAYERS[1:]).checks
    monkeypatch.setattr(inference_nnunet, "AGREEMENT_BYTES", 1)
    plane_by_plane = inference_nnunet.explain_nnunet(model, inputs, layers=LAYERS[1:]).checks
    assert plane_by_plane == pytest.approx(at_once, abs=1e-12) and 0.99 < at_once["labels_equal_to_nnunet"] < 1
