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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import seg_grad_cam
from .class_maps import ClassHeatmap, heatmaps_on_input_grid
from .errors import CancelledError
from .inference import ProgressCallback, VolumeExplanation
from .layers import resolve_layers
from .models.spec import LoadedModel
from .nnunet_grid import carried_region, preprocessed, read_inputs, to_input_grid
from .nnunet_targets import Disagreement, FirstPass, add_disagreement, first_pass
from .targets import TargetRequest, add_gradient_shares


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
    """One window ``(1, Cin, *patch)`` with its targets ``(1, n, *patch)`` explained through the
    mirroring ``axes``, flipped back, on the CPU: maps name -> ``(n, *patch)``, logits ``(C, *patch)``."""
    image, target = image.to(loop.device), target.to(loop.device)
    if axes:
        image, target = torch.flip(image, axes), torch.flip(target, axes)
    result = seg_grad_cam(
        model.network,
        image,
        loop.layers,
        loop.channels,
        loop.method,
        regions=target > 0.5,
        upsample=True,
        input_gradients=loop.input_gradients,
    )

    def back(values: torch.Tensor) -> torch.Tensor:
        return (torch.flip(values, axes) if axes else values).float().cpu()

    return {name: back(m)[:, 0] for name, m in result.items()}, back(result.logits)[0]


def _stitch_windows(
    model: LoadedModel,
    predictor,
    padded: torch.Tensor,
    targets: torch.Tensor,
    heads: int,
    loop: _Loop,
    votes: Disagreement | None,
):
    """CAMs and logits of every fold, mirroring and window of ``padded`` ``(Cin, *S)``, stitched with
    nnU-Net's Gaussian and averaged: maps name -> ``(n, *S)``, logits ``(C, *S)``. ``votes`` gets
    each mirroring's and each fold's averaged logits."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    parts = model.nnunet_parts()
    patch = tuple(parts.configuration_manager.patch_size)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu")
    )
    weights = torch.zeros(padded.shape[1:])
    for window in slicers:
        weights[window[1:]] += gaussian
    flips, folds = _flips(model, loop.mirror), len(parts.parameters)
    maps: dict[str, torch.Tensor] = {}
    logits = torch.zeros((heads, *padded.shape[1:]))
    fold_logits = logits if votes is None else torch.zeros_like(logits)  # a fold's sum, when its label counts
    pass_logits = torch.zeros_like(logits) if votes is not None and len(flips) > 1 else fold_logits
    steps, total = itertools.count(), folds * len(flips) * len(slicers)
    for parameters in parts.parameters:
        model.network.load_state_dict(parameters)
        for axes in flips:
            for window in slicers:
                if loop.cancel is not None and loop.cancel():
                    raise CancelledError("Cancelled by the user.")
                loop.step("windows", next(steps), total)
                spatial = (slice(None), *window[1:])
                window_maps, window_logits = _window(model, loop, padded[window][None], targets[spatial][None], axes)
                for name, m in window_maps.items():
                    summed = maps.setdefault(name, torch.zeros((len(loop.channels), *padded.shape[1:])))
                    summed[spatial] += m * gaussian / len(flips)
                pass_logits[spatial] += window_logits * gaussian / len(flips)
            if votes is not None and pass_logits is not fold_logits:  # a mirroring's own label
                votes.add_mirroring(pass_logits * len(flips) / weights)
                fold_logits += pass_logits
                pass_logits.zero_()
        if votes is not None:
            votes.add_fold(fold_logits / weights)
            logits += fold_logits
            fold_logits.zero_()
    loop.step("windows", total, total)
    return {name: m / (weights * folds) for name, m in maps.items()}, logits / (weights * folds)


def _agreement(model: LoadedModel, ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How our stitched logits ``(C, *S)`` agree with nnU-Net's own: logits, probabilities, labels."""
    label_manager = model.nnunet_parts().label_manager
    probabilities = [label_manager.apply_inference_nonlin(logits) for logits in (ours, reference)]
    segmentations = [label_manager.convert_probabilities_to_segmentation(p) for p in probabilities]
    return {
        "stitched_logits_max_difference_to_nnunet": float((ours - reference).abs().max()),
        "probabilities_max_difference_to_nnunet": float((probabilities[0] - probabilities[1]).abs().max()),
        "labels_equal_to_nnunet": float((segmentations[0] == segmentations[1]).float().mean()),
    }


