"""A coarse layer's map is placed on the input where the layer's voxels lie: traced through the
network's strided convolutions and poolings, checked against the real demo U-Net's own footprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from SegGradCAMLib import seg_grad_cam
from SegGradCAMLib.cam import upsample_maps
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.layer_grid import Grid, GridTrace, default_grid, resample_to_input
from SegGradCAMLib.models import load_model
from SegGradCAMLib.models.declarations import DEFAULT_MULTICLASS_MODEL


@pytest.mark.parametrize("shape, size", [((7, 5), (14, 15)), ((4, 6, 5), (16, 12, 9))])
def test_default_grid_is_interpolate_align_corners_false(shape, size):
    maps = torch.rand(3, 2, *shape)
    mode = {2: "bilinear", 3: "trilinear"}[len(shape)]
    expected = F.interpolate(maps.flatten(0, 1)[:, None], size=size, mode=mode, align_corners=False)
    placed = upsample_maps(maps, size)
    assert torch.allclose(placed, expected[:, 0].reshape(3, 2, *size), atol=1e-6)


def _traced(network: nn.Module, shape: tuple[int, ...]) -> dict:
    with torch.no_grad(), GridTrace(network, shape) as trace:
        network(torch.zeros(1, 1, *shape))
    return trace.grids


def test_trace_follows_strided_convolutions_poolings_and_transposed_convolutions():
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1))
    assert _traced(conv, (32, 32))[(8, 8)] == Grid((4.0, 4.0), (0.0, 0.0))
    pool = nn.Sequential(nn.MaxPool3d(2), nn.MaxPool3d(2))
    assert _traced(pool, (16, 16, 16))[(4, 4, 4)] == Grid((4.0,) * 3, (1.5,) * 3)  # = align_corners=False
    valid = nn.Conv2d(1, 1, 3)  # no padding: voxel 0 on input voxel 1
    assert _traced(valid, (10, 10))[(8, 8)] == Grid((1.0, 1.0), (1.0, 1.0))
    up = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.ConvTranspose2d(1, 1, 2, stride=2),
    )
    assert _traced(up, (32, 32))[(16, 16)] == Grid((2.0, 2.0), (0.0, 0.0))  # the encoder's, not the decoder's
    lone = nn.ConvTranspose2d(1, 1, 2, stride=2)  # input voxel i spreads onto 2i, 2i + 1
    assert _traced(lone, (4, 4))[(8, 8)] == Grid((0.5, 0.5), (-0.25, -0.25))
    anisotropic = nn.Conv3d(1, 1, (1, 3, 3), stride=(1, 2, 2), padding=(0, 2, 2), dilation=(1, 2, 2))
    assert _traced(anisotropic, (5, 16, 16))[(5, 8, 8)] == Grid((1.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ceil = nn.MaxPool2d(2, ceil_mode=True)  # 7 -> 4: the centres do not move
    assert _traced(ceil, (7, 7))[(4, 4)] == Grid((2.0, 2.0), (0.5, 0.5))


def test_a_residual_encoder_keeps_its_strided_convolutions_grid():
    """nnU-Net's residual encoders pool the shortcut of a strided block (``AvgPool`` before the main
    path's stride-2 convolution runs): the convolution's grid wins, as in the plain encoder."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    network = ResidualEncoderUNet(1, 3, (4, 8, 16), nn.Conv2d, 3, (1, 2, 2), (1, 1, 1), 2, (1, 1)).eval()
    assert any(isinstance(m, nn.AvgPool2d) for m in network.modules())
    grids = _traced(network, (32, 32))
    assert grids[(16, 16)] == Grid((2.0, 2.0), (0.0, 0.0)) and grids[(8, 8)] == Grid((4.0, 4.0), (0.0, 0.0))


def test_resampling_puts_a_layer_voxel_on_its_input_coordinate():
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[0, 0, 3, 5] = 1.0
    placed = resample_to_input(impulse, Grid((4.0, 4.0), (0.0, 0.0)), (32, 32))[0, 0]
    assert placed[12, 20] == 1.0 and placed.sum() == pytest.approx(16.0)  # (3, 5) * 4, a 7x7 tent
    old = upsample_maps(impulse, (32, 32))[0, 0]  # align_corners=False: centred on (13.5, 21.5)
    assert old[12, 20] < 1.0 and old[13:15, 21:23].min() == old.max()


def _footprint_centre(network, layer, image, unit) -> np.ndarray:
    """Where a change of one layer voxel (all channels) changes the output: the weighted centre of
    the logits' absolute change, over the voxels changed by >= 25 % of the largest change."""
    module = dict(network.named_modules())[layer]
    delta = {}

    def run():
        handle = module.register_forward_hook(lambda m, a, o: o + delta.get("d", 0.0))
        try:
            with torch.no_grad():
                return network(image)
        finally:
            handle.remove()

    base = run()
    shape = seg_grad_cam(network, image, layer, [1])[layer].shape[2:]
    d = torch.zeros(1, 1, *shape)
    d[(0, 0, *unit)] = 1.0
    delta["d"] = d
    change = (run() - base).abs().sum(1)[0].numpy()
    weight = np.where(change >= 0.25 * change.max(), change, 0.0)
    return np.array([(weight * g).sum() / weight.sum() for g in np.indices(weight.shape)])


@pytest.mark.parametrize("layer", ["model.1.submodule.2", "model.1.submodule.1.submodule.2"])
def test_demo_unet_maps_lie_on_the_footprint_of_their_layer_voxels(layer):
    """The demo U-Net downsamples by stride-2 convolutions of kernel 3: its fine stage's voxel i
    lies on input voxel 2 i, its coarse stage's on 4 i. ``align_corners=False`` put them at
    2 i + 0.5 and 4 i + 1.5 (the heatmap shifted by 1 and 3 mm on the 2 mm grid)."""
    network = load_model(DEFAULT_MULTICLASS_MODEL).network
    image = torch.from_numpy(demo_data.evaluation_set().images[3])[None]
    size = image.shape[2:]
    raw = seg_grad_cam(network, image, layer, [1, 2], "hirescam")
    placed = seg_grad_cam(network, image, layer, [1, 2], "hirescam", upsample=True)
    with torch.no_grad(), GridTrace(network, size) as trace:
        network(image)
    grid = trace.grid(raw[layer].shape[2:], size)
    assert torch.equal(placed[layer], resample_to_input(raw[layer], grid, size))
    assert grid.offset == (0.0, 0.0) and grid != default_grid(raw[layer].shape[2:], size)
    n = raw[layer].shape[2]
    for unit in [(n // 2, n // 2), (n // 3, n // 2 + n // 8)]:
        footprint = _footprint_centre(network, layer, image, unit)
        impulse = torch.zeros(1, 1, n, n)
        impulse[(0, 0, *unit)] = 1.0
        errors = {}
        for g, label in [(grid, "traced"), (default_grid((n, n), size), "align_corners=False")]:
            p = resample_to_input(impulse, g, size)[0, 0].numpy()
            centre = np.array([(p * c).sum() / p.sum() for c in np.indices(p.shape)])
            errors[label] = np.abs(centre - footprint)
            print(f"{layer} voxel {unit}: footprint {footprint.round(2)}, {label} {centre.round(2)}")
        assert errors["traced"].max() <= 0.75 and (errors["traced"] < errors["align_corners=False"]).all(), errors
