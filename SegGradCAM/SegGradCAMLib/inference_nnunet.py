"""Explain an nnU-Net v2 model with nnU-Net's own pipeline around the CAM pass.

nnU-Net does what it already does: its image reader (from plans.json), its preprocessing
(transpose, crop to non-zero, each channel's normalisation, resampling), its sliding-window
steps and Gaussian importance map, its prediction of the segmentation, and its export back to
the original image geometry. The window loop with gradients is ours (nnU-Net predicts under
``torch.inference_mode()``): each window is explained with the final segmentation (nnU-Net's
own stitched prediction) cut to it as target, and maps are stitched with nnU-Net's Gaussian
weights, averaged over folds (and mirrorings, when on) as nnU-Net averages logits, then
brought back with nnU-Net's resampling, un-cropping and transpose.

Region-based models (overlapping regions, sigmoid outputs, as BraTS nnU-Nets): class ``c`` is
output channel ``c - 1`` and its target the voxels where nnU-Net's sigmoid exceeds 0.5; the
segmentation is nnU-Net's painting in ``regions_class_order``, renumbered to class indices, and
each class's own (overlapping) mask is returned beside it.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import predicted_regions, seg_grad_cam
from .errors import CancelledError
from .class_maps import ClassHeatmap, heatmaps_on_input_grid
from .inference import ProgressCallback, VolumeExplanation
from .layers import resolve_layers
from .models.spec import LoadedModel


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


def preprocess(model: LoadedModel, files: Sequence[str], region: np.ndarray | None = None):
    """The input files read by the plans' image reader and preprocessed by nnU-Net:
    ``(C, z, y, x)`` float32, properties, and ``region`` ``(Z, Y, X)`` (input grid) carried along
    as nnU-Net carries a segmentation (``(z, y, x)`` bool, or None)."""
    parts = model.nnunet_parts()
    reader = parts.plans_manager.image_reader_writer_class()
    data, properties = reader.read_images(list(files))
    preprocessor = parts.configuration_manager.preprocessor_class(verbose=False)
    seg = None if region is None else region[None].astype(np.int8)
    data, seg, properties = preprocessor.run_case_npy(
        data, seg, properties, parts.plans_manager, parts.configuration_manager, parts.dataset_json
    )
    # nnU-Net returns a segmentation even without one (its non-zero mask, -1 outside): use it only for a region
    return data, properties, None if region is None else seg[0] > 0


READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")


def reader_name(model: LoadedModel) -> str:
    """The class name of the plans' image reader (``SimpleITKIO``, ``NibabelIO``, ...)."""
    return model.nnunet_parts().plans_manager.image_reader_writer_class.__name__


