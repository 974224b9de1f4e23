"""``evaluate --findings``: the findings a case shows, scored as targets of their own.

A volume's findings (:func:`~SegGradCAMLib.volume_findings.volume_findings`: the components of each
class on the input grid, as ``explain --findings`` finds them) reach each of its cases with their
regions on the model grid (``EvalCase.findings`` and ``EvalCase.regions``). Each finding a case shows
is one more target there (:class:`~.faithfulness.Target`, as ``explain --findings --faithfulness``
scores it): its Seg-Grad-CAM target is the class logit summed over its region, and Deletion/Insertion,
ROAD, the energy fractions, the baselines and the randomisation take that region as the mask. Its
rows carry its ``finding`` id and are summarised apart from the classes, as ``<class> findings``
(:func:`~.statistics.group_name`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pipelines import EvalCase
from .faithfulness import Target


@dataclass(frozen=True)
class ShownFinding:
    """A finding shown on a case: its target (its class and its position in the case's regions) and id."""

    target: Target
    id: int


def shown_findings(case: EvalCase) -> list[ShownFinding]:
    """The findings of ``case`` whose region is not empty on it, in the volume's order (largest first)."""
    if case.findings is None or case.regions is None:
        return []
    return [
        ShownFinding(Target(finding.class_index, k), finding.id)
        for k, finding in enumerate(case.findings.findings)
        if case.regions[k].any()
    ]


def shown_regions(case: EvalCase, shown: list[ShownFinding]) -> torch.Tensor:
    """The regions ``(len(shown), *S)`` bool of ``shown`` on ``case``."""
    assert case.regions is not None
    return case.regions[[f.target.finding for f in shown]]
