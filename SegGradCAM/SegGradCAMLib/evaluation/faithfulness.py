"""A faithfulness score and verdict for each heatmap of one explain run (``explain --faithfulness``).

For each explained target (a class, or a finding: one connected component of a class) and layer,
on this volume only: Deletion and Insertion AUC of the map (the segmentation-aware scores of
:mod:`.deletion_insertion`: mean class probability over the target's mask, the class's originally
predicted mask or the finding's, blurred copy as what removed voxels become), the same curves
for :data:`RANDOM_ORDERINGS` random orderings (fixed seeds) and for the mask baseline (mask
voxels first, in random order), and a verdict:

- better than random: Deletion AUC < mean - 2 SD of the random AUCs, and Insertion AUC >
  mean + 2 SD; Deletion and Insertion disagreeing gives ``mixed: ...``;
- better than the mask: both AUCs better than the mask baseline's.

Cases are those of :func:`~SegGradCAMLib.pipelines.cases_from_volume` (2D models: the
``max_slices`` slices with the largest area of the target's mask; 3D models: the volume) or,
for nnU-Net folders, :func:`~SegGradCAMLib.pipelines.nnunet_case` (the volume as nnU-Net
preprocesses it); AUCs averaged over them. The verdict says what it rests on, so nobody reads
it as a validation of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..cam import label_map, seg_grad_cam
from ..models.spec import LoadedModel
from ..pipelines import EvalCase
from ..options import DEFAULT_NEIGHBOURHOOD_MM
from .deletion_insertion import (
    DEFAULT_SIGMA_MM,
    TargetsScorer,
    auc,
    make_baseline,
    neighbourhood,
    perturbed_counts,
    rank_voxels,
    replaced_within,
    step_fractions,
    target_fractions,
)
from .sanity import random_heatmap
from .scoring_network import scoring_network

RANDOM_ORDERINGS = 5
DEFAULT_STEP = 0.05  # of a 2D slice
DEFAULT_STEP_3D = 0.1  # of a 3D target's neighbourhood (docs/evaluation.md, bench/RESULTS.md R15)
DEFAULT_MAX_SLICES = 5


@dataclass(frozen=True)
class Target:
    """What a heatmap explains on each case: class ``class_index`` over its predicted mask, or, with
    ``finding`` (the position of a finding's mask in each case's ``regions``), over that finding only."""

    class_index: int
    finding: int | None = None

    def mask(self, case: EvalCase, labels: torch.Tensor) -> torch.Tensor:
        """The target's mask ``(*S)`` bool on ``case``, whose predicted labels are ``labels`` ``(*S)``."""
        if self.finding is None:
            return labels == self.class_index
        assert case.regions is not None, "a finding's target needs the cases' regions"
        return case.regions[self.finding]


@dataclass
class _Curves:
    """Deletion and Insertion AUCs of one ranking, one value per case."""

    deletion: list[float]
    insertion: list[float]

    def extend(self, other: "_Curves") -> None:
        self.deletion += other.deletion
        self.insertion += other.insertion

    def means(self) -> tuple[float, float]:
        return float(np.mean(self.deletion)), float(np.mean(self.insertion))


def verdict(deletion: float, insertion: float, random: dict, mask: dict) -> str:
    """The rule of the module docstring on the AUCs of one map and its baselines."""
    deletion_better = deletion < random["deletion_mean"] - 2 * random["deletion_sd"]
    insertion_better = insertion > random["insertion_mean"] + 2 * random["insertion_sd"]
    if deletion_better and insertion_better:
        versus_mask = deletion < mask["deletion_auc"] and insertion > mask["insertion_auc"]
        return "better than random; " + ("better than the mask" if versus_mask else "not better than the mask")
    if not deletion_better and not insertion_better:
        return "not better than random"
    better, worse = ("Deletion", "Insertion") if deletion_better else ("Insertion", "Deletion")
    return f"mixed: better than random on {better}, not on {worse}"


@dataclass
class CaseTarget:
    """One target on one case: its class, its mask ``(*S)`` bool, its maps (name -> ``(*S)``) and
    where it is perturbed (``(*S)`` bool, :func:`~.deletion_insertion.neighbourhood`; None: everywhere)."""

    class_index: int
    mask: torch.Tensor
    maps: dict[str, torch.Tensor]
    region: torch.Tensor | None = None


