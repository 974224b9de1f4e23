"""What each backward pass of a volume explains, found by a segmentation pass before the CAM pass.

Without findings, probabilities or reliance, each class's target is its predicted mask, taken
from the CAM pass's own logits. With them, a segmentation pass without gradients comes first:
its labels give the findings (:mod:`.findings`), its logits the probabilities (:mod:`.uncertainty`)
and the unoccluded scores (:mod:`.reliance`); the CAM pass then explains the classes and the
findings together, one backward pass per target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import INPUT_GRADIENT, label_map, predicted_regions
from .findings import Finding, FindingRequest, FindingSet, find_findings
from .model_grid import ModelGrid, prepare_input
from .models.spec import ModelSpec
from .reliance import gradient_shares, occluded, occlusion_reliance, target_scores
from .uncertainty import MapCallback, Uncertainty, probabilities_of, stream_probabilities


@dataclass
class Targets:
    """``classes``: the class of each target (the explained classes, then the findings');
    ``regions``: ``(len(classes), *model grid)`` bool or None (each class's predicted mask);
    ``findings`` and the finding of each target (``target_findings``, None for a class);
    ``reliance``: per target ``{"occlusion": {...}}`` (multi-channel models), to which the CAM
    pass adds ``"input_gradient"``."""

    classes: list[int]
    regions: torch.Tensor | None = None
    findings: FindingSet | None = None
    reliance: list[dict] | None = None
    target_findings: list[Finding | None] = field(default_factory=list)


@dataclass(frozen=True)
class TargetRequest:
    """What the first pass is for: ``findings``, ``probabilities`` (streamed to ``on_map``) and the
    channel ``reliance`` (named ``channel_names``, multi-channel models)."""

    findings: FindingRequest | None = None
    probabilities: bool = False
    reliance: bool = False
    channel_names: Sequence[str] = ()
    on_map: MapCallback | None = None

    @property
    def needs_segmentation(self) -> bool:
        return self.findings is not None or self.probabilities or self.reliance


def _occlusion(
    segment: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    image: np.ndarray,
    spacing: Sequence[float],
    direction,
    targets: Targets,
    base: np.ndarray,
    names: Sequence[str],
) -> list[dict]:
    """Per target, ``{"occlusion": fraction of its score lost per channel and for all}``: one
    forward pass per occluded input ``(Cin, Z, Y, X)``."""
    scores = {}
    for key, channels in [*((name, [c]) for c, name in enumerate(names)), ("all", list(range(len(names))))]:
        x, _ = prepare_input(spec, occluded(image, channels), spacing, direction)
        scores[key] = target_scores(
            probabilities_of(segment(x), spec.output_activation), targets.classes, targets.regions
        )
    return [{"occlusion": lost} for lost in occlusion_reliance(names, base, scores)]


def first_pass_targets(
    segment: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    image: np.ndarray,
    x: torch.Tensor,
    grid: ModelGrid,
    spacing: Sequence[float],
    direction,
    classes: list[int],
    request: TargetRequest,
) -> tuple[np.ndarray, Targets]:
    """The segmentation pass of ``x`` ``(Cin, *model grid)`` (``segment``: no gradients) and what it
    gives: the labels ``(Z, Y, X)`` on the input grid and the targets of the CAM pass."""
    logits = segment(x)
    labels = grid.to_input(label_map(logits, 0)[None].to(torch.int16), labels=True)[0]
    regions = predicted_regions(logits[None], classes)[0]
    targets = Targets(list(classes), regions, target_findings=[None] * len(classes))
    if request.findings is not None:
        found = find_findings(labels, classes, spacing, request.findings, spec.labels)
        targets.findings = found
        targets.classes += [f.class_index for f in found.findings]
        targets.target_findings += found.findings
        finding_regions = grid.to_model(found.regions(labels.shape).astype(np.uint8), labels=True).bool()
        targets.regions = torch.cat([regions, finding_regions])
    if request.probabilities and request.on_map is not None:
        findings = [] if targets.findings is None else targets.findings.findings
        uncertainty = Uncertainty(len(spec.labels), spec.output_activation, findings, request.on_map)
        stream_probabilities(logits, grid.to_input, spec.output_activation, uncertainty)
    if request.reliance:
        base = target_scores(probabilities_of(logits, spec.output_activation), targets.classes, targets.regions)
        del logits
        targets.reliance = _occlusion(segment, spec, image, spacing, direction, targets, base, request.channel_names)
    return labels, targets


def add_gradient_shares(
    targets: Targets,
    maps: dict[str, torch.Tensor],
    grid: ModelGrid,
    labels: np.ndarray,
    spacing: Sequence[float],
    names: Sequence[str],
) -> None:
    """Take the ``|input x gradient|`` maps out of ``maps`` and add each target's channel shares in
    its neighbourhood to ``targets.reliance``."""
    saliency = [maps.pop(INPUT_GRADIENT.format(c)) for c in range(len(names))]
    assert targets.reliance is not None and targets.regions is not None

    def region_of(t: int) -> np.ndarray:
        finding = targets.target_findings[t]
        return labels == targets.classes[t] if finding is None else finding.full_mask(labels.shape)

    shares = gradient_shares(names, saliency, grid.to_input, region_of, spacing)
    for entry, share in zip(targets.reliance, shares):
        entry["input_gradient"] = share
