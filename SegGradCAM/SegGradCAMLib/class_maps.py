"""Class (and finding) maps brought from the model's grid to the input grid, one at a time, and
one group of targets at a time (:mod:`.memory_plan`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .findings import Finding
from .targets import Targets, add_gradient_shares


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
    first: int = 0,
):
    """Class maps ``(n, *model grid)`` per layer brought to the input grid one class at a time by
    ``to_input`` (``(1, *model grid)`` -> ``(1, Z, Y, X)``), ReLU'd, divided by their global maximum
    when ``normalize``; handed to ``on_heatmap`` (then not kept) or returned, with the class's
    own mask from ``masks`` ``(n, Z, Y, X)`` when given; a target that is one of ``findings``
    (None for a class) gets the finding's id and mask. ``maps`` is emptied as it goes. The maps
    may be one group of the targets: those at positions ``first`` to ``first + n - 1`` of
    ``classes``, ``masks`` and ``findings``. Returns (layer -> ``(n, Z, Y, X)`` float32, layer ->
    raw maxima)."""
    heatmaps: dict[str, np.ndarray] = {}
    raw_max: dict[str, list[float]] = {name: [] for name in maps}
    for name in list(maps):
        on_model_grid = maps.pop(name)  # (n, *model grid), released class by class below
        kept = []
        for k in range(len(on_model_grid)):
            i = first + k
            heat = np.maximum(to_input(on_model_grid[k : k + 1]), 0)[0]
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


class GroupHeatmaps:
    """Each group's maps on the model's grid ``(len(group), *S)`` by name brought to the input grid
    by ``to_input`` (the channels' ``|input x gradient|`` shares taken out of them first, when
    ``targets`` asks for reliance), handed to ``on_heatmap`` or kept; ``raw_max`` per layer and
    the ``seconds`` it took, summed over the groups. ``labels``, ``masks``, ``normalize`` as
    :func:`heatmaps_on_input_grid`; ``channel_names`` and ``spacing`` (mm) for the shares."""

    def __init__(self, targets: Targets, labels, masks, to_input, normalize, on_heatmap, channel_names, spacing):
        self.targets, self.labels, self.masks, self.to_input = targets, labels, masks, to_input
        self.normalize, self.on_heatmap = normalize, on_heatmap
        self.channel_names, self.spacing = channel_names, spacing
        self.raw_max: dict[str, list[float]] = {}
        self.heatmaps: dict[str, list[np.ndarray]] = {}
        self.seconds = 0.0

    def add(self, group: range, maps: dict[str, torch.Tensor]) -> None:
        """The maps of the targets at positions ``group``, by name (emptied)."""
        start, targets = time.perf_counter(), self.targets
        if targets.reliance is not None:
            assert self.spacing is not None
            add_gradient_shares(
                targets, maps, self.to_input, self.labels, self.spacing, self.channel_names, self.masks, group.start
            )
        heatmaps, raw_max = heatmaps_on_input_grid(
            maps,
            self.to_input,
            self.labels,
            targets.classes,
            self.normalize,
            self.on_heatmap,
            self.masks,
            targets.target_findings,
            group.start,
        )
        for name, peaks in raw_max.items():
            self.raw_max.setdefault(name, []).extend(peaks)
        for name, heat in heatmaps.items():
            self.heatmaps.setdefault(name, []).append(heat)
        self.seconds += time.perf_counter() - start

    def kept(self) -> dict[str, np.ndarray]:
        """The kept maps, layer -> ``(n, Z, Y, X)`` (none when handed on)."""
        return {name: np.concatenate(parts) for name, parts in self.heatmaps.items()}
