"""Segmentation-aware Deletion and Insertion (after Petsiuk et al. 2018, RISE).

Voxels are ranked by a heatmap (ties broken at random with a seed) and removed
(Deletion: replaced by an in-distribution baseline such as a blurred copy) or
restored (Insertion: starting from the baseline) in steps. Each perturbed input
is scored by the mean probability of class ``c`` over the ORIGINAL predicted mask
``M`` (fixed through the curve) and by ``Dice(argmax == c, M)``. Areas under the
curves use the trapezoid rule on fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import SegGradCAMError
from ..options import PERTURBATION_BASELINES
from .memory import MemoryBudget

# Blur strong enough to wash out lesion-sized structures (5 mm left a 2 mm-pixel lesion recognisable).
DEFAULT_SIGMA_MM = 20.0


def step_fractions(step: float, smallest: float | None = None) -> np.ndarray:
    """Fractions of the voxels perturbed at each step ``(T,)``: ``0, step, ..., 1``. With ``smallest``
    (a target's share of the voxels perturbed) below ``step``, the first and the last step are halved
    until one is no larger than the target, so a small target is not removed in one step, and the
    steps between spread evenly over ``step .. 1 - step``: as many steps in all while at least three
    fractions stay there, two more for each halving after that. ``step`` 0.1 and a target of 3 %
    give 0, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.975, 1. Always symmetric (``1 - f`` is a
    step where ``f`` is), as :func:`perturbed_counts` needs."""
    if not 0 < step <= 1:
        raise SegGradCAMError(f"The step must be a fraction in (0, 1]; got {step}.")
    steps = int(round(1.0 / step))
    uniform = np.linspace(0.0, 1.0, steps + 1)
    if smallest is None or smallest >= uniform[1] or steps < 2:
        return uniform
    if smallest <= 0:
        raise SegGradCAMError(f"A target's share of the voxels must be positive; got {smallest}.")
    halvings = int(np.ceil(np.log2(uniform[1] / smallest)))
    first = uniform[1] / 2.0 ** np.arange(halvings, 0, -1)  # step / 2^h, ..., step / 2
    middle = np.linspace(uniform[1], 1.0 - uniform[1], max(steps - 1 - 2 * halvings, min(3, steps - 1)))
    return np.concatenate([[0.0], first, middle, 1.0 - first[::-1], [1.0]])


def target_fractions(step: float, mask: torch.Tensor, region: torch.Tensor | None) -> np.ndarray:
    """:func:`step_fractions` of a target of mask ``(*S)`` bool perturbed within ``region`` ``(*S)``
    bool (:func:`neighbourhood`); even steps where it is perturbed everywhere (None)."""
    if region is None:
        return step_fractions(step)
    return step_fractions(step, int(mask.sum()) / int(region.sum()))


def auc(scores: Sequence[float], fractions: Sequence[float]) -> float:
    """Trapezoid area under ``scores`` over ``fractions`` (both ``(T,)``)."""
    y, x = np.asarray(scores, dtype=float), np.asarray(fractions, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def neighbourhood(mask: torch.Tensor, spacing: Sequence[float], margin_mm: float) -> torch.Tensor | None:
    """Where Deletion/Insertion perturb a target of mask ``(*S)`` bool: for a 3D mask, the voxels
    within ``margin_mm`` of it (``spacing`` in mm, array order), ``(*S)`` bool; None (the whole
    input) for a 2D mask or a margin of 0. An odd count loses its farthest voxel: half the region
    is then a whole number of voxels, so the half-way step of an ordering and of its reverse
    perturb complementary halves (:func:`perturbed_counts`)."""
    from scipy import ndimage

    if mask.ndim < 3 or margin_mm <= 0:
        return None
    distance = ndimage.distance_transform_edt(~mask.cpu().numpy(), sampling=[float(s) for s in spacing])
    region = distance <= margin_mm
    if region.sum() % 2:
        region.flat[np.argmax(np.where(region, distance, -1.0))] = False
    return torch.from_numpy(region)


def replaced_within(image: torch.Tensor, replacement: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """``image`` ``(Cin, *S)`` with the voxels of ``region`` ``(*S)`` bool taken from ``replacement``
    (all of them with no region): the fully perturbed end of a curve."""
    return replacement if region is None else torch.where(region.to(image.device)[None], replacement, image)


def perturbed_counts(fractions: np.ndarray, voxels: int) -> np.ndarray:
    """Voxels perturbed at each inner step ``(T - 2,)`` int64, the fractions ``(T,)`` of
    :func:`step_fractions` of ``voxels``; the count at ``1 - f`` is ``voxels`` less the count at
    ``f`` (halves rounded to even alone would break this for an odd number of voxels), so an
    ordering's Insertion is the reversed ordering's Deletion read backwards."""
    counts = np.round(fractions * voxels).astype(np.int64)
    counts = np.where(fractions > 0.5, voxels - counts[::-1], counts)
    return counts[1:-1]


def rank_voxels(heatmap: torch.Tensor, seed: int = 0, region: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of every voxel by decreasing heatmap value, ``(*S)`` -> ``(*S)`` int64.

    Rank 0 is the most relevant voxel. Ties (e.g. the flat zeros a ReLU leaves)
    are broken by a random permutation drawn from ``seed``. With ``region`` ``(*S)``
    bool, its voxels come first and the others after them all.
    """
    flat = heatmap.detach().reshape(-1).float().cpu()
    if region is not None:
        flat = torch.where(region.reshape(-1).cpu(), flat, torch.tensor(-torch.inf))
    generator = torch.Generator().manual_seed(int(seed))
    shuffle = torch.randperm(flat.numel(), generator=generator)
    order = shuffle[torch.argsort(-flat[shuffle], stable=True)]
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.reshape(heatmap.shape)


def make_baseline(
    image: torch.Tensor, spacing: Sequence[float], kind: str = "blur", sigma_mm: float = DEFAULT_SIGMA_MM
) -> torch.Tensor:
    """What removed voxels are replaced by, ``(Cin, *S)`` -> ``(Cin, *S)``.

    ``blur``: a Gaussian-blurred copy with ``sigma_mm`` in millimetres per axis
    (``spacing`` in mm, array order: anisotropic voxels get anisotropic sigmas);
    ``mean``: each channel's mean. Never raw zeros, which mean something in CT/MRI.
    """
    from scipy import ndimage

    if kind == "mean":
        return image.mean(dim=tuple(range(1, image.ndim)), keepdim=True).expand_as(image).clone()
    if kind != "blur":
        raise SegGradCAMError(f"Unknown baseline {kind!r}; choose one of {', '.join(PERTURBATION_BASELINES)}.")
    sigma = [sigma_mm / float(s) for s in spacing]
    array = image.detach().cpu().numpy()
    blurred = np.stack([ndimage.gaussian_filter(channel, sigma, mode="nearest") for channel in array])
    return torch.from_numpy(blurred.astype(np.float32))


def argmax_is(logits: torch.Tensor, c: int) -> torch.Tensor:
    """``logits.argmax(1) == c`` for ``(B, C, *S)`` (first maximum wins), without the slow
    strided CPU argmax: ``c`` beats every earlier class strictly and every later one or ties."""
    own = logits[:, c]
    result = torch.ones_like(own, dtype=torch.bool)
    for k in range(logits.shape[1]):
        if k != c:
            result &= own > logits[:, k] if k < c else own >= logits[:, k]
    return result


class ClassScorer:
    """Scores inputs for one class against a fixed mask, in batches without gradients.

    ``__call__``: inputs ``(B, Cin, *S)`` -> (mean probability of ``class_index``
    over ``mask`` ``(B,)``, ``Dice(argmax == class_index, mask)`` ``(B,)``), as many
    inputs per network call as ``budget`` holds (default: ``batch_size`` at most, by the
    free memory; see :mod:`.memory`). Mixed precision is used on CUDA.
    """

    def __init__(
        self,
        network: nn.Module,
        class_index: int,
        mask: torch.Tensor,
        activation: str = "softmax",
        device: str = "cpu",
        batch_size: int = 16,
        budget: MemoryBudget | None = None,
    ) -> None:
        if not mask.any():
            raise SegGradCAMError(f"Class {class_index} has an empty mask: nothing to score.")
        self.network, self.class_index, self.activation = network, int(class_index), activation
        self.mask = mask.to(device=device, dtype=torch.bool)
        self.device = device
        self.budget = budget if budget is not None else MemoryBudget(int(batch_size))

    def inputs_per_call(self, example: torch.Tensor) -> int:
        """How many inputs like ``example`` ``(Cin, *S)`` one call takes (the first time for its
        shape, a call on ``example`` measures what an input costs)."""
        if tuple(example.shape) not in self.budget.costs:
            self(example[None])
        return self.budget.inputs_per_call(tuple(example.shape), self.device)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        scores, start = [], 0
        if tuple(inputs.shape[1:]) not in self.budget.costs:  # the first input alone, measured
            scores.append(self.budget.measure(self._forward, inputs[:1].to(self.device), self.device))
            start = 1
        size = self.budget.inputs_per_call(tuple(inputs.shape[1:]), self.device)
        for first in range(start, inputs.shape[0], size):
            batch = inputs[first : first + size]
            self.budget.hold(batch.shape[0])
            scores.append(self._forward(batch.to(self.device)))
        return torch.cat([p for p, _ in scores]).cpu().numpy(), torch.cat([d for _, d in scores]).cpu().numpy()

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")):
            logits = self.network(batch)
        return self._score(logits.float())

    def _score(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return class_scores(logits, self.class_index, self.mask, self.activation)


class TargetsScorer(ClassScorer):
    """A :class:`ClassScorer` of several targets, each a (class index, mask ``(*S)`` bool), from the
    same network calls: ``__call__`` gives (probability, Dice), each ``(B, T)``."""

    def __init__(
        self,
        network: nn.Module,
        targets: Sequence[tuple[int, torch.Tensor]],
        activation: str = "softmax",
        device: str = "cpu",
        batch_size: int = 16,
        budget: MemoryBudget | None = None,
    ) -> None:
        super().__init__(network, targets[0][0], targets[0][1], activation, device, batch_size, budget)
        for c, mask in targets[1:]:
            if not mask.any():
                raise SegGradCAMError(f"Class {c} has an empty mask: nothing to score.")
        self.targets = [(int(c), mask.to(device=device, dtype=torch.bool)) for c, mask in targets]

    def _score(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        softmax = None if self.activation == "sigmoid" else torch.softmax(logits, dim=1)  # once for all targets
        scores = [class_scores(logits, c, mask, self.activation, softmax) for c, mask in self.targets]
        return torch.stack([p for p, _ in scores], 1), torch.stack([d for _, d in scores], 1)


def class_scores(
    logits: torch.Tensor, c: int, mask: torch.Tensor, activation: str, softmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, C, *S)`` -> (mean probability of class ``c`` over ``mask`` ``(*S)`` bool, ``Dice(predicted
    == c, mask)``), each ``(B,)``; ``activation``: ``softmax`` (argmax) or ``sigmoid`` (threshold 0.5);
    ``softmax``: ``softmax(logits, 1)`` where already computed."""
    if activation == "sigmoid":
        prob = torch.sigmoid(logits[:, c])
        predicted = prob > 0.5
    else:
        prob = (torch.softmax(logits, dim=1) if softmax is None else softmax)[:, c]
        predicted = argmax_is(logits, c)
    dims = tuple(range(1, prob.ndim))
    mean_prob = (prob * mask).sum(dims) / mask.sum()
    overlap = (predicted & mask).sum(dims).float()
    dice = 2 * overlap / (predicted.sum(dims) + mask.sum()).float()
    return mean_prob, dice


@dataclass
class PerturbationCurve:
    """One Deletion or Insertion curve; arrays ``(T,)``.

    ``reference`` is the probability score of the unperturbed input: step 0 of
    Deletion, the last step of Insertion.
    """

    kind: str
    fractions: np.ndarray
    probability: np.ndarray
    dice: np.ndarray
    reference: float

    def summary(self) -> dict[str, float]:
        """``auc`` (probability), ``auc_normalised`` (divided by ``reference``), ``dice_auc``."""
        area = auc(self.probability, self.fractions)
        return {
            "auc": area,
            "auc_normalised": area / self.reference if self.reference > 0 else float("nan"),
            "dice_auc": auc(self.dice, self.fractions),
        }


def perturbation_curve(
    scorer: ClassScorer,
    start: torch.Tensor,
    end: torch.Tensor,
    heatmap: torch.Tensor,
    fractions: np.ndarray,
    ends: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    region: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores as the top-ranked voxels of ``start`` are replaced by those of ``end``.

    ``start``, ``end``: ``(Cin, *S)``; ``heatmap``: ``(*S)``; ``ends``: the known
    (probability, Dice) of ``start`` and of ``end``, each ``(2,)``, so only the inner
    steps run the network; ``region`` ``(*S)`` bool: only its voxels are replaced, the
    fractions are of it (None: of the whole input). Perturbed inputs are built as many at
    a time as one network call takes (by the scorer's memory budget, never by the number of
    steps). Returns (probability, Dice), ``(T,)`` each.
    """
    ranks = rank_voxels(heatmap, seed, region)
    voxels = ranks.numel() if region is None else int(region.sum())
    counts = torch.from_numpy(perturbed_counts(fractions, voxels))
    probs, dices = [ends[0][:1]], [ends[1][:1]]
    size = scorer.inputs_per_call(start)
    for first in range(0, counts.numel(), size):
        k = counts[first : first + size].view(-1, *([1] * ranks.ndim))
        replaced = (ranks[None] < k)[:, None]  # (B, 1, *S)
        p, d = scorer(torch.where(replaced, end[None], start[None]))
        probs.append(p)
        dices.append(d)
    return np.concatenate(probs + [ends[0][1:]]), np.concatenate(dices + [ends[1][1:]])


def deletion_insertion(
    scorer: ClassScorer,
    image: torch.Tensor,
    baseline: torch.Tensor,
    heatmap: torch.Tensor,
    step: float = 0.01,
    seed: int = 0,
    ends: tuple[np.ndarray, np.ndarray] | None = None,
    region: torch.Tensor | None = None,
) -> dict[str, PerturbationCurve]:
    """Deletion (image -> baseline) and Insertion (baseline -> image) curves for one heatmap.

    ``image``, ``baseline``: ``(Cin, *S)``; ``heatmap``: ``(*S)``. ``ends``: the
    (probability, Dice) of ``image`` and ``baseline``, each ``(2,)``, as
    ``scorer(torch.stack([image, baseline]))`` returns them; computed when not given
    (pass them to share two network calls between heatmaps). ``region`` ``(*S)`` bool:
    where voxels are removed or restored (:func:`neighbourhood`; None: everywhere), with
    ``baseline`` equal to ``image`` outside it (:func:`replaced_within`), in the steps of
    :func:`target_fractions` for the scorer's mask.
    """
    fractions = target_fractions(step, scorer.mask, region)
    prob, dice = ends if ends is not None else scorer(torch.stack([image, baseline]))
    deletion = perturbation_curve(scorer, image, baseline, heatmap, fractions, (prob, dice), seed, region)
    insertion = perturbation_curve(scorer, baseline, image, heatmap, fractions, (prob[::-1], dice[::-1]), seed, region)
    return {
        "deletion": PerturbationCurve("deletion", fractions, *deletion, reference=float(prob[0])),
        "insertion": PerturbationCurve("insertion", fractions, *insertion, reference=float(prob[0])),
    }