def to_file_order(model: LoadedModel, properties: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Maps ``(k, Z, Y, X)`` as the plans' reader presented the input -> the input file's own voxel
    order (as SimpleITK's arrays). ``NibabelIOWithReorient`` reads in RAS order: undone here as its
    ``write_seg`` undoes it (nibabel's orientation transform from RAS to the file's)."""
    if reader_name(model) != "NibabelIOWithReorient":
        return lambda arrays: arrays  # SimpleITKIO and NibabelIO keep the file's voxel order
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(properties["nibabel_stuff"]["original_affine"]))
    return lambda arrays: np.stack([apply_orientation(a.transpose(2, 1, 0), back).transpose(2, 1, 0) for a in arrays])


def to_input_grid(model: LoadedModel, properties: dict) -> Callable[[torch.Tensor], np.ndarray]:
    """Maps ``(k, z, y, x)`` in nnU-Net's preprocessed space -> ``(k, Z, Y, X)`` on the input file's
    grid: nnU-Net's probability resampling, un-cropping (zeros outside) and transpose, then the
    reader's reorientation undone (:func:`to_file_order`)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    parts = model.nnunet_parts()
    plans, configuration = parts.plans_manager, parts.configuration_manager
    spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = (
        configuration.spacing if len(configuration.spacing) == len(shape) else [spacing[0], *configuration.spacing]
    )

    def convert(maps: torch.Tensor) -> np.ndarray:
        resampled = np.asarray(
            configuration.resampling_fn_probabilities(maps.float(), shape, current, spacing), dtype=np.float32
        )
        full = np.zeros((len(resampled), *properties["shape_before_cropping"]), dtype=np.float32)
        full[(slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))] = resampled
        return file_order(full.transpose([0] + [i + 1 for i in plans.transpose_backward]))

    file_order = to_file_order(model, properties)
    return convert


def _targets(
    model: LoadedModel, reference: torch.Tensor, classes: list[int], channels: list[int], region: np.ndarray | None
) -> torch.Tensor:
    """Target regions ``(len(classes), z, y, x)`` bool in nnU-Net's preprocessed space: each class's
    mask in nnU-Net's own stitched logits ``reference`` ``(C, z, y, x)`` (sigmoid > 0.5 for
    region-based models), or the user's ``region``."""
    label_manager = model.nnunet_parts().label_manager
    if region is not None:
        return torch.from_numpy(np.repeat(region[None], len(classes), axis=0))
    if label_manager.has_regions:
        return label_manager.apply_inference_nonlin(reference)[channels] > 0.5
    return predicted_regions(reference[None], classes)[0]


def _flips(model: LoadedModel, mirror: bool) -> list[tuple[int, ...]]:
    """The mirrorings nnU-Net averages over (batch-axis numbering), the identity first."""
    flips: list[tuple[int, ...]] = [()]
    mirror_axes = model.nnunet_parts().mirror_axes
    if mirror and mirror_axes:
        axes = [a + 2 for a in mirror_axes]
        flips += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
    return flips


def _stitch_windows(
    model: LoadedModel,
    predictor,
    padded: torch.Tensor,
    targets: torch.Tensor,
    layer_names: list[str],
    channels: list[int],
    heads: int,
    method: str,
    device: str,
    mirror: bool,
    step: ProgressCallback,
    cancel: Callable[[], bool] | None,
):
    """CAMs and logits of every fold, window and mirroring of ``padded`` ``(Cin, *S)``, stitched with
    nnU-Net's Gaussian: maps layer -> ``(n, *S)``, logits ``(C, *S)``, weights ``(*S)`` (not yet divided)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    parts = model.nnunet_parts()
    patch = tuple(parts.configuration_manager.patch_size)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu")
    )
    flips = _flips(model, mirror)
    maps = {name: torch.zeros((len(channels), *padded.shape[1:])) for name in layer_names}
    logits = torch.zeros((heads, *padded.shape[1:]))
    weights = torch.zeros(padded.shape[1:])
    total = len(parts.parameters) * len(slicers)
    for fold, parameters in enumerate(parts.parameters):
        model.network.load_state_dict(parameters)
        for i, window in enumerate(slicers):
            if cancel is not None and cancel():
                raise CancelledError("Cancelled by the user.")
            step("windows", fold * len(slicers) + i, total)
            spatial = (slice(None), *window[1:])
            window_image, window_target = padded[window][None].to(device), targets[spatial][None].to(device)
            for axes in flips:
                image, target = window_image, window_target
                if axes:
                    image, target = torch.flip(image, axes), torch.flip(target, axes)
                result = seg_grad_cam(
                    model.network, image, layer_names, channels, method, regions=target > 0.5, upsample=True
                )
                for name, m in result.items():
                    m = torch.flip(m, axes) if axes else m  # (n, 1, *patch)
                    maps[name][spatial] += m[:, 0].float().cpu() * gaussian / len(flips)
                window_logits = torch.flip(result.logits, axes) if axes else result.logits
                logits[spatial] += window_logits[0].float().cpu() * gaussian / len(flips)
            weights[window[1:]] += gaussian
    step("windows", total, total)
    return maps, logits, weights


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


def _exported_labels(model: LoadedModel, reference: torch.Tensor, properties: dict, channels: list[int]):
    """nnU-Net's own segmentation of its logits ``reference``, exported to the input file's grid:
    labels ``(Z, Y, X)`` int16 (class indices) and, for region-based models, each class's own mask
    ``(n, Z, Y, X)`` bool (else None)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    parts = model.nnunet_parts()
    label_manager = parts.label_manager
    exported = convert_predicted_logits_to_segmentation_with_correct_shape(
        reference,
        parts.plans_manager,
        parts.configuration_manager,
        label_manager,
        properties,
        return_probabilities=label_manager.has_regions,
        num_threads_torch=torch.get_num_threads(),
    )
    masks = None
    if label_manager.has_regions:  # painted value regions_class_order[i] -> class i + 1; each class's own mask
        painted, probabilities = exported
        order = list(label_manager.regions_class_order)
        renumber = np.zeros(max(order) + 1, dtype=np.int16)
        renumber[order] = np.arange(1, len(order) + 1)
        labels, masks = renumber[painted], probabilities[channels] > 0.5
    else:
        labels = exported.astype(np.int16)
    file_order = to_file_order(model, properties)
    return file_order(labels[None])[0], None if masks is None else file_order(masks)


def _stitched_maps(
    model: LoadedModel,
    predictor,
    x: torch.Tensor,
    reference: torch.Tensor,
    targets: torch.Tensor,
    layer_names: list[str],
    channels: list[int],
    method: str,
    device: str,
    mirror: bool,
    step: ProgressCallback,
    cancel: Callable[[], bool] | None,
):
    """The CAMs of the preprocessed volume ``x`` ``(Cin, *S)`` with ``targets`` ``(n, *S)``, padded to
    the patch as nnU-Net pads, stitched and cropped back: maps layer -> ``(n, *S)``, and how our
    stitched logits agree with nnU-Net's ``reference`` ``(C, *S)``."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    patch = tuple(model.nnunet_parts().configuration_manager.patch_size)
    padded, revert = pad_nd_image(x, patch, "constant", {"value": 0}, True, None)
    padded_targets, _ = pad_nd_image(targets.float(), patch, "constant", {"value": 0}, True, None)
    maps, logits, weights = _stitch_windows(
        model,
        predictor,
        padded,
        padded_targets,
        layer_names,
        channels,
        reference.shape[0],
        method,
        device,
        mirror,
        step,
        cancel,
    )
    crop = (slice(None), *revert[1:])
    return {name: (m / weights)[crop] for name, m in maps.items()}, _agreement(
        model, (logits / weights)[crop], reference
    )


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
) -> VolumeExplanation:
    """Segment and explain the image ``files`` (one per channel, as nnU-Net reads them).

    Labels are nnU-Net's own prediction (all folds, mirroring when ``mirror``); maps per layer
    ``(len(classes), Z, Y, X)`` on the grid the reader gives the input. ``region`` ``(Z, Y, X)``:
    explain the class score inside it instead of the predicted masks. Other arguments as
    :func:`SegGradCAMLib.inference.explain_volume`.
    """
    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    step("preprocess", 0, 1)
    data, properties, region_pre = preprocess(model, files, region)
    step("preprocess", 1, 1)
    timings["preprocess_s"] = time.perf_counter() - start

    start = time.perf_counter()
    classes = list(range(1, len(model.spec.labels))) if classes is None else [int(c) for c in classes]
    # the network output channel of each class
    channels = [c - 1 for c in classes] if model.nnunet_parts().label_manager.has_regions else classes
    layer_names = list(resolve_layers(model.network, model.chosen_layers(layers)))
    predictor = nnunet_predictor(model, device, tile_step_size, mirror)
    x = torch.from_numpy(data)
    reference = predictor.predict_logits_from_preprocessed_data(x).float()  # nnU-Net's own stitched logits
    targets = _targets(model, reference, classes, channels, region_pre)
    maps, checks = _stitched_maps(
        model, predictor, x, reference, targets, layer_names, channels, method, device, mirror, step, cancel
    )
    timings["network_and_cam_s"] = time.perf_counter() - start

    start = time.perf_counter()
    labels, masks = _exported_labels(model, reference, properties, channels)
    heatmaps, raw_max = heatmaps_on_input_grid(
        maps, to_input_grid(model, properties), labels, classes, normalize, on_heatmap, masks
    )
    timings["postprocess_s"] = time.perf_counter() - start
    return VolumeExplanation(labels, heatmaps, raw_max, classes, layer_names, method, timings, checks, masks)
