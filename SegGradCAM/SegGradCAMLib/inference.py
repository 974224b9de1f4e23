"""Explain a whole volume: preprocessing, slice-wise 2D or sliding-window 3D, and back.

The volume is brought to the model's orientation and spacing and normalised;
the network runs slice by slice (2D) in batches, over the whole padded volume
(3D), or in MONAI's sliding windows (3D models with a ``roi_size``;
:mod:`.volume_runner`). In a sliding window the target region of class c is the
stitched segmentation's mask of c cut to that window; each window's CAMs are
stitched with MONAI's importance weights. The targets are explained in groups
sized by memory (:mod:`.memory_plan`), each group's maps handed on before the next
group's are made. Maps come back to the input grid linearly, labels by nearest
neighbour, and are normalised once, globally, per class and layer (never per
slice or per window).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import label_map
from .class_maps import ClassHeatmap, GroupHeatmaps
from .errors import SegGradCAMError
from .findings import FindingSet
from .layers import resolve_layers
from .memory_plan import plan_map_groups
from .models.spec import LoadedModel
from .model_grid import Direction, check_min_size, check_volume, prepare_input
from .targets import TargetRequest, Targets, add_occlusion, targets_from_logits
from .volume_runner import PredictedRegions, VolumeRunner

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages ``preprocess``, ``segment`` (the segmentation pass
before the CAM pass, when one is needed), ``windows`` (3D), ``slices`` (2D batches), ``backward``
(one step per target's backward pass, counted over the run) and ``occlusion`` (channel reliance)."""


@dataclass
class VolumeExplanation:
    """Result on the input grid.

    labels: ``(Z, Y, X)`` int16 label map. heatmaps: layer -> ``(len(classes), Z, Y, X)``
    float32, each class map divided by its global maximum (0..1) unless
    normalisation was off. raw_max: layer -> per-class maximum before normalisation.
    masks: ``(len(classes), Z, Y, X)`` bool, each class's own mask where classes overlap
    (region-based models); None where it is ``labels == class``.
    """

    labels: np.ndarray
    heatmaps: dict[str, np.ndarray]
    raw_max: dict[str, list[float]]
    classes: list[int]
    layers: list[str]
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)  # e.g. agreement with nnU-Net's own prediction
    masks: np.ndarray | None = None
    findings: FindingSet | None = None
    reliance: list[dict] | None = None  # per target (classes, then findings): channel reliance
    class_groups: dict | None = None  # the targets explained in groups: memory_plan.ClassGroups.report()


def _checked_request(
    model: LoadedModel, image: np.ndarray, classes: Sequence[int] | None, regions: np.ndarray | None
) -> list[int]:
    """The class indices to explain (default: all but 0), after checking the volume ``(Cin, Z, Y, X)``
    and the region masks ``(len(classes), Z, Y, X)`` against the model."""
    spec = model.spec
    check_volume(image, spec)
    n_labels = len(spec.labels)
    classes = list(range(1, n_labels)) if classes is None else [int(c) for c in classes]
    if not classes or any(not 0 <= c < n_labels for c in classes):
        raise SegGradCAMError(f"Classes must be in 0..{n_labels - 1} ({', '.join(spec.labels)}); got {classes}.")
    if regions is not None and regions.shape != (len(classes), *image.shape[1:]):
        raise SegGradCAMError(f"Region masks must have shape {(len(classes), *image.shape[1:])}; got {regions.shape}.")
    return classes


