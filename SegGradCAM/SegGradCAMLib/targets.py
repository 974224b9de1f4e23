"""What each backward pass of a volume explains, found from the network's segmentation.

Without findings, probabilities or reliance, each class's target is its predicted mask, taken
from the CAM pass's own logits. With them, the segmentation's logits give the labels, the
findings (:mod:`.findings`), the probabilities (:mod:`.uncertainty`) and the unoccluded scores
(:mod:`.reliance`), and the CAM pass explains the classes and the findings together, one backward
pass per target. Whole-volume models find them inside the CAM pass, between its forward and its
backward passes; slice-wise and sliding-window models need the whole segmentation before any
slice or window is explained, so a pass without gradients comes first (sliding windows made it
already).
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
from .reliance import gradient_shares, occluded, occluded_channels, occlusion_reliance, target_scores
from .uncertainty import MapCallback, Uncertainty, probabilities_of, stream_probabilities


@dataclass
class Targets:
    """``classes``: the class of each target (the explained classes, then the findings');
    ``regions``: ``(len(classes), *model grid)`` bool or None (each class's predicted mask);
    ``findings`` and the finding of each target (``target_findings``, None for a class);
    ``reliance``: per target ``{"occlusion": {...}, "input_gradient": {...}}`` (multi-channel models)."""

    classes: list[int]
    regions: torch.Tensor | None = None
    findings: FindingSet | None = None
    reliance: list[dict] | None = None
    target_findings: list[Finding | None] = field(default_factory=list)
    base_scores: np.ndarray | None = None  # each target's probability sum before occlusion


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


def targets_from_logits(
    logits: torch.Tensor,
    spec: ModelSpec,
    grid: ModelGrid,
    spacing: Sequence[float],
    classes: list[int],
    request: TargetRequest,
    regions: torch.Tensor | None = None,
) -> tuple[np.ndarray, Targets]:
    """What a segmentation's logits ``(C, *model grid)`` give: the labels ``(Z, Y, X)`` on the input
    grid and the CAM pass's targets (findings added after the classes; the classes' regions are
    ``regions`` ``(len(classes), *model grid)`` when given, else their predicted masks); the
    probability maps go to ``request.on_map``, and with reliance each target's unoccluded score is kept."""
    labels = grid.to_input(label_map(logits, 0)[None].to(torch.int16), labels=True)[0]
    if regions is None:
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
        probabilities = probabilities_of(logits, spec.output_activation)
        targets.base_scores = target_scores(probabilities, targets.classes, targets.regions)
    return labels, targets


def add_occlusion(
    targets: Targets,
    segment: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    image: np.ndarray,
    spacing: Sequence[float],
    direction,
    request: TargetRequest,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Each target's ``reliance["occlusion"]``: the fraction of its score lost per occluded channel
    and for all; one segmentation (``segment``: no gradients) per occluded input ``(Cin, Z, Y, X)``,
    each a step of the progress stage ``occlusion``."""
    assert targets.base_scores is not None and targets.regions is not None
    names = request.channel_names
    occlusions = occluded_channels(names)
    scores = {}
    for done, (key, channels) in enumerate(occlusions):
        if progress is not None:
            progress("occlusion", done, len(occlusions))
        x, _ = prepare_input(spec, occluded(image, channels), spacing, direction)
        probabilities = probabilities_of(segment(x), spec.output_activation)
        scores[key] = target_scores(probabilities, targets.classes, targets.regions)
    if progress is not None:
        progress("occlusion", len(occlusions), len(occlusions))
    lost = occlusion_reliance(names, targets.base_scores, scores)
    targets.reliance = [{"occlusion": entry} for entry in lost]


def add_gradient_shares(
    targets: Targets,
    maps: dict[str, torch.Tensor],
    to_input: Callable[[torch.Tensor], np.ndarray],
    labels: np.ndarray,
    spacing: Sequence[float],
    names: Sequence[str],
    masks: np.ndarray | None = None,
    first: int = 0,
) -> None:
    """Take the ``|input x gradient|`` maps out of ``maps`` and add each target's channel shares in
    its neighbourhood to ``targets.reliance``. ``to_input``: ``(1, *model grid)`` -> ``(1, Z, Y, X)``;
    ``masks`` ``(len(classes), Z, Y, X)``: each class's own mask where classes overlap (else None);
    the maps may be one group of the targets, from the target at position ``first`` on."""
    saliency = [maps.pop(INPUT_GRADIENT.format(c)) for c in range(len(names))]
    assert targets.reliance is not None and targets.regions is not None

    def region_of(k: int) -> np.ndarray:
        t = first + k
        finding = targets.target_findings[t]
        if finding is not None:
            return finding.full_mask(labels.shape)
        return labels == targets.classes[t] if masks is None else masks[t]

    shares = gradient_shares(names, saliency, to_input, region_of, spacing)
    for entry, share in zip(targets.reliance[first:], shares):
        entry["input_gradient"] = share
