"""Seg-Grad-CAM engine: equality with Captum, known answers, hooks and gradients cleaned up."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from conftest import MONAI_ARCHITECTURES, small_monai_network
from torch import nn

from SegGradCAMLib import decoder_layers, seg_grad_cam
from SegGradCAMLib.cam import CAM_METHODS, predicted_regions
from SegGradCAMLib.errors import SegGradCAMError

CLASSES = [0, 1, 2]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def captum_maps(network, inputs, layer_name, classes, regions, relu=True):
    """Captum's LayerGradCam with f_c = region-summed logit of class c, one forward per class."""
    layer = dict(network.named_modules())[layer_name]
    maps = []
    for i, c in enumerate(classes):

        def f_c(x, c=c, i=i):
            return (network(x)[:, c] * regions[:, i]).flatten(1).sum(1)

        maps.append(LayerGradCam(f_c, layer).attribute(inputs, relu_attributions=relu)[:, 0])
    return torch.stack(maps)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", MONAI_ARCHITECTURES)
def test_gradcam_equals_captum(arch, dims):
    network = small_monai_network(arch, dims)
    inputs = torch.randn(2, 1, *([32] * dims), generator=torch.Generator().manual_seed(1))
    layers = decoder_layers(network)
    assert len(layers) >= 2
    maps = seg_grad_cam(network, inputs, layers, CLASSES)
    with torch.no_grad():
        regions = predicted_regions(network(inputs), CLASSES)
    for name in layers:
        reference = captum_maps(network, inputs, name, CLASSES, regions)
        assert maps[name].shape == reference.shape == (3, 2, *reference.shape[2:])
        assert reference.abs().max() > 0
        assert relative_error(maps[name], reference) <= 1e-5, (arch, dims, name)


def test_gradcam_equals_captum_without_relu_and_with_user_region():
    network = small_monai_network("BasicUNet", 2)
    inputs = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    regions = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    regions[..., 8:16, 10:20] = True
    maps = seg_grad_cam(network, inputs, ["upcat_2", "upcat_1"], [1, 2], regions=regions, relu=False)
    for name in ("upcat_2", "upcat_1"):
        reference = captum_maps(network, inputs, name, [1, 2], regions, relu=False)
        assert (reference < 0).any()
        assert relative_error(maps[name], reference) <= 1e-5


IN_PLACE_LEAVES = {
    # leaf layer whose output the next module (an in-place LeakyReLU) overwrites, and a decoder stage beside it
    "UNet": ("model.1.submodule.2.0.adn.D", "model.1.submodule.1.submodule.2"),
    "BasicUNet": ("upcat_1.convs.conv_1.adn.D", "upcat_2"),
    "DynUNet": ("upsamples.0.conv_block.norm2", "upsamples.1"),
}


def in_place_network(arch: str, dims: int) -> nn.Module:
    """The conftest network, with an in-place LeakyReLU for UNet (whose default PReLU is not in place)."""
    if arch != "UNet":
        return small_monai_network(arch, dims)
    from monai.networks import nets

    torch.manual_seed(0)
    return nets.UNet(
        dims, 1, 3, (8, 16, 32, 64), (2, 2, 2), num_res_units=1, act=("leakyrelu", {"inplace": True})
    ).eval()