def explain_volume(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    direction: Direction | None = None,
    layers="auto",
    classes: Sequence[int] | None = None,
    method: str = "gradcam",
    regions: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    normalize: bool = True,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    amp: bool = False,
    on_heatmap: Callable[[ClassHeatmap, np.ndarray], None] | None = None,
    request: TargetRequest | None = None,
    max_group_bytes: int | None = None,
) -> VolumeExplanation:
    """Segment and explain a volume ``image`` ``(Cin, Z, Y, X)`` (channels co-registered on one grid).

    ``spacing``: mm, array order ``(Z, Y, X)``; ``direction``: ITK 3x3 (columns i, j, k), needed when
    the model declares an orientation. ``layers``: ``"auto"``, a name or names; ``classes``: class
    indices (default all but 0); ``method``: one of :data:`SegGradCAMLib.selection.CAM_METHODS`;
    ``regions``: boolean target regions ``(len(classes), Z, Y, X)`` on the input grid (default: each
    class's predicted mask). ``batch_size``: slices per batch (2D models); ``normalize``: divide each
    class map by its global maximum; ``progress(stage, done, total)``; ``cancel()`` returning True
    raises :class:`CancelledError`; ``amp``: the network in bfloat16 autocast (the CAM arithmetic
    stays float32). ``on_heatmap(ClassHeatmap, labels (Z, Y, X))`` gets each class map as soon as it
    is on the input grid, and those maps are then not kept in the result (stream them to disk).
    ``request``: findings, probabilities and channel reliance (:mod:`SegGradCAMLib.targets`).
    Targets known before the CAM pass are explained in groups whose maps take at most
    ``max_group_bytes`` (default: what the logits take; :func:`~.memory_plan.plan_map_groups`),
    each group's slices or windows run again and its maps handed on before the next group's are made;
    targets found inside a whole-volume pass (findings) are explained in one group.
    """
    spec = model.spec
    timings: dict[str, float] = {}
    start = time.perf_counter()
    image = np.asarray(image)
    classes = _checked_request(model, image, classes, regions)
    layer_names = list(resolve_layers(model.network, model.chosen_layers(layers)))
    if progress is not None:
        progress("preprocess", 0, 1)
    x, grid = prepare_input(spec, image, spacing, direction)
    region_t = None if regions is None else grid.to_model(regions.astype(np.uint8), labels=True).bool()
    check_min_size(grid.shape if spec.spatial_dims == 3 else grid.shape[1:], spec.divisible_by)
    timings["preprocess_s"] = time.perf_counter() - start
    if progress is not None:
        progress("preprocess", 1, 1)

    runner = VolumeRunner(model, layer_names, classes, method, device, progress, cancel, amp, batch_size)
    start = time.perf_counter()
    found: dict = {}  # labels and targets, once the segmentation is known
    request = request or TargetRequest()
    wanted = request.needs_segmentation
    cam_targets: torch.Tensor | PredictedRegions | Callable | None = region_t
    if wanted and (spec.spatial_dims == 2 or spec.roi_size is not None):
        found["labels"], found["targets"] = targets_from_logits(
            runner.segment(x), spec, grid, spacing, classes, request, region_t
        )
        timings["segmentation_pass_s"] = time.perf_counter() - start
        runner.classes, cam_targets = found["targets"].classes, found["targets"].regions
    elif wanted:  # whole volume: found between the CAM pass's forward and backward passes

        def cam_targets(logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
            found["labels"], found["targets"] = targets_from_logits(
                logits, spec, grid, spacing, classes, request, region_t
            )
            return found["targets"].classes, found["targets"].regions

    runner.input_gradients = wanted and request.reliance
    if callable(cam_targets):
        groups = None
    else:
        gradients = x.shape[0] if runner.input_gradients else 0
        groups = plan_map_groups(
            len(runner.classes), x.shape[1:], len(layer_names), gradients, len(spec.labels), max_group_bytes
        )
    if cam_targets is None and spec.roi_size is not None:  # sliding windows: every window's regions, the labels
        predicted = PredictedRegions.of(runner.segment(x), classes)
        found["labels"], cam_targets = grid.to_input(predicted.labels[None], labels=True)[0], predicted
    every = runner.classes
    ranges = [range(len(every))] if groups is None else groups.ranges()
    heatmaps: GroupHeatmaps | None = None
    for number, group in enumerate(ranges):
        runner.begin_group(number, [len(r) for r in ranges], stitch_logits=number == 0 and "labels" not in found)
        logits, maps = _group_pass(runner, x, cam_targets, every, group)
        if heatmaps is None:  # the first group's pass gives the labels (and the targets found in it)
            targets = found.get("targets") or Targets(classes, region_t, target_findings=[None] * len(classes))
            if wanted and request.reliance:
                occlusion_start = time.perf_counter()
                add_occlusion(
                    targets, lambda x: runner.segment(x, None), spec, image, spacing, direction, request, progress
                )
                timings["occlusion_s"] = time.perf_counter() - occlusion_start
            labels = found.get("labels")
            if labels is None:
                assert logits is not None
                labels = grid.to_input(label_map(logits, 0)[None].to(torch.int16), labels=True)[0]
            heatmaps = GroupHeatmaps(
                targets, labels, None, grid.to_input, normalize, on_heatmap, request.channel_names, spacing
            )
        del logits
        heatmaps.add(group, maps)
    assert heatmaps is not None
    timings["network_and_cam_s"] = time.perf_counter() - start - heatmaps.seconds
    timings["postprocess_s"] = heatmaps.seconds
    result = VolumeExplanation(
        heatmaps.labels, heatmaps.kept(), heatmaps.raw_max, classes, layer_names, method, timings
    )
    result.findings, result.reliance = heatmaps.targets.findings, heatmaps.targets.reliance
    result.class_groups = None if groups is None else groups.report()
    return result


def _group_pass(runner: VolumeRunner, x: torch.Tensor, targets, every: list[int], group: range):
    """The CAM pass of the targets at positions ``group`` of ``every`` (class indices) on ``x``
    ``(Cin, *model grid)``, their regions cut from ``targets`` (``(n, *model grid)`` bool or
    :class:`~.volume_runner.PredictedRegions`; None: the predicted masks of the pass; a function of
    the logits: targets found in a whole-volume pass, one group):
    logits ``(C, *S)`` and maps layer -> ``(len(group), *S)``."""
    if not callable(targets):
        runner.classes = every[group.start : group.stop]
        targets = None if targets is None else targets[group.start : group.stop]
    if runner.model.spec.spatial_dims == 3:
        return runner.run_3d(x, targets)
    assert not callable(targets)  # slice-wise: found by the segmentation pass before
    return runner.run_2d(x, targets)
