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
from .deletion_insertion import ClassScorer, auc, make_baseline, rank_voxels, step_fractions
from .sanity import random_heatmap

RANDOM_ORDERINGS = 5
DEFAULT_STEP = 0.05
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


def score_class(
    network,
    image: torch.Tensor,
    replacement: torch.Tensor,
    mask: torch.Tensor,
    class_index: int,
    maps: dict[str, torch.Tensor],
    activation: str,
    device: str,
    step: float,
    seed: int,
    batch_size: int = 64,
    scored: Callable[[int], None] = lambda n: None,
) -> tuple[dict[str, _Curves], list[_Curves], _Curves]:
    """One case and class: Deletion/Insertion AUCs of each map ``(*S)``, of the random orderings
    and of the mask baseline (mask voxels first, ties at random). ``image``, ``replacement``:
    ``(Cin, *S)``; ``mask``: ``(*S)`` bool. The perturbed inputs of all rankings go through the
    network together, ``batch_size`` at a time; ``scored(n)`` after each call of ``n`` inputs
    (:func:`calls_per_case` in all)."""
    scorer = ClassScorer(network, class_index, mask, activation, device, batch_size)
    ends, _ = scorer(torch.stack([image, replacement]))  # probability of the image and of the replacement
    scored(2)
    heats = [*maps.values(), *(random_heatmap(mask.shape, seed + k) for k in range(RANDOM_ORDERINGS)), mask.float()]
    ranks = [rank_voxels(heat, seed + k) for k, heat in enumerate(heats)]
    fractions = step_fractions(step)
    counts = np.round(fractions[1:-1] * mask.numel()).astype(np.int64)
    aucs = []
    for start, end, first, last in ((image, replacement, ends[0], ends[1]), (replacement, image, ends[1], ends[0])):
        pairs = [(r, k) for r in ranks for k in counts]
        scores = []
        for chunk in range(0, len(pairs), batch_size):
            replaced = torch.stack([r < k for r, k in pairs[chunk : chunk + batch_size]])[:, None]  # (B, 1, *S)
            scores.append(scorer(torch.where(replaced, end[None], start[None]))[0])
            scored(len(replaced))
        inner = np.concatenate(scores).reshape(len(ranks), len(counts))
        aucs.append([auc([first, *row, last], fractions) for row in inner])
    curves = [_Curves([d], [i]) for d, i in zip(*aucs)]
    return dict(zip(maps, curves)), curves[len(maps) : -1], curves[-1]


def calls_per_case(maps: int, step: float) -> int:
    """Network calls for one case and class: the two ends, then every inner step of Deletion
    and Insertion for ``maps`` maps, the random orderings and the mask."""
    return 2 + (maps + RANDOM_ORDERINGS + 1) * 2 * (len(step_fractions(step)) - 2)


def summarise(
    maps: dict[str, _Curves], randoms: list[_Curves], mask: _Curves, step: float, cases: int, perturbation: str
) -> dict[str, dict]:
    """explain.json's ``faithfulness`` for each map (AUCs averaged over the cases)."""
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
    steps = len(step_fractions(step)) - 1
    basis = (
        f"Deletion and Insertion, {steps} steps, {len(randoms)} random orderings, "
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
            "cases": cases,
            "perturbation": perturbation,
            "verdict": verdict(deletion, insertion, random, mask_entry),
            "basis": basis,
        }
    return summary


def _target_curves(
    model: LoadedModel,
    cases: Sequence[tuple[EvalCase, torch.Tensor]],
    c: int,
    layers: Sequence[str],
    method: str,
    device: str,
    step: float,
    seed: int,
    scored: Callable[[int], None],
):
    """Deletion/Insertion curves of class ``c`` over its ``cases`` (case, target mask ``(*S)``), pooled:
    the maps' per layer (the class logit summed over the mask explained), the random orderings' and
    the mask's."""
    from .deletion_insertion import DEFAULT_SIGMA_MM

    network = model.network
    per_map = {layer: _Curves([], []) for layer in layers}
    randoms = [_Curves([], []) for _ in range(RANDOM_ORDERINGS)]
    mask_curves = _Curves([], [])
    for case, target_mask in cases:
        x = case.image[None].to(device)
        cams = seg_grad_cam(network, x, list(layers), [c], method, target_mask[None, None].to(device), upsample=True)
        replacement = make_baseline(case.image.float(), case.spacing, "blur", DEFAULT_SIGMA_MM)
        maps, random, mask = score_class(
            network,
            case.image.float(),
            replacement,
            target_mask,
            c,
            {layer: cams[layer][0, 0].float().cpu() for layer in layers},
            model.spec.output_activation,
            device,
            step,
            seed,
            batch_size=64 if model.spec.spatial_dims == 2 else 1,
            scored=scored,
        )
        for layer in layers:
            per_map[layer].extend(maps[layer])
        for pooled, one in zip(randoms, random):
            pooled.extend(one)
        mask_curves.extend(mask)
    return per_map, randoms, mask_curves


def explanation_faithfulness(
    model: LoadedModel,
    found: Sequence[EvalCase],
    targets: Sequence[Target],
    layers: Sequence[str],
    method: str,
    device: str = "cpu",
    step: float = DEFAULT_STEP,
    max_slices: int = DEFAULT_MAX_SLICES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[tuple[Target, str], dict]:
    """Scores and verdicts of ``method`` on ``layers`` for each target (class or finding) of one
    volume, given as its cases on the model grid (:func:`~SegGradCAMLib.pipelines.cases_from_volume`,
    :func:`~SegGradCAMLib.pipelines.nnunet_case`): ``(target, layer) -> faithfulness`` (targets
    whose mask is empty on every case are left out). ``progress(done, total)`` counts network
    calls; each entry records its own."""
    from .deletion_insertion import DEFAULT_SIGMA_MM

    network = model.network.to(device).eval()
    with torch.no_grad():  # each case's labels once, for every class
        labelled = [(case, label_map(network(case.image[None].to(device)))[0].cpu()) for case in found]
    by_target = {target: _cases_of(labelled, target, max_slices) for target in targets}
    per_case = calls_per_case(len(layers), step)
    calls = {"done": 0, "total": sum(len(cases) for cases in by_target.values()) * per_case}

    def scored(n: int) -> None:
        calls["done"] += n
        if progress is not None:
            progress(calls["done"], calls["total"])

    results = {}
    for target, cases in by_target.items():
        c = target.class_index
        per_map, randoms, mask_curves = _target_curves(model, cases, c, layers, method, device, step, seed, scored)
        if cases:
            for layer, entry in summarise(
                per_map, randoms, mask_curves, step, len(cases), f"blur {DEFAULT_SIGMA_MM:g} mm"
            ).items():
                results[(target, layer)] = {**entry, "network_calls": len(cases) * per_case}
    return results


def _cases_of(labelled: list, target: Target, max_slices: int) -> list:
    """Of the (case, predicted labels ``(*S)``) pairs, the (case, target mask ``(*S)``) pairs where
    the mask is not empty: the ``max_slices`` with the largest mask (small masks give noisy curves),
    in their order."""
    masks = [(case, target.mask(case, labels)) for case, labels in labelled]
    kept = [(case, mask) for case, mask in masks if mask.any()]
    largest = sorted(sorted(range(len(kept)), key=lambda i: -int(kept[i][1].sum()))[:max_slices])
    return [kept[i] for i in largest]