@pytest.mark.parametrize("together", [False, True], ids=["alone", "with-another-layer"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", sorted(IN_PLACE_LEAVES))
def test_leaf_layer_followed_by_in_place_activation_equals_captum(arch, dims, together):
    network = in_place_network(arch, dims)
    leaf, other = IN_PLACE_LEAVES[arch]
    following = [m for m in network.modules() if getattr(m, "inplace", False)]
    assert following, "the network must hold an in-place activation"
    inputs = torch.randn(1, 1, *([32] * dims), generator=torch.Generator().manual_seed(3))
    layers = [other, leaf] if together else [leaf]
    maps = seg_grad_cam(network, inputs, layers, CLASSES)
    with torch.no_grad():
        regions = predicted_regions(network(inputs), CLASSES)
    for name in layers:
        reference = captum_maps(network, inputs, name, CLASSES, regions)
        assert reference.abs().max() > 0
        assert relative_error(maps[name], reference) <= 1e-5, (arch, dims, name)


class LinearHead(nn.Module):
    """features -> 1x1 conv head: logit_c(p) = sum_k W_ck A_k(p) + b_c."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.act(self.features(x)))


def test_hirescam_on_head_input_is_the_logit_contribution():
    torch.manual_seed(0)
    network = LinearHead().eval()
    inputs = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        logits = network(inputs)
    regions = predicted_regions(logits, CLASSES)
    maps = seg_grad_cam(network, inputs, "act", CLASSES, method="hirescam", relu=False)["act"]
    bias = network.head.bias.detach().view(3, 1, 1, 1)
    expected = (logits.transpose(0, 1) - bias) * regions.transpose(0, 1)
    assert torch.allclose(maps, expected, atol=1e-5)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_methods_shapes_upsampling_and_nonnegativity(method):
    network = small_monai_network("UNet", 3)
    inputs = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    layers = decoder_layers(network)
    maps = seg_grad_cam(network, inputs, layers, [1, 2], method=method, upsample=True)
    for name in layers:
        assert maps[name].shape == (2, 1, 32, 32, 32)
        assert torch.isfinite(maps[name]).all() and (maps[name] >= 0).all()
        assert not maps[name].requires_grad


def test_layercam_and_gradcampp_formulas():
    """LayerCAM = relu(sum relu(g) * A); Grad-CAM++ weights = sum alpha relu(g)."""
    from SegGradCAMLib.cam import combine_gradients

    acts = torch.rand(1, 2, 4, 4)
    grads = torch.randn(1, 2, 4, 4)
    layercam = combine_gradients("layercam", acts, grads)
    assert torch.allclose(layercam, torch.relu((torch.relu(grads) * acts).sum(1)))
    g2, g3 = grads**2, grads**3
    alpha = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g3)
    weights = (alpha * torch.relu(grads)).sum((2, 3), keepdim=True)
    assert torch.allclose(combine_gradients("gradcam++", acts, grads), torch.relu((weights * acts).sum(1)))


def test_method_table_holds_exactly_the_methods_offered():
    """One weights function per method the front ends offer (selection.CAM_METHODS), and a bad
    method is one clear error from the table, before any forward pass."""
    from SegGradCAMLib import selection
    from SegGradCAMLib.cam import CAM_WEIGHTS, cam_weights, combine_gradients

    assert tuple(CAM_WEIGHTS) == selection.CAM_METHODS
    for method in CAM_WEIGHTS:
        assert cam_weights(method) is CAM_WEIGHTS[method]
    with pytest.raises(SegGradCAMError, match=r"Unknown CAM method 'scorecam'; choose one of gradcam, gradcam\+\+"):
        combine_gradients("scorecam", torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))
    network = small_monai_network("BasicUNet", 2)
    calls = []
    handle = network.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(SegGradCAMError, match="Unknown CAM method"):
            seg_grad_cam(network, torch.randn(1, 1, 32, 32), "auto", [1], method="scorecam")
    finally:
        handle.remove()
    assert calls == []


def test_hooks_removed_and_parameters_untouched_also_on_error():
    network = small_monai_network("BasicUNet", 2)
    inputs = torch.randn(1, 1, 32, 32)
    modules = [m for m in network.modules()]
    requires = [p.requires_grad for p in network.parameters()]
    seg_grad_cam(network, inputs, decoder_layers(network), [0, 1, 2])
    assert all(not m._forward_hooks for m in modules)
    assert all(p.grad is None for p in network.parameters())
    assert [p.requires_grad for p in network.parameters()] == requires
    with pytest.raises(SegGradCAMError, match="not valid"):
        seg_grad_cam(network, inputs, ["upcat_1"], [7])
    assert all(not m._forward_hooks for m in modules)
    assert [p.requires_grad for p in network.parameters()] == requires


def test_graph_starts_at_the_earliest_selected_layer():
    """Nothing before the first hooked layer is recorded by autograd."""
    network = small_monai_network("BasicUNet", 2)
    seen = {}

    def record(module, args, output):
        seen["conv_0"] = output.requires_grad

    handle = network.conv_0.register_forward_hook(record)
    try:
        seg_grad_cam(network, torch.randn(1, 1, 32, 32), ["upcat_1"], [1])
    finally:
        handle.remove()
    assert seen["conv_0"] is False


def test_bad_arguments_give_clear_errors():
    network = small_monai_network("UNet", 2)
    inputs = torch.randn(1, 1, 32, 32)
    with pytest.raises(SegGradCAMError, match="Unknown layer 'nope'.*model"):
        seg_grad_cam(network, inputs, ["nope"], [1])
    with pytest.raises(SegGradCAMError, match="Unknown CAM method"):
        seg_grad_cam(network, inputs, "auto", [1], method="gradcam+++")
    with pytest.raises(SegGradCAMError, match="Region masks have shape"):
        seg_grad_cam(network, inputs, "auto", [1], regions=torch.ones(1, 2, 32, 32, dtype=torch.bool))


def test_module_objects_and_auto_layer():
    network = small_monai_network("SegResNet", 3)
    inputs = torch.randn(1, 1, 16, 16, 16)
    by_object = seg_grad_cam(network, inputs, [network.up_layers[2]], [1])
    by_auto = seg_grad_cam(network, inputs, "auto", [1])
    assert list(by_object) == list(by_auto) == ["up_layers.2"]
    assert torch.equal(by_object["up_layers.2"], by_auto["up_layers.2"])


@pytest.mark.parametrize("arch", ["BasicUNet", "DynUNet"])
def test_classes_batched_into_few_backward_passes_give_the_per_class_maps(arch):
    network = small_monai_network(arch, 3, out_channels=5)
    inputs = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(4))
    layers = decoder_layers(network)[-2:]
    classes = [0, 1, 2, 3, 4]
    looped_steps = []
    one = seg_grad_cam(
        network,
        inputs,
        layers,
        classes,
        "hirescam",
        class_batch=1,
        on_backward=lambda done, total: looped_steps.append((done, total)),
    )
    steps = []
    batched = seg_grad_cam(
        network,
        inputs,
        layers,
        classes,
        "hirescam",
        class_batch=2,
        on_backward=lambda done, total: steps.append((done, total)),
    )
    assert looped_steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert steps == [(2, 5), (4, 5), (5, 5)]  # three backward passes for five classes
    for name in layers:
        assert one[name].abs().max() > 0
        assert relative_error(batched[name], one[name]) <= 1e-5, name
    assert torch.equal(batched.logits, one.logits)
