"""Seg-Grad-CAM for segmentation networks: one forward pass, all layers, all classes.

Target (Vinogradova et al. 2020): ``y_c = sum_{p in M_c} logit_c(p)`` per sample,
with ``M_c`` the predicted mask of class ``c`` (``argmax == c``) unless a region
is given. Maps are returned raw (no normalisation).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SegGradCAMError
from .layer_grid import Grid, GridTrace, default_grid, resample_to_input
from .layers import resolve_layers
from .selection import CAM_METHODS, check_method

__all__ = [
    "CAM_METHODS", "CAMMaps", "combine_gradients", "label_map", "predicted_regions", "seg_grad_cam", "upsample_maps",
]


class CAMMaps(dict):
    """Maps by layer name, ``(len(classes), B, *s)`` each, with the ``logits`` ``(B, C, *S)``
    of the forward pass that produced them. Everything detached."""

    def __init__(self, maps: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        super().__init__(maps)
        self.logits = logits


@contextmanager
def _frozen_parameters(network: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` on the parameters while inside; restore after.

    With the parameters frozen and the input not requiring gradients, autograd
    records nothing before the first hooked layer: the part of the network
    before it runs without building a graph.
    """
    frozen = [p for p in network.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def combine_gradients(method: str, activations: torch.Tensor, gradients: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Combine a layer's activations and gradients ``(B, K, *S)`` into a map ``(B, *S)``."""
    dims = tuple(range(2, activations.ndim))
    if method == "gradcam":
        weights = gradients.mean(dim=dims, keepdim=True)
        cam = (weights * activations).sum(dim=1)
    elif method == "gradcam++":
        grads_2 = gradients.pow(2)
        grads_3 = grads_2 * gradients
        sum_acts = activations.sum(dim=dims, keepdim=True)
        denominator = 2 * grads_2 + sum_acts * grads_3
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, grads_2 / safe, torch.zeros_like(denominator))
        weights = (alpha * F.relu(gradients)).sum(dim=dims, keepdim=True)
        cam = (weights * activations).sum(dim=1)
    elif method == "hirescam":
        cam = (gradients * activations).sum(dim=1)
    elif method == "layercam":
        cam = (F.relu(gradients) * activations).sum(dim=1)
    else:
        check_method(method)
    return F.relu(cam) if relu else cam


def _class_chunk(acts: Sequence[torch.Tensor], n_classes: int) -> int:
    """Classes per backward pass: 1 on the CPU (vmap'ed backward measured 1.8x slower there:
    BasicUNet 3D 64^3, 8 classes, 0.99 s vs 0.54 s), else what a quarter of the free device
    memory holds at about four activation-sized tensors per class."""
    device = acts[0].device
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_class = 4 * sum(a.numel() * a.element_size() for a in acts)
    return max(1, min(n_classes, int(free // 4 // max(per_class, 1))))


def _class_gradients(scores: torch.Tensor, acts: Sequence[torch.Tensor], last: bool) -> list[torch.Tensor]:
    """Gradients of each of ``scores`` ``(k,)`` with respect to each activation: one
    ``(k, *act.shape)`` tensor per activation, in one backward pass (zeros where unused)."""
    if len(scores) == 1:
        grads = torch.autograd.grad(scores[0], acts, retain_graph=not last, allow_unused=True)
        grads = [None if g is None else g[None] for g in grads]
    else:
        eye = torch.eye(len(scores), device=scores.device, dtype=scores.dtype)
        grads = torch.autograd.grad(scores, acts, grad_outputs=eye, retain_graph=not last, allow_unused=True,
                                    is_grads_batched=True)
    return [torch.zeros((len(scores), *a.shape), device=a.device, dtype=a.dtype) if g is None else g
            for g, a in zip(grads, acts)]


def label_map(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``logits.argmax(dim)`` (first maximum wins), computed with the classes as the last,
    contiguous axis: the strided CPU argmax over a few channels is 4-9x slower
    (measured on (16, 4, 112, 96) and (1, 2, 128, 160, 128))."""
    return logits.movedim(dim, -1).contiguous().argmax(dim=-1)


def predicted_regions(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Boolean masks ``(B, len(classes), *S)``: ``argmax(logits, 1) == c`` for each class."""
    labels = label_map(logits)
    return torch.stack([labels == c for c in classes], dim=1)


def upsample_maps(maps: torch.Tensor, size: Sequence[int], grid: Grid | None = None) -> torch.Tensor:
    """Resize maps ``(N, B, *s)`` to ``(N, B, *size)`` by linear interpolation, each layer voxel
    placed where ``grid`` says it lies on the input (default: ``F.interpolate``'s
    ``align_corners=False`` placement; :mod:`SegGradCAMLib.layer_grid`)."""
    if tuple(maps.shape[2:]) == tuple(size) and grid is None:
        return maps
    return resample_to_input(maps, grid or default_grid(maps.shape[2:], size), size)


def _check_classes(classes: Sequence[int], num_classes: int) -> list[int]:
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise SegGradCAMError(
            f"Class index {bad or '(none)'} is not valid: the network outputs {num_classes} classes (0..{num_classes - 1})."
        )
    return classes


def seg_grad_cam(
    network: nn.Module,
    inputs: torch.Tensor,
    layers,
    classes: Sequence[int],
    method: str = "gradcam",
    regions: torch.Tensor | None = None,
    relu: bool = True,
    upsample: bool = False,
    class_batch: int | None = None,
    on_backward: Callable[[int, int], None] | None = None,
) -> CAMMaps:
    """Seg-Grad-CAM maps for several layers and classes from one forward pass.

    Args:
        network: module mapping ``(B, Cin, *S)`` to logits ``(B, C, *S)`` (2D or 3D).
        inputs: ``(B, Cin, *S)``.
        layers: a module name (as in ``network.named_modules()``), a module, a list
            of either, or ``"auto"`` (the finest decoder stage, see
            :func:`SegGradCAMLib.layers.default_layer`).
        classes: class indices to explain.
        method: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"`` or ``"layercam"``.
        regions: optional boolean masks ``(B, len(classes), *S)``; default is each
            class's predicted mask (``argmax == c``).
        relu: apply a ReLU to the maps.
        upsample: resize maps to the input's spatial size (linear interpolation, each
            layer voxel at the centre of its receptive field, traced through the network's
            strided convolutions and poolings: :mod:`SegGradCAMLib.layer_grid`) instead of the
            layer's resolution.
        class_batch: classes per backward pass (``torch.autograd.grad`` with
            ``is_grads_batched``); default: one class per pass on the CPU (batching is
            slower there), on other devices as many as fit in a quarter of the free memory.
        on_backward: called with ``(classes done, classes)`` after each backward pass.

    Returns:
        layer name -> tensor ``(len(classes), B, *s)``, detached, raw (not normalised),
        as a :class:`CAMMaps` dict whose ``logits`` ``(B, C, *S)`` come from the same pass.
        Hooks are removed and the graph is freed when the call returns, also on error.
    """
    check_method(method)
    if inputs.ndim < 3:
        raise SegGradCAMError(f"Inputs must be (B, C, *spatial); got shape {tuple(inputs.shape)}.")
    modules = resolve_layers(network, layers)
    activations: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise SegGradCAMError(
                    f"Layer {name!r} returns {type(output).__name__}, not a tensor; choose a module whose output is one tensor."
                )
            if name in activations:
                raise SegGradCAMError(f"Layer {name!r} runs more than once per forward pass; choose another layer.")
            if not output.requires_grad:
                # First hooked layer reached: the autograd graph starts here.
                output = output.detach().requires_grad_(True)
            activations[name] = output
            # The next module may change its input in place (e.g. MONAI's ADN: norm, then
            # an in-place LeakyReLU): it gets a copy, so the stored tensor stays this
            # layer's output and its gradient is taken there.
            return output.clone()

        return hook

    handles = []
    logits = None
    try:
        with _frozen_parameters(network), torch.enable_grad():
            for name, module in modules.items():
                handles.append(module.register_forward_hook(make_hook(name)))
            with GridTrace(network, inputs.shape[2:]) as trace:
                logits = network(inputs)
            for handle in handles:
                handle.remove()
            handles = []
            if not isinstance(logits, torch.Tensor):
                raise SegGradCAMError(
                    f"The network returned {type(logits).__name__}; Seg-Grad-CAM needs one logits tensor (B, C, *spatial)."
                )
            missing = [name for name in modules if name not in activations]
            if missing:
                raise SegGradCAMError(f"Layer(s) {', '.join(missing)} did not run during the forward pass.")
            classes = _check_classes(classes, logits.shape[1])
            if regions is None:
                regions = predicted_regions(logits.detach(), classes)
            expected = (logits.shape[0], len(classes), *logits.shape[2:])
            if tuple(regions.shape) != expected:
                raise SegGradCAMError(
                    f"Region masks have shape {tuple(regions.shape)}; expected {expected} (B, classes, *spatial)."
                )
            regions = regions.to(device=logits.device, dtype=torch.float32)
            names = list(modules)
            acts = [activations[name] for name in names]
            maps: dict[str, list[torch.Tensor]] = {name: [] for name in names}
            scores = (logits[:, classes].float() * regions).flatten(2).sum(dim=(0, 2))  # (len(classes),)
            chunk = class_batch or _class_chunk(acts, len(classes))
            for start in range(0, len(classes), chunk):
                grads = _class_gradients(scores[start:start + chunk], acts, last=start + chunk >= len(classes))
                for name, act, grad in zip(names, acts, grads):
                    act = act.detach().float()  # bfloat16 under autocast: the CAM arithmetic in float32
                    maps[name] += [combine_gradients(method, act, g.float(), relu) for g in grad]
                if on_backward is not None:
                    on_backward(min(start + chunk, len(classes)), len(classes))
        result = {name: torch.stack(per_class) for name, per_class in maps.items()}
        if upsample:
            size = inputs.shape[2:]
            result = {name: upsample_maps(m, size, trace.grid(m.shape[2:], size)) for name, m in result.items()}
        return CAMMaps(result, logits.detach())
    finally:
        for handle in handles:
            handle.remove()
        activations.clear()
        del logits
