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
from .selection import CAM_METHODS

__all__ = [
    "CAM_METHODS",
    "INPUT_GRADIENT",
    "CAM_WEIGHTS",
    "CAMMaps",
    "cam_weights",
    "combine_gradients",
    "label_map",
    "predicted_regions",
    "seg_grad_cam",
    "upsample_maps",
]


INPUT_GRADIENT = "input x gradient:{}"
"""Key of channel i's ``|input x gradient|`` map (``seg_grad_cam(input_gradients=True)``); no layer
name has this form (module names have no spaces)."""


TargetsOf = Callable[[torch.Tensor], tuple[Sequence[int], torch.Tensor]]
"""Targets found from a pass's logits ``(B, C, *S)``: their classes and regions ``(B, n, *S)`` bool."""


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


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): the gradients averaged over space, ``(B, K, 1, ..)``."""
    return gradients.mean(dim=tuple(range(2, gradients.ndim)), keepdim=True)


def gradcam_plus_plus_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): ``sum alpha * relu(g)`` over space, ``(B, K, 1, ..)``,
    with ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (0 where the denominator is 0)."""
    dims = tuple(range(2, activations.ndim))
    grads_2 = gradients.pow(2)
    grads_3 = grads_2 * gradients
    sum_acts = activations.sum(dim=dims, keepdim=True)
    denominator = 2 * grads_2 + sum_acts * grads_3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, grads_2 / safe, torch.zeros_like(denominator))
    return (alpha * F.relu(gradients)).sum(dim=dims, keepdim=True)


def hirescam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): the gradients themselves, ``(B, K, *S)``."""
    return gradients


def layercam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): the positive gradients, ``(B, K, *S)``."""
    return F.relu(gradients)


# Method -> weights function ``(activations, gradients)`` ``(B, K, *S)`` -> weights that
# broadcast against the activations; the map is ``sum_k weights * activations``. A new
# method is one function here (its name also goes into selection.CAM_METHODS).
CAM_WEIGHTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam_weights,
    "gradcam++": gradcam_plus_plus_weights,
    "hirescam": hirescam_weights,
    "layercam": layercam_weights,
}


