"""Explain an nnU-Net v2 model with nnU-Net's own pipeline around the CAM pass.

nnU-Net does what it already does: its image reader (from plans.json), its preprocessing
(transpose, crop to non-zero, each channel's normalisation, resampling), its sliding-window
steps and Gaussian importance map, its prediction of the segmentation, and its export back to
the original image geometry (:mod:`.nnunet_grid`). The window loop with gradients is ours (nnU-Net
predicts under ``torch.inference_mode()``): each window is explained with the final segmentation
(nnU-Net's own stitched prediction) cut to it as target, and maps are stitched with nnU-Net's
Gaussian weights, averaged over folds (and mirrorings, when on) as nnU-Net averages logits, then
brought back with nnU-Net's resampling, un-cropping and transpose.

With a :class:`~.targets.TargetRequest`, nnU-Net's prediction also gives the findings (explained in
the same window loop as the classes), its exported probabilities, the channels' occlusion
(:mod:`.nnunet_targets`), and the loop gives each fold's (and mirroring's) own label for their
disagreement.

Region-based models (overlapping regions, sigmoid outputs, as BraTS nnU-Nets): class ``c`` is
output channel ``c - 1`` and its target the voxels where nnU-Net's sigmoid exceeds 0.5; the
segmentation is nnU-Net's painting in ``regions_class_order``, renumbered to class indices, and
each class's own (overlapping) mask is returned beside it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import seg_grad_cam
from .class_maps import ClassHeatmap, GroupHeatmaps
from .errors import CancelledError
from .inference import ProgressCallback, VolumeExplanation
from .layers import resolve_layers
from .memory_plan import plan_map_groups
from .models.spec import LoadedModel
from .nnunet_grid import carried_region, preprocessed, read_inputs, to_input_grid
from .nnunet_targets import Disagreement, FirstPass, add_disagreement, first_pass
from .targets import TargetRequest

AGREEMENT_BYTES = 32 * 10**6  # float32 logits (of whole planes, at least one) compared at a time with nnU-Net's own


def nnunet_predictor(model: LoadedModel, device: str, tile_step_size: float, mirror: bool):
    """nnU-Net's predictor on the model's network, plans and folds (no file is read)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    parts = model.nnunet_parts()
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device(device),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        model.network,
        parts.plans_manager,
        parts.configuration_manager,
        parts.parameters,
        parts.dataset_json,
        parts.trainer_name,
        parts.mirror_axes,
    )
    return predictor


@dataclass(frozen=True)
class _Loop:
    """What the window loop computes: the ``layers``' maps of the targets' output ``channels`` with
    the CAM ``method`` on ``device``, mirrored when ``mirror``, with each input channel's
    ``|input x gradient|`` when ``input_gradients``; ``step`` reports progress, ``cancel`` stops."""

    layers: list[str]
    channels: list[int]
    method: str
    device: str
    mirror: bool
    input_gradients: bool
    step: ProgressCallback
    cancel: Callable[[], bool] | None


def _flips(model: LoadedModel, mirror: bool) -> list[tuple[int, ...]]:
    """The mirrorings nnU-Net averages over (batch-axis numbering), the identity first."""
    flips: list[tuple[int, ...]] = [()]
    mirror_axes = model.nnunet_parts().mirror_axes
    if mirror and mirror_axes:
        axes = [a + 2 for a in mirror_axes]
        flips += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
    return flips


def _window(model: LoadedModel, loop: _Loop, image: torch.Tensor, target: torch.Tensor, axes: tuple[int, ...]):
    """One window ``(1, Cin, *patch)`` with its targets ``(1, n, *patch)`` bool explained
    through the mirroring ``axes``, flipped back, on the CPU: maps name -> ``(n, *patch)``, logits
    ``(C, *patch)``."""
    image, target = image.to(loop.device), target.to(loop.device)
    if axes:
        image, target = torch.flip(image, axes), torch.flip(target, axes)
    result = seg_grad_cam(
        model.network,
        image,
        loop.layers,
        loop.channels,
        loop.method,
        regions=target,
        upsample=True,
        input_gradients=loop.input_gradients,
    )

    def back(values: torch.Tensor) -> torch.Tensor:
        return (torch.flip(values, axes) if axes else values).float().cpu()

    return {name: back(m)[:, 0] for name, m in result.items()}, back(result.logits)[0]


