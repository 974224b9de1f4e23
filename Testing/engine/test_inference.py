"""Whole-volume explanation: geometry round trips, slice-wise 2D, sliding windows, global normalisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
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
    result = explain_volume(
        model,
        volume,
        (1, 1, 1),
        layers="auto",
        classes=[1, 2],
        batch_size=2,
        progress=lambda stage, done, total: progress.append((done, total)) if stage == "slices" else None,
    )
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
    spec = ModelSpec(
        name="b", labels=["a", "b", "c"], spatial_dims=2, normalization="none", divisible_by=16, slice_axis=2
    )
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
        logits = sliding_window_inference(
            torch.from_numpy(volume)[None], (16, 16, 16), 4, network, overlap=0.5, mode="gaussian"
        )
    assert np.mean(result.labels == logits.argmax(1)[0].numpy()) > 0.999
    heat = result.heatmaps["model.1.submodule.2"]
    assert heat.shape == (2, 24, 32, 40) and np.isclose(heat.max(axis=(1, 2, 3)), 1.0).all()


def _hand_sliding_window(network, volume, roi, starts, pad, layers, classes, regions=None):
    """Reference for the sliding-window target rule, written out window by window.

    ``volume`` ``(Cin, *S)`` is zero-padded by ``pad`` ((before, after) per axis); the
    windows start at every combination of ``starts`` (per axis). Logits and maps are
    stitched with MONAI's Gaussian importance map. The region of class c in a window is
    the stitched segmentation's mask of c (cropped to ``S``, padded with False) cut to the
    window, unless ``regions`` ``(len(classes), *S)`` are given.
    Returns labels ``(*S)`` and maps layer -> ``(len(classes), *S)``.
    """
    from monai.data.utils import compute_importance_map

    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device="cpu").reshape(roi)
    widths = [w for before_after in reversed(pad) for w in before_after]  # F.pad order: last axis first
    x = F.pad(torch.from_numpy(volume)[None], widths)
    size = x.shape[2:]
    windows = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in itertools.product(*starts)]
    crop = tuple(slice(before, n - after) for (before, after), n in zip(pad, size))
    total = torch.zeros(size)
    for window in windows:
        total[window] += weight
    if regions is None:
        logits = None
        with torch.no_grad():
            for window in windows:
                out = network(x[(slice(None), slice(None), *window)])[0] * weight
                logits = torch.zeros((out.shape[0], *size)) if logits is None else logits
                logits[(slice(None), *window)] += out
        labels = (logits / total).argmax(0)[crop]
        regions = torch.stack([labels == c for c in classes])
    regions = F.pad(torch.as_tensor(regions, dtype=torch.bool), widths)
    maps = {name: torch.zeros((len(classes), *size)) for name in layers}
    logits = None
    for window in windows:
        cams = seg_grad_cam(
            network,
            x[(slice(None), slice(None), *window)],
            layers,
            classes,
            regions=regions[(slice(None), *window)][None],
            relu=True,
            upsample=True,
        )
        for name in layers:
            maps[name][(slice(None), *window)] += cams[name][:, 0] * weight
        logits = torch.zeros((cams.logits.shape[1], *size)) if logits is None else logits
        logits[(slice(None), *window)] += cams.logits[0] * weight
    labels = (logits / total).argmax(0)[crop].numpy()
    return labels, {name: (m / total)[(slice(None), *crop)].numpy() for name, m in maps.items()}


@pytest.mark.parametrize(
    "shape, starts, pad, user_region",
    [
        ((48, 48, 48), [(0, 16)] * 3, [(0, 0)] * 3, False),  # 2 x 2 x 2 windows, no padding
        # 19 < 32 along Z: MONAI pads 13 voxels, 6 before and 7 after; X: last window flush with the end
        ((19, 48, 40), [(0,), (0, 16), (0, 8)], [(6, 7), (0, 0), (0, 0)], False),
        ((19, 48, 40), [(0,), (0, 16), (0, 8)], [(6, 7), (0, 0), (0, 0)], True),
    ],
    ids=["2x2x2-windows", "padded", "padded-user-region"],
)
def test_sliding_window_cams_use_the_stitched_segmentation_as_target(shape, starts, pad, user_region):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    roi = (32, 32, 32)
    scanned = tuple(max(n, r) for n, r in zip(shape, roi))
    monai_windows = dense_patch_slices(scanned, roi, _get_scan_interval(scanned, roi, 3, (0.5,) * 3))
    assert sorted(tuple(s.start for s in w) for w in monai_windows) == sorted(itertools.product(*starts))

    network = small_monai_network("UNet", 3)
    layers, classes = ["model.1.submodule.1.submodule.2", "model.1.submodule.2"], [1, 2]
    spec = ModelSpec(name="u", labels=["a", "b", "c"], normalization="none", divisible_by=16, roi_size=roi)
    model = LoadedModel(network, spec, layers)
    volume = np.random.default_rng(4).standard_normal((1, *shape)).astype(np.float32)
    regions = None
    if user_region:
        regions = np.zeros((len(classes), *shape), dtype=bool)
        regions[0, 2:12, 5:30, 10:35] = True
        regions[1, 10:, 30:, :20] = True
    progress = []
    result = explain_volume(
        model,
        volume,
        (1, 1, 1),
        layers=layers,
        classes=classes,
        regions=regions,
        normalize=False,
        progress=lambda stage, done, total: progress.append((stage, done, total)),
    )

    labels, maps = _hand_sliding_window(network, volume[0:1], roi, starts, pad, layers, classes, regions)
    assert result.labels.shape == shape and np.array_equal(result.labels, labels)
    assert len(np.unique(labels)) == 3  # every class has a region somewhere
    assert result.layers == layers and list(result.heatmaps) == layers
    for name in layers:
        heat, expected = result.heatmaps[name], maps[name]
        assert heat.shape == (len(classes), *shape) and np.isfinite(heat).all()
        for c in range(len(classes)):
            assert expected[c].max() > 0
            assert np.abs(heat[c] - expected[c]).max() <= 1e-4 * expected[c].max()

    n_windows = len(monai_windows)
    for stage in ("segment", "windows"):  # without a region, a no-grad pass gives the segmentation first
        steps = [(done, total) for name, done, total in progress if name == stage]
        if stage == "segment" and user_region:
            assert steps == []
            continue
        assert steps[0] == (0, n_windows) and steps[-1] == (n_windows, n_windows), stage
        assert [d for d, _ in steps] == sorted(d for d, _ in steps) and {t for _, t in steps} == {n_windows}
    stages = [name for name, _, _ in progress if name in ("segment", "windows")]
    assert stages == sorted(stages, key=("segment", "windows").index)


def test_sliding_window_can_be_cancelled_between_windows():
    network = small_monai_network("UNet", 3)
    spec = ModelSpec(name="u", labels=["a", "b", "c"], normalization="none", divisible_by=16, roi_size=(32,) * 3)
    model = LoadedModel(network, spec, ["model.1.submodule.2"])
    volume = np.random.default_rng(5).standard_normal((1, 48, 48, 48)).astype(np.float32)
    steps = []
    with pytest.raises(CancelledError):
        explain_volume(
            model,
            volume,
            (1, 1, 1),
            classes=[1],
            progress=lambda stage, d, t: steps.append((stage, d)) if stage in ("segment", "windows") else None,
            cancel=lambda: len(steps) >= 12,
        )  # during the CAM pass, after the segmentation pass (8 windows each)
    assert steps == [("segment", d) for d in range(9)] + [("windows", d) for d in range(3)]


def test_user_region_changes_the_explanation():
    image = blob((20, 20, 20), (10, 10, 10), 6)[None]
    mask = image > 0
    region = mask.copy()
    region[0, :10] = False  # "why this half of the blob?"
    model = threshold_model()
    default = explain_volume(model, image, (1, 1, 1), classes=[1], normalize=False).heatmaps["features"]
    regional = explain_volume(model, image, (1, 1, 1), classes=[1], regions=region, normalize=False).heatmaps[
        "features"
    ]
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
