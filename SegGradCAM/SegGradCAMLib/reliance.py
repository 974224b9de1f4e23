"""Which input channel (sequence) a class or a finding relied on.

Two measures per target (a class's mask or a finding's component) and input channel:

- **occlusion**: the fraction of the target's score lost when that channel alone is replaced by its
  mean inside the head (voxels where any channel is non-zero), and when all channels are
  (``"all"``): ``(s - s') / s``. The score here is the class probability summed over the target's
  region (not the logit sum that Seg-Grad-CAM differentiates: a predicted class's logits may be
  negative, which would make a fraction of them meaningless); 1 means the network no longer sees
  the class there, a negative value that the occlusion made it surer;
- **input_gradient**: the channel's share of ``|input x gradient|`` of the target summed over the
  target's neighbourhood (its region dilated by :data:`~.findings.NEIGHBOURHOOD_MM`).

Models with one input channel are skipped.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .findings import NEIGHBOURHOOD_MM


def occluded_channels(names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """(key, channels replaced) of each occluded input: each channel alone (keyed by its name), then all."""
    return [*((name, [c]) for c, name in enumerate(names)), ("all", list(range(len(names))))]


def occluded(image: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """``image`` ``(Cin, Z, Y, X)`` with each of ``channels`` replaced by its mean over the voxels
    where any channel is non-zero (there only; the background stays)."""
    inside = (image != 0).any(axis=0)
    out = np.array(image, dtype=np.float32, copy=True)
    for c in channels:
        out[c][inside] = float(image[c][inside].mean()) if inside.any() else 0.0
    return out


def target_scores(probabilities: torch.Tensor, classes: Sequence[int], regions: torch.Tensor) -> np.ndarray:
    """Each target's score: the probability of ``classes[t]`` ``(C, *S)`` summed over ``regions[t]``
    ``(n, *S)`` bool -> ``(n,)`` float64."""
    return np.array([float(probabilities[c].double()[r].sum()) for c, r in zip(classes, regions)], dtype=np.float64)


def occlusion_reliance(
    names: Sequence[str], base: np.ndarray, occluded_scores: dict[str, np.ndarray]
) -> list[dict[str, float]]:
    """Per target, the fraction of the score ``base`` ``(n,)`` lost under each occlusion
    (``occluded_scores``: channel name or ``"all"`` -> ``(n,)``), in the order of ``names`` then ``all``."""
    keys = [*names, "all"]
    scale = np.maximum(np.abs(base), 1e-12)
    lost = {key: (base - occluded_scores[key]) / scale for key in keys}
    return [{key: round(float(lost[key][t]), 6) for key in keys} for t in range(len(base))]


def gradient_shares(
    names: Sequence[str],
    saliency: Sequence[torch.Tensor],
    to_input: Callable[[torch.Tensor], np.ndarray],
    region_of: Callable[[int], np.ndarray],
    spacing_zyx: Sequence[float],
) -> list[dict[str, float]]:
    """Per target, each channel's share of ``|input x gradient|`` in the target's neighbourhood.

    ``saliency``: one ``(n, *model grid)`` map per channel; ``to_input``: ``(1, *model grid)`` ->
    ``(1, Z, Y, X)``; ``region_of(t)``: target ``t``'s region on the input grid ``(Z, Y, X)`` bool."""
    from scipy import ndimage

    shares = []
    for t in range(len(saliency[0])):
        region = region_of(t)
        near = ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= NEIGHBOURHOOD_MM
        sums = np.array([float(np.abs(to_input(m[t : t + 1])[0])[near].sum()) for m in saliency])
        total = max(float(sums.sum()), 1e-30)
        shares.append({name: round(float(s / total), 6) for name, s in zip(names, sums)})
    return shares