def score_case(
    network,
    image: torch.Tensor,
    replacement: torch.Tensor,
    targets: Sequence[CaseTarget],
    activation: str,
    device: str,
    step: float,
    seed: int,
    batch_size: int = 64,
    scored: Callable[[int], None] = lambda n: None,
) -> list[tuple[dict[str, _Curves], list[_Curves], _Curves]]:
    """One case, every target on it: per target the Deletion/Insertion AUCs of each of its maps, of
    the random orderings and of the mask baseline (mask voxels first, ties at random). ``image``,
    ``replacement``: ``(Cin, *S)``.

    Every network call scores every target. Targets perturbed everywhere (2D cases) share the two
    ends and the random orderings (which do not depend on the target); targets perturbed within
    their own region (3D cases) have their own, within it, in its steps (:func:`target_fractions`:
    finer at both ends for a target smaller than a step). A random ordering's Insertion curve is
    the Deletion curve of the reversed ordering read backwards (restoring the top-ranked ``k``
    voxels of the reversed ordering gives the input that deleting the top ``N - k`` gives), so the
    random orderings cost Deletion calls only. Perturbed inputs go through the network as many at
    a time as the scorer's memory budget holds, at most ``batch_size``, through
    :func:`~.scoring_network.scoring_network`; ``scored(n)`` after each call of ``n`` inputs
    (:func:`calls_per_case` in all)."""
    masks = [(t.class_index, t.mask) for t in targets]
    scorer = TargetsScorer(scoring_network(network, device), masks, activation, device, batch_size)
    everywhere = targets[0].region is None
    assert all((t.region is None) == everywhere for t in targets), "a case's targets all have regions, or none"
    ends = scorer(torch.stack([image, replacement]) if everywhere else image[None])[0]  # (2 or 1, T)
    scored(len(ends))
    maps = len(targets[0].maps)  # every target of a case has the same maps: their tie-break seeds too
    chunk = min(batch_size, scorer.inputs_per_call(image))

    def random_deletions(end: torch.Tensor, region: torch.Tensor | None, counts: np.ndarray) -> np.ndarray:
        """Scores ``(R, steps, T)`` of the random orderings' Deletion steps towards ``end``."""
        orderings = [
            rank_voxels(random_heatmap(image.shape[1:], seed + k), seed + maps + k, region)
            for k in range(RANDOM_ORDERINGS)
        ]
        return _perturbed_scores(scorer, image, end, orderings, counts, chunk, scored)

    if everywhere:
        shared = random_deletions(replacement, None, perturbed_counts(step_fractions(step), image[0].numel()))
    results = []
    for t, target in enumerate(targets):
        region = target.region
        fractions = target_fractions(step, target.mask, region)
        counts = perturbed_counts(fractions, image[0].numel() if region is None else int(region.sum()))
        if everywhere:
            end, last, removed = replacement, ends[1, t], shared[..., t]
        else:
            end = replaced_within(image, replacement, region)
            last = scorer(end[None])[0][0, t]
            scored(1)
            removed = random_deletions(end, region, counts)[..., t]
        first = ends[0, t]
        randoms = [
            _Curves([auc([first, *row, last], fractions)], [auc([last, *row[::-1], first], fractions)])
            for row in removed
        ]
        heats = [*target.maps.values(), target.mask.float()]
        seeds = [seed + (i if i < maps else maps + RANDOM_ORDERINGS) for i in range(len(heats))]
        ranks = [rank_voxels(heat, tie_seed, region) for heat, tie_seed in zip(heats, seeds)]
        deleted = _perturbed_scores(scorer, image, end, ranks, counts, chunk, scored)[..., t]
        inserted = _perturbed_scores(scorer, end, image, ranks, counts, chunk, scored)[..., t]
        curves = [
            _Curves([auc([first, *d, last], fractions)], [auc([last, *i, first], fractions)])
            for d, i in zip(deleted, inserted)
        ]
        results.append((dict(zip(target.maps, curves)), randoms, curves[-1]))
    return results


def _perturbed_scores(
    scorer: TargetsScorer,
    start: torch.Tensor,
    end: torch.Tensor,
    ranks: Sequence[torch.Tensor],
    counts: np.ndarray,
    chunk: int,
    scored: Callable[[int], None],
) -> np.ndarray:
    """Scores ``(len(ranks), len(counts), T)`` of ``start`` ``(Cin, *S)`` with, for each ranking
    ``(*S)`` and count ``k``, its ``k`` top-ranked voxels replaced by ``end``'s; ``chunk`` inputs
    built at a time."""
    pairs = [(r, k) for r in ranks for k in counts]
    scores = []
    for first in range(0, len(pairs), chunk):
        replaced = torch.stack([r < k for r, k in pairs[first : first + chunk]])[:, None]  # (B, 1, *S)
        scores.append(scorer(torch.where(replaced, end[None], start[None]))[0])
        scored(len(replaced))
    return np.concatenate(scores).reshape(len(ranks), len(counts), -1)