def cam_weights(method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The weights function of ``method``: the one place a CAM method is checked."""
    try:
        return CAM_WEIGHTS[method]
    except (KeyError, TypeError):
        raise SegGradCAMError(f"Unknown CAM method {method!r}; choose one of {', '.join(CAM_WEIGHTS)}.") from None


def combine_gradients(
    method: str, activations: torch.Tensor, gradients: torch.Tensor, relu: bool = True
) -> torch.Tensor:
    """Combine a layer's activations and gradients ``(B, K, *S)`` into a map ``(B, *S)``."""
    return _combine(cam_weights(method), activations, gradients, relu)


def _combine(
    weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    activations: torch.Tensor,
    gradients: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    """``sum_k weights(A, g) * A`` over the channels: ``(B, K, *S)`` -> ``(B, *S)``, ReLU'd if ``relu``."""
    cam = (weights(activations, gradients) * activations).sum(dim=1)
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


def _class_gradients(scores: Sequence[torch.Tensor], acts: Sequence[torch.Tensor], last: bool) -> list[torch.Tensor]:
    """Gradients of each of the ``k`` scores (0-d) with respect to each activation: one
    ``(k, *act.shape)`` tensor per activation, in one backward pass (zeros where unused)."""
    grads: Sequence[torch.Tensor | None]
    if len(scores) == 1:
        grads = torch.autograd.grad(scores[0], acts, retain_graph=not last, allow_unused=True)
        grads = [None if g is None else g[None] for g in grads]
    else:
        stacked = torch.stack(list(scores))
        eye = torch.eye(len(scores), device=stacked.device, dtype=stacked.dtype)
        grads = torch.autograd.grad(
            stacked, acts, grad_outputs=eye, retain_graph=not last, allow_unused=True, is_grads_batched=True
        )
    return [
        torch.zeros((len(scores), *a.shape), device=a.device, dtype=a.dtype) if g is None else g
        for g, a in zip(grads, acts)
    ]


def label_map(logits: torch.Tensor, dim: int = 1, planes: int = 8) -> torch.Tensor:
    """``logits.argmax(dim)`` (first maximum wins), computed with the classes as the last,
    contiguous axis: the strided CPU argmax over a few channels is 4-9x slower
    (measured on (16, 4, 112, 96) and (1, 2, 128, 160, 128)). The contiguous copy is made
    ``planes`` planes of the next axis at a time, never of the whole logits (a 23-class volume's
    logits take 0.7 GB at 1 mm)."""
    axis = dim + 1 if dim + 1 < logits.ndim else 0
    parts = [part.movedim(dim, -1).contiguous().argmax(dim=-1) for part in logits.split(planes, dim=axis)]
    return torch.cat(parts, dim=axis - 1 if axis > dim else axis)


def predicted_regions(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Boolean masks ``(B, len(classes), *S)``: ``argmax(logits, 1) == c`` for each class, written
    into one array (not made apart and stacked: twice the masks at once)."""
    labels = label_map(logits)
    regions = torch.empty((labels.shape[0], len(classes), *labels.shape[1:]), dtype=torch.bool, device=labels.device)
    for k, c in enumerate(classes):
        torch.eq(labels, c, out=regions[:, k])
    return regions


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
            f"Class index {bad or '(none)'} is not valid: the network outputs {num_classes} classes "
            f"(0..{num_classes - 1})."
        )
    return classes


def _recording_hook(name: str, activations: dict[str, torch.Tensor]) -> Callable:
    """A forward hook storing the output ``(B, K, *s)`` of layer ``name`` in ``activations``,
    the first hooked layer's output made a leaf of the autograd graph."""

    def hook(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise SegGradCAMError(
                f"Layer {name!r} returns {type(output).__name__}, not a tensor; "
                "choose a module whose output is one tensor."
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


@contextmanager
def _hooked(modules: dict[str, nn.Module], activations: dict[str, torch.Tensor]) -> Iterator[None]:
    """Record each of ``modules``' outputs in ``activations`` while inside; hooks removed on exit."""
    handles = [module.register_forward_hook(_recording_hook(name, activations)) for name, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(
    network: nn.Module, inputs: torch.Tensor, modules: dict[str, nn.Module], activations: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, GridTrace]:
    """One forward pass of ``inputs`` ``(B, Cin, *S)``: the logits ``(B, C, *S)`` and the traced
    grids of the layers; each of ``modules``' outputs ``(B, K, *s)`` lands in ``activations``."""
    with _hooked(modules, activations), GridTrace(network, inputs.shape[2:]) as trace:
        logits = network(inputs)
    if not isinstance(logits, torch.Tensor):
        raise SegGradCAMError(
            f"The network returned {type(logits).__name__}; Seg-Grad-CAM needs one logits tensor (B, C, *spatial)."
        )
    missing = [name for name in modules if name not in activations]
    if missing:
        raise SegGradCAMError(f"Layer(s) {', '.join(missing)} did not run during the forward pass.")
    return logits, trace


def _target_regions(logits: torch.Tensor, classes: list[int], regions: torch.Tensor | None) -> torch.Tensor:
    """The region masks as bool ``(B, len(classes), *S)``: ``regions`` checked, else each class's
    predicted mask. ``logits`` ``(B, C, *S)`` detached."""
    if regions is None:
        regions = predicted_regions(logits, classes)
    expected = (logits.shape[0], len(classes), *logits.shape[2:])
    if tuple(regions.shape) != expected:
        raise SegGradCAMError(
            f"Region masks have shape {tuple(regions.shape)}; expected {expected} (B, classes, *spatial)."
        )
    return regions.to(device=logits.device, dtype=torch.bool)


def _target_scores(logits: torch.Tensor, classes: list[int], regions: torch.Tensor) -> list[torch.Tensor]:
    """Each target's score, its class logit summed over its region and the batch: one 0-d tensor per
    target. One target at a time, so no ``(B, len(classes), *S)`` float copy is made (findings add many
    targets), and not stacked: a backward pass from one score then runs through its own sum only (from
    a stacked vector it ran through every target's, each class's pass costing as many volume-sized
    operations as there are targets: 4.5 s a class for 117 classes on one 48x64x64 nnU-Net window)."""
    return [torch.where(regions[:, t], logits[:, c].float(), 0.0).sum() for t, c in enumerate(classes)]


def _backward_maps(
    scores: Sequence[torch.Tensor],
    acts: list[torch.Tensor],
    weights: Callable,
    relu: bool,
    class_batch: int | None,
    on_backward: Callable[[int, int], None] | None,
    inputs: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """One map ``(len(scores), B, *s)`` per activation ``(B, K, *s)``, from the gradients of each
    target score (``scores``: one 0-d tensor per class), ``class_batch`` classes per backward pass; with
    ``inputs`` ``(B, Cin, *S)`` (requiring gradients) also ``|inputs x gradient|`` ``(len(scores), B, Cin, *S)``."""
    n_classes = len(scores)
    maps: list[list[torch.Tensor]] = [[] for _ in acts]
    saliency: list[torch.Tensor] = []
    wrt = acts if inputs is None else [*acts, inputs]
    chunk = class_batch or _class_chunk(wrt, n_classes)
    for start in range(0, n_classes, chunk):
        grads = _class_gradients(scores[start : start + chunk], wrt, last=start + chunk >= n_classes)
        for per_class, act, grad in zip(maps, acts, grads):
            act = act.detach().float()  # bfloat16 under autocast: the CAM arithmetic in float32
            per_class += [_combine(weights, act, g.float(), relu) for g in grad]
        if inputs is not None:
            saliency.append((inputs.detach().float() * grads[-1].float()).abs())
        if on_backward is not None:
            on_backward(min(start + chunk, n_classes), n_classes)
    return [torch.stack(per_class) for per_class in maps], torch.cat(saliency) if saliency else None


def _upsampled(maps: dict[str, torch.Tensor], size: Sequence[int], trace: GridTrace) -> dict[str, torch.Tensor]:
    """Each layer's maps ``(N, B, *s)`` resized to the input size ``(N, B, *size)`` on its traced grid."""
    return {name: upsample_maps(m, size, trace.grid(m.shape[2:], size)) for name, m in maps.items()}


def seg_grad_cam(
    network: nn.Module,
    inputs: torch.Tensor,
    layers,
    classes: Sequence[int],
    method: str = "gradcam",
    regions: torch.Tensor | TargetsOf | None = None,
    relu: bool = True,
    upsample: bool = False,
    class_batch: int | None = None,
    on_backward: Callable[[int, int], None] | None = None,
    input_gradients: bool = False,
) -> CAMMaps:
    """Seg-Grad-CAM maps for several layers and classes from one forward pass.

    Args:
        network: module mapping ``(B, Cin, *S)`` to logits ``(B, C, *S)`` (2D or 3D).
        inputs: ``(B, Cin, *S)``.
        layers: a module name (as in ``network.named_modules()``), a module, a list
            of either, or ``"auto"`` (the finest decoder stage, see
            :func:`SegGradCAMLib.layers.default_layer`).
        classes: class indices to explain.
        method: one of :data:`CAM_WEIGHTS`: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"``
            or ``"layercam"``.
        regions: optional boolean masks ``(B, len(classes), *S)``; default is each
            class's predicted mask (``argmax == c``). Or a function of the pass's logits
            ``(B, C, *S)`` (detached) giving the targets' classes and regions ``(B, n, *S)``
            (targets known only once the network has segmented, as findings).
        relu: apply a ReLU to the maps.
        upsample: resize maps to the input's spatial size (linear interpolation, each
            layer voxel at the centre of its receptive field, traced through the network's
            strided convolutions and poolings: :mod:`SegGradCAMLib.layer_grid`) instead of the
            layer's resolution.
        class_batch: classes per backward pass (``torch.autograd.grad`` with
            ``is_grads_batched``); default: one class per pass on the CPU (batching is
            slower there), on other devices as many as fit in a quarter of the free memory.
        on_backward: called with ``(classes done, classes)`` after each backward pass.
        input_gradients: also return each input channel's ``|input x gradient|`` of each target,
            ``(len(classes), B, *S)``, under the key ``INPUT_GRADIENT.format(channel)`` (the whole
            network then records gradients, not only the part after the first layer).

    Returns:
        layer name -> tensor ``(len(classes), B, *s)``, detached, raw (not normalised),
        as a :class:`CAMMaps` dict whose ``logits`` ``(B, C, *S)`` come from the same pass.
        Hooks are removed and the graph is freed when the call returns, also on error.
    """
    weights = cam_weights(method)
    if inputs.ndim < 3:
        raise SegGradCAMError(f"Inputs must be (B, C, *spatial); got shape {tuple(inputs.shape)}.")
    modules = resolve_layers(network, layers)
    activations: dict[str, torch.Tensor] = {}
    logits = None
    if input_gradients:
        inputs = inputs.detach().requires_grad_(True)
    try:
        with _frozen_parameters(network), torch.enable_grad():
            logits, trace = _forward(network, inputs, modules, activations)
            if callable(regions):
                classes, regions = regions(logits.detach())
            classes = _check_classes(classes, logits.shape[1])
            regions = _target_regions(logits.detach(), classes, regions)
            scores = _target_scores(logits, classes, regions)
            acts = [activations[n] for n in modules]
            maps, saliency = _backward_maps(
                scores, acts, weights, relu, class_batch, on_backward, inputs if input_gradients else None
            )
        result = dict(zip(modules, maps))
        if upsample:
            result = _upsampled(result, inputs.shape[2:], trace)
        if saliency is not None:
            result.update({INPUT_GRADIENT.format(i): saliency[:, :, i] for i in range(saliency.shape[2])})
        return CAMMaps(result, logits.detach())
    finally:
        activations.clear()
        del logits
