"""nnU-Net's grid: the input files as nnU-Net's reader and preprocessing present them, and the ways
between the input file's grid and nnU-Net's preprocessed space.

On the input grid, arrays are ``(k, Z, Y, X)`` in the input file's own voxel order (as SimpleITK's
arrays); in nnU-Net's preprocessed space ``(k, z, y, x)``: transposed, cropped to the non-zero box
and resampled to the plans' spacing. Maps go there as nnU-Net carries a segmentation and come back
as nnU-Net exports probabilities (its resampling, un-cropping and transpose), the reader's
reorientation (``NibabelIOWithReorient`` reads in RAS order) undone.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .models.spec import LoadedModel

READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")


def reader_name(model: LoadedModel) -> str:
    """The class name of the plans' image reader (``SimpleITKIO``, ``NibabelIO``, ...)."""
    return model.nnunet_parts().plans_manager.image_reader_writer_class.__name__


def read_inputs(model: LoadedModel, files: Sequence[str]) -> tuple[np.ndarray, dict]:
    """The input ``files`` (one per channel) read by the plans' image reader: ``(Cin, Z', Y', X')``
    in the reader's voxel order, and nnU-Net's properties of the case."""
    reader = model.nnunet_parts().plans_manager.image_reader_writer_class()
    return reader.read_images(list(files))


def preprocessed(model: LoadedModel, raw: np.ndarray, properties: dict) -> np.ndarray:
    """``raw`` (as :func:`read_inputs` gives it; not changed) preprocessed by nnU-Net:
    ``(Cin, z, y, x)`` float32; nnU-Net records its crop and shapes in ``properties``."""
    parts = model.nnunet_parts()
    preprocessor = parts.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case_npy(
        raw, None, properties, parts.plans_manager, parts.configuration_manager, parts.dataset_json
    )
    return data


def preprocess(model: LoadedModel, files: Sequence[str], region: np.ndarray | None = None):
    """The input files read and preprocessed by nnU-Net: ``(Cin, z, y, x)`` float32, properties, and
    ``region`` ``(Z, Y, X)`` (input grid) carried along as nnU-Net carries a segmentation
    (``(z, y, x)`` bool, or None)."""
    raw, properties = read_inputs(model, files)
    data = preprocessed(model, raw, properties)
    return data, properties, carried_region(model, properties, data.shape[1:], region)


def carried_region(
    model: LoadedModel, properties: dict, shape: Sequence[int], region: np.ndarray | None
) -> np.ndarray | None:
    """``region`` ``(Z, Y, X)`` on the input grid in nnU-Net's preprocessed space of spatial ``shape``
    (see :func:`to_preprocessed`): ``(z, y, x)`` bool, or None without a region."""
    if region is None:
        return None
    return to_preprocessed(model, properties, shape)(region[None].astype(np.int8))[0] > 0


