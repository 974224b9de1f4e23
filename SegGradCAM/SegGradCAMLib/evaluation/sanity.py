"""Baseline explanations and the cascading model-randomisation test.

Baselines give the faithfulness numbers a scale: a ``random`` heatmap, the
predicted ``mask`` itself used as the explanation, and plain ``gradient``
saliency ``|d y_c / d x|``. The randomisation test (Adebayo et al. 2018)
re-initialises the network from the head down, decoder stage by decoder stage,
and measures how similar the heatmap stays (Spearman rank correlation, SSIM):
a map that explains the model must change when the model does.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..cam import seg_grad_cam
from ..errors import SegGradCAMError
from ..options import BASELINE_EXPLANATIONS


def random_heatmap(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Uniform random map ``(*S)``: a ranking that knows nothing."""
    return torch.rand(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


def gradient_saliency(network: nn.Module, image: torch.Tensor, class_index: int, region: torch.Tensor) -> torch.Tensor:
    """``max_channels |d y_c / d x|`` with ``y_c`` the class logit summed over ``region``.

    ``image``: ``(Cin, *S)``; ``region``: ``(*S)`` bool. Returns ``(*S)``, detached;
    the network's parameters get no gradient.
    """
    x = image[None].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = network(x)
        score = (logits[0, class_index] * region.to(logits.dtype)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad[0].abs().amax(dim=0).detach()


def baseline_heatmap(
    kind: str, network: nn.Module, image: torch.Tensor, class_index: int, mask: torch.Tensor, seed: int = 0
) -> torch.Tensor:
    """One of :data:`BASELINE_EXPLANATIONS` for class ``class_index``, ``(*S)``."""
    if kind == "random":
        return random_heatmap(mask.shape, seed)
    if kind == "mask":
        return mask.float()
    if kind == "gradient":
        return gradient_saliency(network, image, class_index, mask)
    raise SegGradCAMError(f"Unknown baseline explanation {kind!r}; choose one of {', '.join(BASELINE_EXPLANATIONS)}.")


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation and SSIM of two maps ``(*S)`` (each scaled to 0..1 by its max)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = (np.asarray(m, dtype=np.float64) for m in (a, b))
    scaled = [m / m.max() if m.max() > 0 else m for m in (a, b)]
    rho = spearmanr(a.ravel(), b.ravel()).statistic if a.std() > 0 and b.std() > 0 else 0.0
    window = min(7, *[n if n % 2 else n - 1 for n in a.shape])
    ssim = structural_similarity(scaled[0], scaled[1], data_range=1.0, win_size=window)
    return {"spearman": float(rho), "ssim": float(ssim)}


def _execution_order(network: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of modules owning parameters, in the order they first run on ``example``."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: order.append(name) if name not in order else None)
        for name, module in network.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def cascade_steps(network: nn.Module, example: torch.Tensor, stages: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Cumulative sets of modules to re-initialise, from the head down.

    ``stages``: decoder stages coarse to fine. Step ``head`` holds the modules that
    run after the finest stage; each following step adds every module from the
    start of the next coarser stage on. Returns ``[(step name, module names)]``.
    """
    order = _execution_order(network, example)

    def inside(name: str, stage: str) -> bool:
        return name == stage or name.startswith(stage + ".")

    last_of_finest = max((i for i, name in enumerate(order) if inside(name, stages[-1])), default=-1)
    steps = [("head", order[last_of_finest + 1 :])]
    for stage in reversed(stages):
        first = next((i for i, name in enumerate(order) if inside(name, stage)), None)
        if first is not None:
            steps.append((stage, order[first:]))
    return steps


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh random parameters: the module's own initialiser, else a Gaussian of the same scale."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=generator) * float(p.std() if p.numel() > 1 else 1.0))


def cascading_randomisation(
    network: nn.Module,
    image: torch.Tensor,
    layer: str,
    class_index: int,
    region: torch.Tensor,
    stages: Sequence[str],
    method: str = "gradcam",
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """Similarity of the heatmap of a progressively randomised copy to the original.

    ``image``: ``(Cin, *S)``; ``region``: ``(*S)`` bool, the fixed target mask.
    The network itself is not changed. Returns one dict per step (see
    :func:`cascade_steps`): ``step``, ``spearman``, ``ssim``.
    """
    x = image[None]
    regions = region[None, None]

    def heatmap(net: nn.Module) -> np.ndarray:
        maps = seg_grad_cam(net, x, layer, [class_index], method, regions=regions, upsample=True)
        return maps[layer][0, 0].numpy()

    original = heatmap(network)
    randomised = copy.deepcopy(network)
    modules = dict(randomised.named_modules())
    generator = torch.Generator().manual_seed(int(seed))
    done: set[str] = set()
    results = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step, names in cascade_steps(network, x, stages):
            for name in names:
                if name not in done:
                    _reinitialise(modules[name], generator)
                    done.add(name)
            results.append({"step": step, **map_similarity(original, heatmap(randomised))})
    return results
