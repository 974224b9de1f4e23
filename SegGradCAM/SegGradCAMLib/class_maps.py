"""Class (and finding) maps brought from the model's grid to the input grid, one at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .findings import Finding


@dataclass(frozen=True)
class ClassHeatmap:
    """One class (or finding) map on the input grid: ``array`` ``(Z, Y, X)`` float32 (0..1 when
    normalised), ``position`` its index in the explained targets, ``raw_max`` its
    maximum before normalisation, ``mask`` ``(Z, Y, X)`` bool the class's own mask where
    classes overlap (region-based models; else None: ``labels == class_index``) or the
    finding's mask; ``finding`` the finding's id when the target is a finding."""

    layer: str
    position: int
    class_index: int
    array: np.ndarray
    raw_max: float
    mask: np.ndarray | None = None
    finding: int | None = None


def heatmaps_on_input_grid(
    maps: dict[str, torch.Tensor],
    to_input: Callable[[torch.Tensor], np.ndarray],
    labels: np.ndarray,
    classes: Sequence[int],
    normalize: bool,
    on_heatmap: Callable[[ClassHeatmap, np.ndarray], None] | None,
    masks: np.ndarray | None = None,
    findings: Sequence[Finding | None] | None = None,
):
    """Class maps ``(n, *model grid)`` per layer brought to the input grid one class at a time by
    ``to_input`` (``(1, *model grid)`` -> ``(1, Z, Y, X)``), ReLU'd, divided by their global maximum
    when ``normalize``; handed to ``on_heatmap`` (then not kept) or returned, with the class's
    own mask from ``masks`` ``(n, Z, Y, X)`` when given; a target that is one of ``findings``
    (None for a class) gets the finding's id and mask. ``maps`` is emptied as it goes. Returns
    (layer -> ``(n, Z, Y, X)`` float32, layer -> raw maxima)."""
    heatmaps: dict[str, np.ndarray] = {}
    raw_max: dict[str, list[float]] = {name: [] for name in maps}
    for name in list(maps):
        on_model_grid = maps.pop(name)  # (n, *model grid), released class by class below
        kept = []
        for i in range(len(classes)):
            heat = np.maximum(to_input(on_model_grid[i : i + 1]), 0)[0]
            peak = float(heat.max())
            raw_max[name].append(peak)
            if normalize:
                heat = heat / np.float32(max(peak, 1e-12))
            heat = heat.astype(np.float32, copy=False)
            if on_heatmap is not None:
                finding = None if findings is None else findings[i]
                if finding is not None:
                    mask, number = finding.full_mask(labels.shape), finding.id
                else:
                    mask, number = (None if masks is None else masks[i]), None
                on_heatmap(ClassHeatmap(name, i, classes[i], heat, peak, mask, number), labels)
            else:
                kept.append(heat)
        if kept:
            heatmaps[name] = np.stack(kept)
    return heatmaps, raw_max
