"""Whole-volume explanation: geometry round trips, slice-wise 2D, sliding windows, global normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import small_monai_network
from toy_models import blob, centre_of_mass, threshold_model
from SegGradCAMLib.cam import seg_grad_cam
from SegGradCAMLib.errors import CancelledError, SegGradCAMError
from SegGradCAMLib.inference import explain_volume
from SegGradCAMLib.models.spec import LoadedModel, ModelSpec
from SegGradCAMLib.preprocessing import Reorientation


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "permuted": np.array([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]]),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_reorientation_matches_simpleitk_dicomorient(name):
    rng = np.random.default_rng(0)
    array = rng.random((5, 6, 7)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetDirection(DIRECTIONS[name].flatten().tolist())
    reference = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
    reorient = Reorientation.between(DIRECTIONS[name], np.eye(3))
    assert np.array_equal(reorient.apply(array), reference)
    assert np.array_equal(reorient.undo(reorient.apply(array)), array)


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 2.0)])
def test_heatmap_and_labels_stay_on_the_anatomy(name, spacing):
    """Resampling to 2 mm, reorienting to the model's axes and back: no shift, no flip."""
    shape, centre = (24, 30, 28), (9.0, 17.0, 12.0)
    image = blob(shape, centre, radius=5)[None]
    model = threshold_model(spacing=(2.0, 2.0, 2.0), orientation=tuple(map(tuple, np.diag([-1.0, 1.0, 1.0]))))
    result = explain_volume(model, image, spacing, DIRECTIONS[name], layers=["features"], classes=[1])
    truth = image[0] > 0
    labels = result.labels == 1
    assert result.labels.shape == shape
    dice = 2 * (labels & truth).sum() / (labels.sum() + truth.sum())
    assert dice > 0.85
    heat = result.heatmaps["features"][0]
    assert heat.shape == shape and heat.max() == pytest.approx(1.0)
    assert np.abs(centre_of_mass(heat) - np.array(centre)).max() < 1.0


def test_two_dimensional_model_runs_slice_by_slice_with_global_normalisation():
    network = small_monai_network("UNet", 2)
    spec = ModelSpec(name="unet2d", labels=["a", "b", "c"], spatial_dims=2, normalization="none", divisible_by=8)
    model = LoadedModel(network, spec, ["model.1.submodule.2"])
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((1, 5, 32, 32)).astype(np.float32)
    volume[:, 3] *= 5  # a slice on another scale must stay on another scale
    progress = []
    result = explain_volume(model, volume, (1, 1, 1), layers="auto", classes=[1, 2], batch_size=2,
                            progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (3, 3) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    direct = seg_grad_cam(network, torch.from_numpy(volume[0][:, None]), "model.1.submodule.2", [1, 2], upsample=True)
    direct = direct["model.1.submodule.2"].numpy()  # (classes, Z, Y, X)
    raw = result.heatmaps["model.1.submodule.2"] * np.array(result.raw_max["model.1.submodule.2"]).reshape(2, 1, 1, 1)
    assert np.allclose(raw, direct, rtol=1e-4, atol=1e-5 * direct.max())
    with torch.no_grad():
        labels = network(torch.from_numpy(volume[0][:, None])).argmax(1).numpy()
    assert np.array_equal(result.labels, labels)


def test_slice_axis_is_respected():
    network = small_monai_network("BasicUNet", 2)
    spec = ModelSpec(name="b", labels=["a", "b", "c"], spatial_dims=2, normalization="none", divisible_by=16, slice_axis=2)
    model = LoadedModel(network, spec, ["upcat_1"])
    volume = np.random.default_rng(2).standard_normal((1, 16, 32, 3)).astype(np.float32)
    result = explain_volume(model, volume, (1, 1, 1), classes=[1])
    slices = torch.from_numpy(np.moveaxis(volume[0], 2, 0)[:, None].copy())
    with torch.no_grad():
        expected = np.moveaxis(network(slices).argmax(1).numpy(), 0, 2)
    assert np.array_equal(result.labels, expected)


def test_sliding_window_stitching_matches_monai_logits():
    from monai.inferers import sliding_window_inference

    network = small_monai_network("UNet", 3)
    spec = ModelSpec(name="u", labels=["a", "b", "c"], normalization="none", divisible_by=8, roi_size=(16, 16, 16))
    model = LoadedModel(network, spec, ["model.1.submodule.2"])
    volume = np.random.default_rng(3).standard_normal((1, 24, 32, 40)).astype(np.float32)
    result = explain_volume(model, volume, (1, 1, 1), classes=[1, 2])
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(volume)[None], (16, 16, 16), 4, network,
                                          overlap=0.5, mode="gaussian")
    assert np.mean(result.labels == logits.argmax(1)[0].numpy()) > 0.999
    heat = result.heatmaps["model.1.submodule.2"]
    assert heat.shape == (2, 24, 32, 40) and np.isclose(heat.max(axis=(1, 2, 3)), 1.0).all()


def test_user_region_changes_the_explanation():
    image = blob((20, 20, 20), (10, 10, 10), 6)[None]
    mask = image > 0
    region = mask.copy()
    region[0, :10] = False  # "why this half of the blob?"
    model = threshold_model()
    default = explain_volume(model, image, (1, 1, 1), classes=[1], normalize=False).heatmaps["features"]
    regional = explain_volume(model, image, (1, 1, 1), classes=[1], regions=region, normalize=False).heatmaps["features"]
    # Grad-CAM weight = mean gradient = |region| / N: the map scales with the region's size.
    assert regional.max() / default.max() == pytest.approx(region.sum() / mask.sum(), rel=1e-5)


def test_multichannel_input():
    image = np.stack([blob((16, 16, 16), (8, 8, 8), 5), blob((16, 16, 16), (8, 8, 8), 5)])
    result = explain_volume(threshold_model(in_channels=2), image, (1, 1, 1), classes=[1])
    assert (result.labels == 1).sum() == (image[0] > 0).sum()


def test_cancel_stops_the_run():
    image = blob((16, 16, 16), (8, 8, 8), 5)[None]
    with pytest.raises(CancelledError):
        explain_volume(threshold_model(), image, (1, 1, 1), cancel=lambda: True)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((1, 16, 16, 16), np.nan, dtype=np.float32), "NaN/Inf"),
        (np.ones((1, 16, 16, 16), dtype=np.float32), "constant"),
        (np.random.default_rng(0).random((2, 16, 16, 16)), "takes 1 input volume"),
        (np.random.default_rng(0).random((16, 16, 16)), "channels, Z, Y, X"),
        (np.random.default_rng(0).random((1, 4, 16, 16)), "too small"),
    ],
)
def test_bad_volumes_are_refused(image, message):
    model = threshold_model(divisible_by=8)
    with pytest.raises(SegGradCAMError, match=message):
        explain_volume(model, image, (1, 1, 1))
