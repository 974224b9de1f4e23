"""How sure the network was: per-class probabilities and the predictive entropy on the input grid.

Probabilities are the softmax of the stitched logits (sigmoid for models with independent
outputs), brought to the input grid one class at a time; the entropy ``-sum p log p`` is
accumulated as they pass and divided by its largest value, ``log(C)`` (for sigmoid outputs the
mean binary entropy over the classes, divided by ``log 2``), so it lies in 0..1. Each finding
gets the mean and minimum probability of its class and the mean entropy over its voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .findings import Finding


@dataclass(frozen=True)
class UncertaintyMap:
    """One map on the input grid: ``kind`` ``"probability"`` (of ``class_index``), ``"entropy"``,
    ``"fold_disagreement"`` or ``"mirror_disagreement"``; ``array`` ``(Z, Y, X)`` float32 in 0..1."""

    kind: str
    array: np.ndarray
    class_index: int | None = None


MapCallback = Callable[[UncertaintyMap], None]


def probabilities_of(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Logits ``(C, *S)`` -> probabilities ``(C, *S)`` float32 (``"softmax"`` or ``"sigmoid"``)."""
    logits = logits.float()
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=0)


def _mean_over(array: np.ndarray, finding: Finding) -> float:
    return float(array[finding.box][finding.mask].mean())


class Uncertainty:
    """Accumulates the entropy of ``count`` class probabilities given one at a time (:meth:`add`),
    fills each finding's statistics and hands every map to ``on_map`` (then not kept)."""

    def __init__(self, count: int, activation: str, findings: list[Finding], on_map: MapCallback) -> None:
        self.count, self.sigmoid = count, activation == "sigmoid"
        self.findings, self.on_map = findings, on_map
        self.entropy: np.ndarray | None = None

    def add(self, class_index: int, probability: np.ndarray) -> None:
        """The probability ``(Z, Y, X)`` of ``class_index`` on the input grid."""
        p = np.clip(probability, 0.0, 1.0).astype(np.float32, copy=False)
        term = _plogp(p)
        if self.sigmoid:
            term += _plogp(1.0 - p)
        self.entropy = term if self.entropy is None else self.entropy + term
        for finding in self.findings:
            if finding.class_index == class_index:
                inside = p[finding.box][finding.mask]
                finding.stats["probability_mean"] = float(inside.mean())
                finding.stats["probability_min"] = float(inside.min())
        self.on_map(UncertaintyMap("probability", p, class_index))

    def finish(self) -> None:
        """The entropy map, normalised to 0..1, after every class was added."""
        assert self.entropy is not None
        scale = self.count * math.log(2) if self.sigmoid else math.log(max(self.count, 2))
        entropy = np.clip(self.entropy / np.float32(scale), 0.0, 1.0).astype(np.float32)
        self.entropy = None
        for finding in self.findings:
            finding.stats["entropy_mean"] = _mean_over(entropy, finding)
        self.on_map(UncertaintyMap("entropy", entropy))

    def add_disagreement(self, kind: str, disagreement: np.ndarray) -> None:
        """A disagreement map ``(Z, Y, X)`` in 0..1 of ``kind`` (``"fold_disagreement"``: the fraction
        of folds whose label differs from the ensemble's; ``"mirror_disagreement"``: of mirrorings)."""
        for finding in self.findings:
            finding.stats[f"{kind}_mean"] = _mean_over(disagreement, finding)
        self.on_map(UncertaintyMap(kind, disagreement.astype(np.float32, copy=False)))


def _plogp(p: np.ndarray) -> np.ndarray:
    """``-p log p`` with ``0 log 0 = 0``."""
    return -p * np.log(np.maximum(p, np.float32(1e-12)))


def stream_probabilities(
    logits: torch.Tensor, to_input: Callable[[torch.Tensor], np.ndarray], activation: str, uncertainty: Uncertainty
) -> None:
    """Each class's probability of the logits ``(C, *model grid)`` brought to the input grid by
    ``to_input`` (``(1, *model grid)`` -> ``(1, Z, Y, X)``), one at a time, into ``uncertainty``."""
    probabilities = probabilities_of(logits, activation)
    for k in range(len(probabilities)):
        uncertainty.add(k, to_input(probabilities[k : k + 1])[0])
    del probabilities
    uncertainty.finish()