def _stitched_maps(
    model: LoadedModel, predictor, x: torch.Tensor, reference: torch.Tensor, first: FirstPass, loop: _Loop
):
    """The CAMs of the preprocessed volume ``x`` ``(Cin, *S)`` with the targets of ``first`` ``(n, *S)``,
    padded to the patch as nnU-Net pads, stitched and cropped back: maps name -> ``(n, *S)``, how our
    stitched logits agree with nnU-Net's ``reference`` ``(C, *S)``, and, with probabilities, the folds'
    and mirrorings' disagreement maps ``(1, *S)`` (see :class:`~.nnunet_targets.Disagreement`)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    parts = model.nnunet_parts()
    label_manager, folds, flips = parts.label_manager, len(parts.parameters), len(_flips(model, loop.mirror))
    assert first.targets.regions is not None
    patch = tuple(parts.configuration_manager.patch_size)
    padded, revert = pad_nd_image(x, patch, "constant", {"value": 0}, True, None)
    padded_targets, _ = pad_nd_image(first.targets.regions.float(), patch, "constant", {"value": 0}, True, None)
    crop = (slice(None), *revert[1:])
    votes = None
    if first.uncertainty is not None and (folds > 1 or flips > 1):
        ensemble = label_manager.convert_logits_to_segmentation(reference).to(torch.int16)
        votes = Disagreement(
            lambda logits: label_manager.convert_logits_to_segmentation(logits[crop]), ensemble, folds, flips
        )
    maps, logits = _stitch_windows(model, predictor, padded, padded_targets, reference.shape[0], loop, votes)
    maps = {name: m[crop] for name, m in maps.items()}
    return maps, _agreement(model, logits[crop], reference), {} if votes is None else votes.maps()


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
) -> VolumeExplanation:
    """Segment and explain the image ``files`` (one per channel, as nnU-Net reads them).

    Labels are nnU-Net's own prediction (all folds, mirroring when ``mirror``); maps per layer
    ``(len(classes), Z, Y, X)`` on the grid the reader gives the input. ``region`` ``(Z, Y, X)``:
    explain the class score inside it instead of the predicted masks. ``request``: findings,
    probabilities (and the folds' and mirrorings' disagreement) and channel reliance; ``spacing``:
    the input grid's (mm, ``(Z, Y, X)``), needed for findings and reliance. Other arguments as
    :func:`SegGradCAMLib.inference.explain_volume`.
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
    reference = predictor.predict_logits_from_preprocessed_data(x).float()  # nnU-Net's own stitched logits
    region_pre = carried_region(model, properties, x.shape[1:], region)
    first = first_pass(model, predictor, raw, properties, reference, classes, region_pre, request, spacing)
    targets = first.targets
    layer_names = list(resolve_layers(model.network, model.chosen_layers(layers)))
    loop = _Loop(layer_names, first.channels, method, device, mirror, targets.reliance is not None, step, cancel)
    maps, checks, disagreement = _stitched_maps(model, predictor, x, reference, first, loop)
    timings["network_and_cam_s"] = time.perf_counter() - start

    start = time.perf_counter()
    to_input = to_input_grid(model, properties)
    if disagreement:
        add_disagreement(first, disagreement, to_input)
    if targets.reliance is not None:
        assert spacing is not None  # checked by first_pass
        add_gradient_shares(targets, maps, to_input, first.labels, spacing, request.channel_names, first.masks)
    heatmaps, raw_max = heatmaps_on_input_grid(
        maps, to_input, first.labels, targets.classes, normalize, on_heatmap, first.masks, targets.target_findings
    )
    timings["postprocess_s"] = time.perf_counter() - start
    result = VolumeExplanation(first.labels, heatmaps, raw_max, classes, layer_names, method, timings, checks)
    result.masks, result.findings, result.reliance = first.masks, targets.findings, targets.reliance
    return result