@dataclass(frozen=True)
class _Windows:
    """nnU-Net's windows over a padded volume ``(*S)``: its ``slicers``, its Gaussian ``(*patch)``
    and the Gaussians summed over the windows, ``weights`` ``(*S)``."""

    slicers: list
    gaussian: torch.Tensor
    weights: torch.Tensor


def _windows(model: LoadedModel, predictor, shape: Sequence[int]) -> _Windows:
    """nnU-Net's sliding-window slicers and Gaussian importance map for a padded volume of ``shape``."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    patch = tuple(model.nnunet_parts().configuration_manager.patch_size)
    slicers = predictor._internal_get_sliding_window_slicers(tuple(shape))
    gaussian = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu")
    )
    weights = torch.zeros(tuple(shape))
    for window in slicers:
        weights[window[1:]] += gaussian
    return _Windows(slicers, gaussian, weights)


class _LogitSums:
    """The stitched logits ``(C, *S)`` of a pass over the windows, float16 as nnU-Net keeps them:
    each window adds its logits times its Gaussian's share of the voxel's summed weight (so the sum
    is the stitched logits themselves, and a window corner's small Gaussian weights are not lost in
    half precision: where one window covers a voxel its share is 1); when ``votes`` counts the folds'
    and mirrorings' labels, also each mirroring's and fold's own stitched logits."""

    def __init__(self, heads: int, shape: Sequence[int], votes: Disagreement | None, flips: int, folds: int) -> None:
        self.votes, self.flips, self.folds = votes, flips, folds
        self.total = torch.zeros((heads, *shape), dtype=torch.float16)
        self.fold = self.total if votes is None else torch.zeros_like(self.total)  # a fold's own
        self.mirroring = torch.zeros_like(self.total) if votes is not None and flips > 1 else self.fold
        # a window's weight in the buffer it goes to: a mirroring's own, a fold's mean, or the mean of all
        self.scale = 1.0 if self.mirroring is not self.fold else 1.0 / (flips * (1 if votes is not None else folds))

    def add(self, spatial: tuple, logits: torch.Tensor, share: torch.Tensor) -> None:
        """One window's logits ``(C, *patch)`` float32 at ``spatial`` (scaled in place), its Gaussian's
        share ``(*patch)`` of each voxel's summed weight."""
        self.mirroring[spatial] += logits.mul_(share * self.scale)

    def end_mirroring(self) -> None:
        if self.votes is not None and self.mirroring is not self.fold:  # a mirroring's own label
            self.votes.add_mirroring(self.mirroring)
            self.fold += self.mirroring / self.flips
            self.mirroring.zero_()

    def end_fold(self) -> None:
        if self.votes is not None:
            self.votes.add_fold(self.fold)
            self.total += self.fold / self.folds
            self.fold.zero_()


def _stitch_windows(
    model: LoadedModel,
    windows: _Windows,
    padded: torch.Tensor,
    targets: torch.Tensor,
    loop: _Loop,
    sums: _LogitSums | None,
    tick: Callable[[], None],
) -> dict[str, torch.Tensor]:
    """CAMs of one group of targets ``targets`` ``(n, *S)`` bool (output channels ``loop.channels``)
    for every fold, mirroring and window of ``padded`` ``(Cin, *S)``, stitched with nnU-Net's Gaussian
    and averaged: maps name -> ``(n, *S)``; the windows' logits added to ``sums`` when given. ``tick``
    after each window."""
    gaussian, weights = windows.gaussian, windows.weights
    flips, folds = _flips(model, loop.mirror), len(model.nnunet_parts().parameters)
    maps: dict[str, torch.Tensor] = {}  # by the names the windows give (layers, input gradients)
    for parameters in model.nnunet_parts().parameters:
        model.network.load_state_dict(parameters)
        for axes in flips:
            for window in windows.slicers:
                if loop.cancel is not None and loop.cancel():
                    raise CancelledError("Cancelled by the user.")
                tick()
                spatial = (slice(None), *window[1:])
                window_maps, window_logits = _window(model, loop, padded[window][None], targets[spatial][None], axes)
                for name, m in window_maps.items():
                    if name not in maps:
                        maps[name] = torch.zeros((len(loop.channels), *padded.shape[1:]))
                    maps[name][spatial].addcmul_(m, gaussian, value=1 / len(flips))
                if sums is not None:
                    sums.add(spatial, window_logits, gaussian / weights[window[1:]])
            if sums is not None:
                sums.end_mirroring()
        if sums is not None:
            sums.end_fold()
    for m in maps.values():
        m /= weights * folds
    return maps