def _reorientation(model: LoadedModel, properties: dict, to_file: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Maps ``(k, Z, Y, X)`` from the order the plans' reader presents the input to the input file's
    own voxel order (``to_file``) or back. ``NibabelIOWithReorient`` reads in RAS order (nibabel's
    orientation transform, as its ``write_seg`` undoes it); the other readers keep the file's order."""
    if reader_name(model) != "NibabelIOWithReorient":
        return lambda arrays: arrays
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    ras, own = axcodes2ornt("RAS"), io_orientation(properties["nibabel_stuff"]["original_affine"])
    transform = ornt_transform(ras, own) if to_file else ornt_transform(own, ras)
    return lambda arrays: np.stack(
        [apply_orientation(a.transpose(2, 1, 0), transform).transpose(2, 1, 0) for a in arrays]
    )


def to_file_order(model: LoadedModel, properties: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Maps ``(k, Z, Y, X)`` as the plans' reader presented the input -> the input file's own voxel order."""
    return _reorientation(model, properties, to_file=True)


def _spacings(model: LoadedModel, properties: dict) -> tuple[list[float], list[float]]:
    """The input's spacing in nnU-Net's transposed axis order and the preprocessed spacing (a 2D
    configuration keeps the input's spacing between slices)."""
    parts = model.nnunet_parts()
    given = [properties["spacing"][i] for i in parts.plans_manager.transpose_forward]
    target = list(parts.configuration_manager.spacing)
    return given, target if len(target) == len(given) else [given[0], *target]


def _crop(properties: dict) -> tuple[slice, ...]:
    """nnU-Net's crop to the non-zero box, channels first."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    return (slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))


def to_preprocessed(model: LoadedModel, properties: dict, shape: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Maps integer maps ``(k, Z, Y, X)`` on the input file's grid -> ``(k, z, y, x)`` in nnU-Net's
    preprocessed space of spatial ``shape``, as nnU-Net's preprocessing carries a segmentation: the
    reader's order, its transpose, its crop and its segmentation resampling (each value on its own)."""
    plans, configuration = model.nnunet_parts().plans_manager, model.nnunet_parts().configuration_manager
    given, target = _spacings(model, properties)
    reader_order = _reorientation(model, properties, to_file=False)

    def convert(maps: np.ndarray) -> np.ndarray:
        transposed = reader_order(maps).transpose([0, *[i + 1 for i in plans.transpose_forward]])
        return np.asarray(configuration.resampling_fn_seg(transposed[_crop(properties)], tuple(shape), given, target))

    return convert


def to_input_grid(model: LoadedModel, properties: dict) -> Callable[[torch.Tensor], np.ndarray]:
    """Maps ``(k, z, y, x)`` in nnU-Net's preprocessed space -> ``(k, Z, Y, X)`` float32 on the input
    file's grid: nnU-Net's probability resampling, un-cropping (zeros outside) and transpose, then the
    reader's reorientation undone (:func:`to_file_order`)."""
    parts = model.nnunet_parts()
    plans, configuration = parts.plans_manager, parts.configuration_manager
    given, current = _spacings(model, properties)
    shape = properties["shape_after_cropping_and_before_resampling"]
    file_order = to_file_order(model, properties)

    def convert(maps: torch.Tensor) -> np.ndarray:
        resampled = np.asarray(
            configuration.resampling_fn_probabilities(maps.float(), shape, current, given), dtype=np.float32
        )
        full = np.zeros((len(resampled), *properties["shape_before_cropping"]), dtype=np.float32)
        full[_crop(properties)] = resampled
        return file_order(full.transpose([0] + [i + 1 for i in plans.transpose_backward]))

    return convert


def exported(
    model: LoadedModel, reference: torch.Tensor, properties: dict, channels: list[int], probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """nnU-Net's own export of its logits ``reference`` ``(C, z, y, x)`` to the input file's grid:
    labels ``(Z, Y, X)`` int16 (class indices); for region-based models each class's own mask
    ``(n, Z, Y, X)`` bool (``channels``: the output channel of each class; else None); with
    ``probabilities``, nnU-Net's exported probabilities ``(C, Z, Y, X)`` float32 (its
    ``save_probabilities`` output; else None)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    parts = model.nnunet_parts()
    label_manager = parts.label_manager
    result = convert_predicted_logits_to_segmentation_with_correct_shape(
        reference,
        parts.plans_manager,
        parts.configuration_manager,
        label_manager,
        properties,
        return_probabilities=label_manager.has_regions or probabilities,
        num_threads_torch=torch.get_num_threads(),
    )
    painted, exported_probabilities = result if isinstance(result, tuple) else (result, None)
    masks = None
    if label_manager.has_regions:  # painted value regions_class_order[i] -> class i + 1; each class's own mask
        order = list(label_manager.regions_class_order)
        renumber = np.zeros(max(order) + 1, dtype=np.int16)
        renumber[order] = np.arange(1, len(order) + 1)
        labels, masks = renumber[painted], exported_probabilities[channels] > 0.5
    else:
        labels = painted.astype(np.int16)
    file_order = to_file_order(model, properties)
    return (
        file_order(labels[None])[0],
        None if masks is None else file_order(masks),
        file_order(exported_probabilities) if probabilities else None,
    )