class _Pooled:
    """One target's curves over its cases: per map, per random ordering and the mask's."""

    def __init__(self, names: Sequence[str]) -> None:
        self.maps = {name: _Curves([], []) for name in names}
        self.randoms = [_Curves([], []) for _ in range(RANDOM_ORDERINGS)]
        self.mask = _Curves([], [])

    def extend(self, maps: dict[str, _Curves], randoms: list[_Curves], mask: _Curves) -> None:
        for name, curves in maps.items():
            self.maps[name].extend(curves)
        for pooled, one in zip(self.randoms, randoms):
            pooled.extend(one)
        self.mask.extend(mask)


def calls_per_case(maps: int, fractions: Sequence[np.ndarray], regions: bool = False) -> int:
    """Network calls for one case with a target of ``maps`` maps for each of ``fractions`` (its steps,
    :func:`~.deletion_insertion.target_fractions`): the two ends and the random orderings' Deletion
    steps, shared by the targets (with ``regions``: the image, then each target's own end and random
    orderings), then every inner step of Deletion and Insertion for each target's maps and mask."""
    inner = [len(f) - 2 for f in fractions]
    if regions:
        return 1 + sum(1 + RANDOM_ORDERINGS * steps + (maps + 1) * 2 * steps for steps in inner)
    return 2 + RANDOM_ORDERINGS * inner[0] + sum((maps + 1) * 2 * steps for steps in inner)


def summarise(
    maps: dict[str, _Curves],
    randoms: list[_Curves],
    mask: _Curves,
    fractions: np.ndarray,
    cases: int,
    perturbation: str,
    within: str = "",
) -> dict[str, dict]:
    """explain.json's ``faithfulness`` for each map (AUCs averaged over the cases); ``fractions``: the
    steps ``(T,)`` (:func:`~.deletion_insertion.target_fractions`); ``within``: where the voxels were
    perturbed (e.g. ``10 mm of the target``; empty: everywhere)."""
    random_means = np.array([r.means() for r in randoms])  # (orderings, 2)
    random = {
        "deletion_mean": float(random_means[:, 0].mean()),
        "deletion_sd": float(random_means[:, 0].std(ddof=1)),
        "insertion_mean": float(random_means[:, 1].mean()),
        "insertion_sd": float(random_means[:, 1].std(ddof=1)),
        "n": len(randoms),
    }
    mask_deletion, mask_insertion = mask.means()
    mask_entry = {"deletion_auc": mask_deletion, "insertion_auc": mask_insertion}
    steps = len(fractions) - 1
    if within:
        perturbation = f"{perturbation} within {within}"
    even = np.allclose(np.diff(fractions), fractions[1])
    finer = "" if even else f" (finer at both ends, the first {fractions[1]:.2%}: the target is smaller than a step)"
    basis = (
        f"Deletion and Insertion, {steps} steps{f' of the voxels within {within}' if within else ''}{finer}, "
        f"{len(randoms)} random orderings, "
        f"{cases} {'case' if cases == 1 else 'cases'} of this volume only"
    )
    summary = {}
    for name, curves in maps.items():
        deletion, insertion = curves.means()
        summary[name] = {
            "deletion_auc": deletion,
            "insertion_auc": insertion,
            "random": random,
            "mask": mask_entry,
            "steps": steps,
            "first_step": float(fractions[1]),
            "cases": cases,
            "perturbation": perturbation,
            "verdict": verdict(deletion, insertion, random, mask_entry),
            "basis": basis,
        }
    return summary