def _agreement(model: LoadedModel, stitched: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How our ``stitched`` logits ``(C, *S)`` agree with nnU-Net's own ``reference`` ``(C, *S)`` (both
    float16, as nnU-Net keeps them): logits, probabilities, labels; computed a few planes at a time
    (:data:`AGREEMENT_BYTES` of float32 logits: no extra volume is made)."""
    label_manager = model.nnunet_parts().label_manager
    logits = probabilities = equal = 0.0
    step = max(1, AGREEMENT_BYTES // (4 * stitched[:, 0].numel()))
    for z in range(0, stitched.shape[1], step):
        planes = slice(z, z + step)
        pair = [stitched[:, planes].float(), reference[:, planes].float()]
        logits = max(logits, float((pair[0] - pair[1]).abs().max()))
        p = [label_manager.apply_inference_nonlin(values) for values in pair]
        probabilities = max(probabilities, float((p[0] - p[1]).abs().max()))
        labels = [label_manager.convert_probabilities_to_segmentation(values) for values in p]
        equal += float((labels[0] == labels[1]).sum())
    return {
        "stitched_logits_max_difference_to_nnunet": logits,
        "probabilities_max_difference_to_nnunet": probabilities,
        "labels_equal_to_nnunet": equal / stitched[0].numel(),
    }


def _explain_groups(
    model: LoadedModel,
    predictor,
    x: torch.Tensor,
    reference: torch.Tensor,
    first: FirstPass,
    loop: _Loop,
    max_group_bytes: int | None,
    on_group: Callable[[range, dict[str, torch.Tensor]], None],
):
    """The CAMs of the preprocessed volume ``x`` ``(Cin, *S)`` with the targets of ``first``
    ``(n, *S)``, one group at a time (groups planned by :func:`~.memory_plan.plan_map_groups`): each group's maps
    ``(len(group), *S)`` by name, padded to the patch as nnU-Net pads, stitched and cropped back,
    handed to ``on_group`` before the next group's are made. Returns the groups, how our stitched
    logits (of the first group's pass) agree with nnU-Net's ``reference`` ``(C, *S)`` and, with
    probabilities, the folds' and mirrorings' disagreement maps ``(1, *S)`` (see
    :class:`~.nnunet_targets.Disagreement`)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    parts = model.nnunet_parts()
    label_manager, folds, flips = parts.label_manager, len(parts.parameters), len(_flips(model, loop.mirror))
    assert first.targets.regions is not None
    patch = tuple(parts.configuration_manager.patch_size)
    padded, revert = pad_nd_image(x, patch, "constant", {"value": 0}, True, None)
    crop = (slice(None), *revert[1:])
    windows = _windows(model, predictor, padded.shape[1:])
    gradients = padded.shape[0] if loop.input_gradients else 0
    groups = plan_map_groups(  # each target's maps and its bool region, against the stitched float16 logits
        len(loop.channels), padded.shape[1:], len(loop.layers), gradients, reference.shape[0], max_group_bytes, 1, 2
    )
    votes = None
    if first.uncertainty is not None and (folds > 1 or flips > 1):
        ensemble = label_manager.convert_logits_to_segmentation(reference).to(torch.int16)
        votes = Disagreement(
            lambda logits: label_manager.convert_logits_to_segmentation(logits[crop]), ensemble, folds, flips
        )
    steps, total = itertools.count(), len(groups.ranges()) * folds * flips * len(windows.slicers)
    checks: dict[str, float] = {}
    for number, group in enumerate(groups.ranges()):
        regions = first.targets.regions[group.start : group.stop]
        targets, _ = pad_nd_image(regions, patch, "constant", {"value": 0}, True, None)  # a view if not padded
        sums = _LogitSums(reference.shape[0], padded.shape[1:], votes, flips, folds) if number == 0 else None
        group_loop = replace(loop, channels=[first.channels[t] for t in group])
        maps = _stitch_windows(
            model, windows, padded, targets, group_loop, sums, lambda: loop.step("windows", next(steps), total)
        )
        del regions, targets
        if sums is not None:
            checks = _agreement(model, sums.total[crop], reference)
            del sums
        on_group(group, {name: m[crop] for name, m in maps.items()})
        del maps
    loop.step("windows", total, total)
    return groups, checks, {} if votes is None else votes.maps()


def explain_nnunet(
    model: LoadedModel,
    files: Sequence[str],
    tile_step_size: float = 0.5,
    mirror: bool = False,
    layers="auto",
    classes: Sequence[int] | None = None,
    method: str = "gradcam",
    region: np.ndarray | None = None,
    device: str = "cpu",
    normalize: bool = True,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    on_heatmap: Callable[[ClassHeatmap, np.ndarray], None] | None = None,
    request: TargetRequest | None = None,
    spacing: Sequence[float] | None = None,
    max_group_bytes: int | None = None,
) -> VolumeExplanation:
    """Segment and explain the image ``files`` (one per channel, as nnU-Net reads them).

    Labels are nnU-Net's own prediction (all folds, mirroring when ``mirror``); maps per layer
    ``(len(classes), Z, Y, X)`` on the grid the reader gives the input. ``region`` ``(Z, Y, X)``:
    explain the class score inside it instead of the predicted masks. ``request``: findings,
    probabilities (and the folds' and mirrorings' disagreement) and channel reliance; ``spacing``:
    the input grid's (mm, ``(Z, Y, X)``), needed for findings and reliance. The targets are explained
    in groups whose maps take at most ``max_group_bytes`` (default: what the logits take;
    :func:`~.memory_plan.plan_map_groups`), each group's maps handed to ``on_heatmap`` before the
    next group's are made. Other arguments as :func:`SegGradCAMLib.inference.explain_volume`.
    """
    step, request = progress or (lambda stage, done, total: None), request or TargetRequest()
    start = time.perf_counter()
    step("preprocess", 0, 1)
    raw, properties = read_inputs(model, files)
    x = torch.from_numpy(preprocessed(model, raw, properties))
    step("preprocess", 1, 1)
    timings = {"preprocess_s": time.perf_counter() - start}

    start = time.perf_counter()
    classes = list(range(1, len(model.spec.labels))) if classes is None else [int(c) for c in classes]
    predictor = nnunet_predictor(model, device, tile_step_size, mirror)
    reference = predictor.predict_logits_from_preprocessed_data(x)  # nnU-Net's own stitched logits, float16
    region_pre = carried_region(model, properties, x.shape[1:], region)
    first = first_pass(model, predictor, raw, properties, reference, classes, region_pre, request, spacing)
    targets = first.targets
    layer_names = list(resolve_layers(model.network, model.chosen_layers(layers)))
    loop = _Loop(layer_names, first.channels, method, device, mirror, targets.reliance is not None, step, cancel)
    to_input = to_input_grid(model, properties)
    heatmaps = GroupHeatmaps(
        targets, first.labels, first.masks, to_input, normalize, on_heatmap, request.channel_names, spacing
    )
    groups, checks, disagreement = _explain_groups(
        model, predictor, x, reference, first, loop, max_group_bytes, heatmaps.add
    )
    timings["network_and_cam_s"] = time.perf_counter() - start - heatmaps.seconds

    start = time.perf_counter()
    if disagreement:
        add_disagreement(first, disagreement, to_input)
    timings["postprocess_s"] = time.perf_counter() - start + heatmaps.seconds
    result = VolumeExplanation(
        first.labels, heatmaps.kept(), heatmaps.raw_max, classes, layer_names, method, timings, checks
    )
    result.masks, result.findings, result.reliance = first.masks, targets.findings, targets.reliance
    result.class_groups = groups.report()
    return result
