"""What the nnU-Net CAM pass explains and reports beyond the classes, from nnU-Net's own prediction
made before it: findings, probabilities, the folds' and mirrorings' disagreement, channel reliance.

- **Findings** are the components of nnU-Net's exported segmentation on the input grid
  (:func:`~.findings.find_findings`); each class's findings go to nnU-Net's preprocessed space as
  one id map, carried as nnU-Net carries a segmentation, and are explained in the same window loop
  as the classes.
- **Probabilities** are nnU-Net's own exported probabilities (what its ``save_probabilities``
  writes), handed one class at a time to :class:`~.uncertainty.Uncertainty`.
- **Disagreement** (:class:`Disagreement`): the window loop's stitched logits of each fold give that
  fold's own label; ``fold_disagreement`` is the fraction of folds whose label differs from the
  ensemble's (nnU-Net's segmentation). With mirroring, ``mirror_disagreement`` is the fraction of a
  fold's mirrorings whose label differs from that fold's (mirror-averaged) label, averaged over the
  folds; with one fold, the mirrorings that differ from the ensemble.
- **Occlusion**: one nnU-Net prediction (all folds, its mirroring) per occluded input, the arrays
  as nnU-Net's reader gives them occluded as :func:`~.reliance.occluded` does, then preprocessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .cam import predicted_regions
from .errors import SegGradCAMError
from .findings import FindingSet, find_findings
from .models.spec import LoadedModel
from .nnunet_grid import exported, preprocessed, to_preprocessed
from .reliance import occluded, occluded_channels, occlusion_reliance, target_scores
from .targets import TargetRequest, Targets
from .uncertainty import Uncertainty


@dataclass
class FirstPass:
    """What nnU-Net's prediction gives before the CAM pass: ``labels`` ``(Z, Y, X)`` int16 and, for
    region-based models, each class's own ``masks`` ``(n, Z, Y, X)`` bool on the input grid; the
    ``targets`` (regions in nnU-Net's preprocessed space) and the output ``channels`` of each target;
    the ``uncertainty`` that the disagreement maps go to (None without probabilities)."""

    labels: np.ndarray
    masks: np.ndarray | None
    targets: Targets
    channels: list[int]
    uncertainty: Uncertainty | None = None


def class_regions(
    model: LoadedModel, reference: torch.Tensor, classes: list[int], channels: list[int], region: np.ndarray | None
) -> torch.Tensor:
    """Target regions ``(len(classes), z, y, x)`` bool in nnU-Net's preprocessed space: each class's
    mask in nnU-Net's own stitched logits ``reference`` ``(C, z, y, x)`` (sigmoid > 0.5 for
    region-based models), or the user's ``region`` ``(z, y, x)``."""
    label_manager = model.nnunet_parts().label_manager
    if region is not None:
        return torch.from_numpy(np.repeat(region[None], len(classes), axis=0))
    if label_manager.has_regions:
        return label_manager.apply_inference_nonlin(reference)[channels] > 0.5
    return predicted_regions(reference[None], classes)[0]


def finding_regions(
    model: LoadedModel, properties: dict, shape: Sequence[int], found: FindingSet, grid: Sequence[int]
) -> torch.Tensor:
    """Each finding's region ``(K, *shape)`` bool in nnU-Net's preprocessed space: the findings of
    each class as one id map on the input grid ``grid`` ``(Z, Y, X)``, carried as nnU-Net carries a
    segmentation (a finding smaller than a preprocessed voxel may vanish there)."""
    kinds = sorted({f.class_index for f in found.findings})
    ids = np.zeros((len(kinds), *grid), dtype=np.int16)
    for finding in found.findings:
        ids[kinds.index(finding.class_index)][finding.box][finding.mask] = finding.id
    carried = to_preprocessed(model, properties, shape)(ids) if kinds else ids
    regions = [carried[kinds.index(f.class_index)] == f.id for f in found.findings]
    return torch.from_numpy(np.stack(regions) if regions else np.zeros((0, *shape), dtype=bool))


def _occlusion(
    model: LoadedModel, predictor, raw: np.ndarray, properties: dict, reference: torch.Tensor, first: FirstPass, names
) -> list[dict]:
    """Per target, ``{"occlusion": fraction of its score lost per channel and for all}``: one nnU-Net
    prediction per occluded input ``raw`` ``(Cin, ...)`` (as nnU-Net's reader gives it)."""
    nonlinearity = model.nnunet_parts().label_manager.apply_inference_nonlin
    regions = first.targets.regions
    assert regions is not None

    def scores(logits: torch.Tensor) -> np.ndarray:
        return target_scores(nonlinearity(logits), first.channels, regions)

    lost = {}
    for key, channels in occluded_channels(names):
        x = torch.from_numpy(preprocessed(model, occluded(raw, channels), dict(properties)))
        lost[key] = scores(predictor.predict_logits_from_preprocessed_data(x))
    return [{"occlusion": entry} for entry in occlusion_reliance(names, scores(reference), lost)]


