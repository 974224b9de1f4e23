"""The network that scores perturbed inputs (Deletion/Insertion, ROAD, ``--faithfulness``): forward
passes without gradients, hundreds of them for one 3D target, so on the CPU a 3D network scores as a
copy laid out for oneDNN.

PyTorch sends a 3D convolution of one input whose batch × channels × depth × height is at most
20,480 (the first convolution of a one-channel head, the deep stages of a small grid) to its slow
reference kernel, a rule made for 2D images, and an instance norm copies a channels-last input into
the contiguous layout and back. The copy keeps the activations channels-last, sends every 3D
convolution to oneDNN and normalises in that layout (``input × scale + shift`` per channel, as
PyTorch's own CPU batch norm computes it): the same function up to float32 rounding, with less time
a call (bench/RESULTS.md R20). The network itself, which the CAMs and the sanity checks
differentiate, is left as it is.
"""

from __future__ import annotations

import copy
import types

import torch
from torch import nn


def scoring_network(network: nn.Module, device: str) -> nn.Module:
    """What scores inputs ``(B, Cin, *S)`` for ``network`` (in eval mode) on ``device``: on the CPU,
    for a network with 3D convolutions, the copy of the module docstring; else the network itself."""
    if torch.device(device).type != "cpu" or network.training:
        return network
    if not any(isinstance(m, nn.Conv3d) for m in network.modules()):
        return network
    scoring = copy.deepcopy(network)
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    for module in scoring.modules():
        if onednn and isinstance(module, nn.Conv3d) and module.padding_mode == "zeros":
            if isinstance(module.padding, tuple):  # "same" and "valid" keep PyTorch's own choice
                module._conv_forward = types.MethodType(_onednn_convolution, module)  # type: ignore[method-assign]
        elif isinstance(module, nn.InstanceNorm3d):
            module.forward = types.MethodType(_channels_last_instance_norm, module)  # type: ignore[method-assign]
    return scoring.to(memory_format=torch.channels_last_3d)


def _onednn_convolution(
    conv: nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``conv`` on ``x`` ``(B, Cin, *S)`` through oneDNN whatever its size (float32; other types as
    PyTorch chooses)."""
    if x.dtype != torch.float32:
        return nn.Conv3d._conv_forward(conv, x, weight, bias)
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)


def _channels_last_instance_norm(norm: nn.InstanceNorm3d, x: torch.Tensor) -> torch.Tensor:
    """``norm`` on ``x`` ``(B, C, *S)`` in ``x``'s layout, as one multiply-add a channel: each input's
    own statistics (``norm`` in training mode, as HD-BET keeps its norms, or not tracking running
    statistics; the running ones are not updated: no output reads them), else the running ones."""
    if x.ndim != 5:
        return nn.InstanceNorm3d.forward(norm, x)
    shape = (1, -1, 1, 1, 1)
    if norm.training or not norm.track_running_stats:
        var, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
    else:
        assert norm.running_mean is not None and norm.running_var is not None
        mean, var = norm.running_mean.view(shape), norm.running_var.view(shape)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.view(shape)
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.view(shape)
    return torch.addcmul(shift, x, scale)