def explanation_faithfulness(
    model: LoadedModel,
    found: Sequence[EvalCase],
    targets: Sequence[Target],
    layers: Sequence[str],
    method: str,
    device: str = "cpu",
    step: float | None = None,
    max_slices: int = DEFAULT_MAX_SLICES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    neighbourhood_mm: float = DEFAULT_NEIGHBOURHOOD_MM,
) -> dict[tuple[Target, str], dict]:
    """Scores and verdicts of ``method`` on ``layers`` for each target (class or finding) of one
    volume, given as its cases on the model grid (:func:`~SegGradCAMLib.pipelines.cases_from_volume`,
    :func:`~SegGradCAMLib.pipelines.nnunet_case`): ``(target, layer) -> faithfulness`` (targets
    whose mask is empty on every case are left out). Each case is scored once for all the targets
    it holds (:func:`score_case`); a 3D target is perturbed within ``neighbourhood_mm`` of its mask
    (:func:`~.deletion_insertion.neighbourhood`). ``step``: the fraction perturbed per step (None:
    :data:`DEFAULT_STEP` of a slice, :data:`DEFAULT_STEP_3D` of a neighbourhood). ``progress(done,
    total)`` counts network calls;
    each entry records those of its cases (shared with the other targets on them)."""
    network = model.network.to(device).eval()
    with torch.no_grad():  # each case's labels once, for every class
        labelled = [(case, label_map(network(case.image[None].to(device)))[0].cpu()) for case in found]
    on_case: dict[int, list[tuple[Target, torch.Tensor, torch.Tensor | None]]] = {}  # (target, mask, region)
    for target in targets:
        for position, mask in _cases_of(labelled, target, max_slices):
            region = neighbourhood(mask, labelled[position][0].spacing, neighbourhood_mm)
            on_case.setdefault(position, []).append((target, mask, region))
    regional = {p: held[0][2] is not None for p, held in on_case.items()}
    if step is None:
        step = DEFAULT_STEP_3D if any(regional.values()) else DEFAULT_STEP
    steps_of = {(p, i): target_fractions(step, m, r) for p, held in on_case.items() for i, (_, m, r) in enumerate(held)}
    case_calls = {
        p: calls_per_case(len(layers), [steps_of[p, i] for i in range(len(held))], regional[p])
        for p, held in on_case.items()
    }
    calls = {"done": 0, "total": sum(case_calls.values())}

    def scored(n: int) -> None:
        calls["done"] += n
        if progress is not None:
            progress(calls["done"], calls["total"])

    pooled: dict[Target, _Pooled] = {}
    for position, held in sorted(on_case.items()):
        case = labelled[position][0]
        x = case.image[None].to(device)
        scored_targets = [
            CaseTarget(
                target.class_index,
                mask,
                _maps(network, x, layers, target.class_index, method, mask, device),
                region,
            )
            for target, mask, region in held
        ]
        replacement = make_baseline(case.image.float(), case.spacing, "blur", DEFAULT_SIGMA_MM)
        activation = model.spec.output_activation
        scores = score_case(
            network, case.image.float(), replacement, scored_targets, activation, device, step, seed, scored=scored
        )
        for (target, _, _), one in zip(held, scores):
            pooled.setdefault(target, _Pooled(layers)).extend(*one)
    results = {}
    for target, curves in pooled.items():
        positions = [p for p, held in on_case.items() if any(t == target for t, _, _ in held)]
        within = f"{neighbourhood_mm:g} mm of the target" if any(regional[p] for p in positions) else ""
        perturbation = f"blur {DEFAULT_SIGMA_MM:g} mm"
        fractions = max(
            (steps_of[p, i] for p, held in on_case.items() for i, (t, _, _) in enumerate(held) if t == target), key=len
        )  # one case in 3D; 2D cases are stepped evenly
        summary = summarise(curves.maps, curves.randoms, curves.mask, fractions, len(positions), perturbation, within)
        for layer, entry in summary.items():
            results[(target, layer)] = {**entry, "network_calls": sum(case_calls[p] for p in positions)}
    return results


def _maps(network, x: torch.Tensor, layers: Sequence[str], c: int, method: str, mask: torch.Tensor, device: str):
    """Each layer's map ``(*S)`` of class ``c`` on ``x`` ``(1, Cin, *S)``, the class logit summed over ``mask``
    ``(*S)`` bool explained."""
    cams = seg_grad_cam(network, x, list(layers), [c], method, mask[None, None].to(device), upsample=True)
    return {layer: cams[layer][0, 0].float().cpu() for layer in layers}


def _cases_of(labelled: list, target: Target, max_slices: int) -> list[tuple[int, torch.Tensor]]:
    """Of the (case, predicted labels ``(*S)``) pairs, (position, target mask ``(*S)``) where the mask is
    not empty: the ``max_slices`` with the largest mask (small masks give noisy curves), in their order."""
    masks = [(position, target.mask(case, labels)) for position, (case, labels) in enumerate(labelled)]
    kept = [(position, mask) for position, mask in masks if mask.any()]
    largest = sorted(sorted(range(len(kept)), key=lambda i: -int(kept[i][1].sum()))[:max_slices])
    return [kept[i] for i in largest]