def _stream_probabilities(
    model: LoadedModel, probabilities: np.ndarray, first: FirstPass, request: TargetRequest
) -> Uncertainty:
    """nnU-Net's exported probabilities ``(C, Z, Y, X)`` one class at a time into an
    :class:`Uncertainty` (region-based models: channel ``k`` is class ``k + 1``)."""
    assert request.on_map is not None
    findings = [] if first.targets.findings is None else first.targets.findings.findings
    uncertainty = Uncertainty(len(probabilities), model.spec.output_activation, findings, request.on_map)
    offset = 1 if model.nnunet_parts().label_manager.has_regions else 0
    for k in range(len(probabilities)):
        uncertainty.add(k + offset, probabilities[k])
    uncertainty.finish()
    return uncertainty


def first_pass(
    model: LoadedModel,
    predictor,
    raw: np.ndarray,
    properties: dict,
    reference: torch.Tensor,
    classes: list[int],
    region: np.ndarray | None,
    request: TargetRequest,
    spacing: Sequence[float] | None,
) -> FirstPass:
    """From nnU-Net's logits ``reference`` ``(C, z, y, x)`` (float16 as its predictor returns them, handed
    to its export as nnU-Net hands them: no float32 copy of every class): its exported segmentation, the
    targets of the classes (``region`` ``(z, y, x)``: the user's) and of the findings, and the output channel
    of each (region-based models: class ``c`` is channel ``c - 1``), the probabilities streamed to
    ``request.on_map`` and the channels' occlusion.
    ``spacing``: the input grid's (mm, ``(Z, Y, X)``), for findings and reliance."""
    if (request.findings is not None or request.reliance) and spacing is None:
        raise SegGradCAMError("Findings and channel reliance of an nnU-Net model need the input grid's spacing.")
    channels = [c - 1 for c in classes] if model.nnunet_parts().label_manager.has_regions else classes
    wanted = request.probabilities and request.on_map is not None
    labels, masks, probabilities = exported(model, reference, properties, channels, wanted)
    regions = class_regions(model, reference, classes, channels, region)
    first = FirstPass(labels, masks, Targets(list(classes), regions, target_findings=[None] * len(classes)), channels)
    if request.findings is not None:
        assert spacing is not None
        found = find_findings(labels, classes, spacing, request.findings, model.spec.labels, masks)
        first.targets.findings = found
        first.targets.classes = [*classes, *(f.class_index for f in found.findings)]
        first.targets.target_findings += found.findings
        first.channels = [*channels, *(channels[classes.index(f.class_index)] for f in found.findings)]
        carried = finding_regions(model, properties, reference.shape[1:], found, labels.shape)
        first.targets.regions = torch.cat([regions, carried])
    if probabilities is not None:
        first.uncertainty = _stream_probabilities(model, probabilities, first, request)
        del probabilities
    if request.reliance:
        first.targets.reliance = _occlusion(model, predictor, raw, properties, reference, first, request.channel_names)
    return first


class Disagreement:
    """Per voxel of nnU-Net's preprocessed space, the folds whose own label differs from the
    ensemble's ``ensemble`` ``(z, y, x)`` and the mirrorings whose label differs from their fold's.
    ``label_of``: averaged logits as the window loop holds them -> labels ``(z, y, x)``. One label
    map per mirroring of the current fold is held, never a fold's logits."""

    def __init__(
        self, label_of: Callable[[torch.Tensor], torch.Tensor], ensemble: torch.Tensor, folds: int, flips: int
    ):
        self.label_of, self.ensemble, self.folds, self.flips = label_of, ensemble, folds, flips
        self.fold_count = torch.zeros(ensemble.shape, dtype=torch.int16)
        self.mirror_count = torch.zeros(ensemble.shape, dtype=torch.int16)
        self.mirror_labels: list[torch.Tensor] = []

    def add_mirroring(self, logits: torch.Tensor) -> None:
        """One mirroring's averaged logits ``(C, ...)`` of the current fold."""
        self.mirror_labels.append(self.label_of(logits).to(torch.int16))

    def add_fold(self, logits: torch.Tensor) -> None:
        """The current fold's averaged logits ``(C, ...)``, after its mirrorings."""
        label = self.label_of(logits).to(torch.int16)
        self.fold_count += label != self.ensemble
        for mirrored in self.mirror_labels:
            self.mirror_count += mirrored != label
        self.mirror_labels = []

    def maps(self) -> dict[str, torch.Tensor]:
        """``fold_disagreement`` (several folds) and ``mirror_disagreement`` (several mirrorings),
        ``(1, z, y, x)`` float32 in 0..1."""
        maps = {}
        if self.folds > 1:
            maps["fold_disagreement"] = (self.fold_count.float() / self.folds)[None]
        if self.flips > 1:
            maps["mirror_disagreement"] = (self.mirror_count.float() / (self.folds * self.flips))[None]
        return maps


def add_disagreement(first: FirstPass, maps: dict[str, torch.Tensor], to_input) -> None:
    """Each disagreement map ``(1, z, y, x)`` brought to the input grid by ``to_input``, into the uncertainty."""
    assert first.uncertainty is not None
    for kind, disagreement in maps.items():
        first.uncertainty.add_disagreement(kind, np.clip(to_input(disagreement)[0], 0.0, 1.0))
