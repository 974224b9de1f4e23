"""The network that scores perturbed inputs: on the CPU a 3D network scores as a channels-last copy
with every convolution on oneDNN; it must compute the network's own function (each input of a batch
normalised by its own statistics), leave the network as it was, and not be made where nothing
changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import small_monai_network
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.evaluation.scoring_network import scoring_network
from SegGradCAMLib.models import SHIPPED_MODELS, load_model
from SegGradCAMLib.models.hdbet import load_hdbet
from SegGradCAMLib.models.nnunet import find_nnunet_folders
from SegGradCAMLib.pipelines import nnunet_case


@pytest.fixture(scope="module")
def nnunet_block(tmp_path_factory) -> tuple[nn.Module, torch.Tensor]:
    """The shipped nnU-Net's network and a batch of two inputs ``(2, 2, 48, 64, 64)``: a block of
    held-out case 0 as nnU-Net preprocesses it, and the same block blurred by the mean of each
    channel (a different input, with different statistics in every instance norm)."""
    model = load_model(str(find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]))
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, tmp_path_factory.mktemp("case"))
    image = nnunet_case(model, [str(paths[c]) for c in demo_data.CHANNELS], "held-out").image
    block = image[:, 16:64, 16:80, 16:80]
    other = 0.5 * block + 0.5 * block.mean(dim=(1, 2, 3), keepdim=True) + 1.0
    return model.network.eval(), torch.stack([block, other]).contiguous()


def assert_same_function(network: nn.Module, inputs: torch.Tensor) -> None:
    """The scoring copy's outputs on ``inputs`` ``(B, Cin, *S)``, the whole batch at once, equal the
    network's on each input alone within float32 rounding (1e-4 of the largest logit)."""
    scoring = scoring_network(network, "cpu")
    assert scoring is not network
    with torch.no_grad():
        expected = torch.cat([network(one[None]) for one in inputs])
        found = scoring(inputs)
    assert found.is_contiguous(memory_format=torch.channels_last_3d)
    scale = float(expected.abs().max())
    assert scale > 1.0
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-4 * scale)


def test_the_shipped_nnunet_scores_as_itself(nnunet_block):
    network, inputs = nnunet_block
    assert_same_function(network, inputs)


def test_hdbet_scores_as_itself():
    """HD-BET keeps its instance norms in training mode (each input's statistics) while tracking
    running statistics: the copy must use the input's, not the running ones."""
    network = load_hdbet().network
    norms = [m for m in network.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.training and m.track_running_stats for m in norms)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, 1, 64, 64, 64, generator=generator) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)
    assert_same_function(network, inputs)


def test_running_statistics_and_norms_without_weights_score_as_themselves():
    """A MONAI UNet (instance norms without weights or running statistics) and a network whose
    instance norms normalise by their running statistics (eval mode)."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2, 1, 32, 32, 32, generator=generator) + torch.tensor([0.0, 2.0]).view(2, 1, 1, 1, 1)
    assert_same_function(small_monai_network("UNet", 3), inputs)
    torch.manual_seed(2)
    norm = nn.InstanceNorm3d(8, affine=True, track_running_stats=True)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    network = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), norm, nn.LeakyReLU(), nn.Conv3d(8, 3, 1)).eval()
    assert_same_function(network, inputs)


def test_every_convolution_of_the_copy_runs_on_onednn(nnunet_block):
    """Not PyTorch's reference kernel, which it picks for a small grid of one input."""
    network, inputs = nnunet_block
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        scoring_network(network, "cpu")(inputs[:1])
    kernels = {event.key: event.count for event in profile.key_averages() if "conv" in event.key}
    convolutions = sum(1 for m in network.modules() if isinstance(m, nn.Conv3d))
    assert "aten::slow_conv3d_forward" not in kernels, kernels
    assert kernels.get("aten::mkldnn_convolution", 0) >= convolutions - 3, kernels  # 3 unused heads


def test_the_network_is_left_as_it_was(nnunet_block):
    network, inputs = nnunet_block
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    with torch.no_grad():
        expected = network(inputs[:1])
        scoring_network(network, "cpu")(inputs)
        again = network(inputs[:1])
    assert torch.equal(expected, again)
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, before[name]) and tensor.is_contiguous(), name
    assert not any("forward" in vars(m) or "_conv_forward" in vars(m) for m in network.modules())


def test_no_copy_where_nothing_changes():
    """A 2D network, a GPU and a network in training mode score as the network itself."""
    two_d = small_monai_network("UNet", 2)
    three_d = small_monai_network("UNet", 3)
    assert scoring_network(two_d, "cpu") is two_d
    assert scoring_network(three_d, "cuda") is three_d
    assert scoring_network(three_d.train(), "cpu") is three_d
