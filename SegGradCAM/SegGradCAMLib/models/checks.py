"""What every loaded network goes through, whatever its format: the spec fields
checked into a :class:`~.spec.ModelSpec`, one example forward pass, labels against
the output channels, and its decoder stages."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import SegGradCAMError
from ..layers import decoder_layers
from .spec import LoadedModel, declare_stages, make_spec

log = logging.getLogger(__name__)


def finish_loading(
    network: nn.Module, fields: dict, weights: Path, out_channels: int | None, trusted: bool
) -> LoadedModel:
    """Validate ``fields`` into a ModelSpec and find the decoder layers (those the fields
    declare as ``decoder_stages``, else recognised or traced)."""
    network.eval()
    declared = fields.pop("decoder_stages", None)
    spatial_dims = fields.get("spatial_dims", 3)
    fields.setdefault("in_channels", 1)
    if type(fields["in_channels"]) is not int or fields["in_channels"] < 1:
        raise SegGradCAMError(f"'in_channels' must be a whole number of at least 1; got {fields['in_channels']!r}.")
    size = fields.get("min_size") or fields.get("roi_size") or (64,) * spatial_dims
    example = torch.zeros(1, fields["in_channels"], *size)
    if out_channels is None and "labels" not in fields:
        out_channels = run_example(network, example).shape[1]
    if "labels" not in fields:
        fields["labels"] = [f"class_{i}" for i in range(out_channels)]
        log.warning("%s declares no labels; using %s.", fields.get("name"), ", ".join(fields["labels"]))
    spec = make_spec(fields, weights, trusted)
    if out_channels is not None and len(spec.labels) != out_channels:
        raise SegGradCAMError(
            f"{spec.name} has {len(spec.labels)} labels but the network outputs {out_channels} channels."
        )
    if declared is not None:
        modules = dict(network.named_modules())
        unknown = [name for name in declared if name not in modules or not name]
        if not isinstance(declared, list) or not declared or unknown:
            raise SegGradCAMError(
                f"'decoder_stages' of {spec.name} must list module names of the network; not found: {unknown}."
            )
        return LoadedModel(network, spec, declare_stages(network, declared))
    try:
        layers = decoder_layers(network, example)
    except (RuntimeError, ValueError) as error:
        raise failed_on(example, error) from error
    return LoadedModel(network, spec, layers)


def run_example(network: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """One forward pass without gradients; the output must be logits ``(B, C, *S)``."""
    try:
        with torch.no_grad():
            output = network(example)
    except (RuntimeError, ValueError) as error:
        raise failed_on(example, error) from error
    if not isinstance(output, torch.Tensor) or output.ndim != example.ndim:
        raise SegGradCAMError(f"The network returned {type(output).__name__}, not one logits tensor (B, C, *spatial).")
    return output


def failed_on(example: torch.Tensor, error: Exception) -> SegGradCAMError:
    return SegGradCAMError(
        f"The network failed on an example input of shape {tuple(example.shape)} ({error}); "
        "set min_size or roi_size in its spec."
    )
