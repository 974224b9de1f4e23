"""Scoring heatmaps on the model's grid, one case at a time (a slice for 2D models, a volume for
3D models): per case, class (and, with findings, each finding it shows: :mod:`.finding_targets`)
and explanation (a CAM method on a layer, or a baseline: ``random``, ``mask``, ``gradient``) one
row of metrics (Deletion/Insertion, ROAD, energy, randomisation) and the curves; results saved per
cohort case and merged."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..cam import label_map, seg_grad_cam
from ..errors import CancelledError
from ..findings import FindingRequest
from ..layers import decoder_layers, resolve_layers
from ..models.spec import LoadedModel
from ..options import BASELINE_EXPLANATIONS, DEFAULT_NEIGHBOURHOOD_MM, MAX_VOXELS, METRICS
from ..pipelines import EvalCase, Pipeline
from ..selection import DEFAULT_FRACTIONS
from .deletion_insertion import (
    DEFAULT_SIGMA_MM,
    ClassScorer,
    deletion_insertion,
    make_baseline,
    neighbourhood,
    replaced_within,
    step_fractions,
)
from .energy import heatmap_energy_fractions
from .faithfulness import Target
from .finding_targets import shown_findings, shown_regions
from .memory import MemoryBudget
from .road import road
from .sanity import baseline_heatmap, cascading_randomisation
from .scoring_network import scoring_network
from .statistics import NO_LAYER, group_name


@dataclass
class EvalConfig:
    """What to measure and how. ``step``: fraction of voxels per Deletion/Insertion step;
    ``batch_size`` and ``max_memory_gb``: perturbed inputs per network call at most, and the
    memory such a call may take (see :mod:`.memory`); ``findings``: also score each finding of a
    volume (None: classes only)."""

    metrics: Sequence[str] = METRICS
    methods: Sequence[str] = ("gradcam",)
    baselines: Sequence[str] = BASELINE_EXPLANATIONS
    layers: object = "auto"
    classes: Sequence[int] | None = None
    step: float = 0.01
    baseline: str = "blur"
    sigma_mm: float = DEFAULT_SIGMA_MM
    neighbourhood_mm: float = DEFAULT_NEIGHBOURHOOD_MM
    road_percentages: Sequence[float] = DEFAULT_FRACTIONS
    road_noise: float = 0.01
    shell_mm: float = 3.0
    seed: int = 0
    batch_size: int = 32
    max_memory_gb: float | None = None
    device: str = "cpu"
    bootstrap: int = 2000
    gallery: int = 6
    findings: FindingRequest | None = None


@dataclass
class EvalResult:
    """Rows of metrics, curves per key ``(group, explanation, layer, curve)`` (group: the class name, or
    ``<class> findings``) and randomisation steps."""

    rows: list[dict] = field(default_factory=list)
    curves: dict[tuple[str, str, str, str], list[np.ndarray]] = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    randomization: list[dict] = field(default_factory=list)
    gallery: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def case_seed(seed: int, *keys: int) -> int:
    """A seed for one case/class derived from the run's seed (independent streams)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _explanations(
    model: LoadedModel,
    case: EvalCase,
    classes: list[int],
    layers: list[str],
    config: EvalConfig,
    regions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
    """Logits ``(C, *S)`` and CAMs ``(method, layer) -> (len(classes), *S)`` of one case, each class's
    target its ``regions`` ``(len(classes), *S)`` bool (default: its predicted mask)."""
    x = case.image[None].to(config.device)
    targets = None if regions is None else regions[None].to(config.device)
    maps, logits = {}, None
    for method in config.methods:
        result = seg_grad_cam(model.network, x, layers, classes, method, targets, upsample=True)
        logits = result.logits[0].float().cpu()
        for layer, m in result.items():
            maps[(method, layer)] = m[:, 0].float().cpu()
    if logits is None:
        with torch.no_grad():
            logits = model.network(x)[0].float().cpu()
    return logits, maps


@dataclass
class _ClassTarget:
    """One class of one case, or one finding (``finding``: its id): its scorer, the input
    ``(Cin, *S)``, the perturbation baseline (replaced within ``region`` ``(*S)`` bool only: 3D
    targets' neighbourhood, None: everywhere), the scores of both (``ends``, shared by all
    heatmaps) and a seed."""

    name: str
    scorer: ClassScorer
    image: torch.Tensor
    replacement: torch.Tensor
    ends: tuple[np.ndarray, np.ndarray] | None
    seed: int
    finding: int | None = None
    region: torch.Tensor | None = None

    @property
    def columns(self) -> dict:
        """The ``class`` (and ``finding``) of its rows."""
        return {"class": self.name} if self.finding is None else {"class": self.name, "finding": self.finding}


def _row(
    network: torch.nn.Module,
    case: EvalCase,
    target: _ClassTarget,
    mask: torch.Tensor,
    class_index: int,
    method: str,
    layer: str,
    heat: torch.Tensor,
    stages: list[str],
    config: EvalConfig,
    result: EvalResult,
) -> dict:
    """The metrics of one explanation ``heat`` ``(*S)`` of one class or finding of one case (curves,
    under its group, and randomisation steps of ``network`` go into ``result``)."""
    image = target.image
    row = {"case": case.name, **target.columns, "method": method, "layer": layer, "mask_voxels": int(mask.sum())}
    row.update(_score_explanation(target, heat, (group_name(row), method, layer), config, result))
    energy = heatmap_energy_fractions(heat.numpy(), mask.numpy(), case.spacing, config.shell_mm)
    row.update({k: v for k, v in energy.items() if k != "shell_mm"})
    if "randomization" in config.metrics and method in config.methods:
        steps = cascading_randomisation(
            network, image.to(config.device), layer, class_index, mask.to(config.device), stages, method, target.seed
        )
        result.randomization += [
            {"case": case.name, **target.columns, "method": method, "layer": layer, **s} for s in steps
        ]
        row["randomization_spearman"] = steps[-1]["spearman"]
        row["randomization_ssim"] = steps[-1]["ssim"]
    return row


def evaluate_case(
    model: LoadedModel,
    case: EvalCase,
    keys: tuple[int, ...],
    classes: list[int],
    layers: list[str],
    stages: list[str],
    config: EvalConfig,
    result: EvalResult,
) -> None:
    """Append the rows, curves and randomisation steps of one case to ``result``: its classes', then
    those of the findings it shows (each with its id, seeded apart); ``keys`` (the case's position)
    seed its random orderings."""
    network, spec = model.network, model.spec
    logits, cams = _explanations(model, case, classes, layers, config)
    labels = label_map(logits, 0)
    targets = [(Target(c), None, {key: m[ci] for key, m in cams.items()}) for ci, c in enumerate(classes)]
    shown = shown_findings(case)
    if shown:
        finding_classes = [f.target.class_index for f in shown]
        _, maps = _explanations(model, case, finding_classes, layers, config, shown_regions(case, shown))
        targets += [(f.target, f.id, {key: m[n] for key, m in maps.items()}) for n, f in enumerate(shown)]
    image = case.image.float()
    replacement = make_baseline(image, case.spacing, config.baseline, config.sigma_mm)
    curves = bool({"deletion", "insertion"} & set(config.metrics))
    budget = MemoryBudget(config.batch_size, config.max_memory_gb)  # shared by the case's targets
    scoring = scoring_network(network, config.device)
    gallery = {"case": case.name, "image": image[0].numpy(), "classes": {}}
    for target, finding, explanations in targets:
        c = target.class_index
        mask = target.mask(case, labels)
        if not mask.any():
            continue
        scorer = ClassScorer(scoring, c, mask, spec.output_activation, config.device, budget=budget)
        region = neighbourhood(mask, case.spacing, config.neighbourhood_mm) if curves else None
        end = replaced_within(image, replacement, region)
        ends = scorer(torch.stack([image, end])) if curves else None
        seed = case_seed(config.seed, *keys, c, *([] if finding is None else [finding]))
        scored = _ClassTarget(spec.labels[c], scorer, image, end, ends, seed, finding, region)
        for kind in config.baselines:
            explanations[(kind, NO_LAYER)] = baseline_heatmap(
                kind, network, image.to(config.device), c, mask.to(config.device), seed
            ).cpu()
        if finding is None:
            gallery["classes"][scored.name] = {
                "mask": mask.numpy(),
                "maps": {k: v.numpy() for k, v in explanations.items()},
            }
        for (method, layer), heat in explanations.items():
            result.rows.append(_row(network, case, scored, mask, c, method, layer, heat, stages, config, result))
    if len(result.gallery) < config.gallery and gallery["classes"]:
        result.gallery.append(gallery)


def _score_explanation(
    target: _ClassTarget, heat: torch.Tensor, key: tuple[str, str, str], config: EvalConfig, result: EvalResult
) -> dict[str, float]:
    """Deletion/Insertion and ROAD numbers of one heatmap ``(*S)``.

    ``key``: (class name, method, layer); the curves go into ``result.curves``.
    """
    row: dict[str, float] = {}
    if target.ends is not None:
        for kind, curve in deletion_insertion(
            target.scorer,
            target.image,
            target.replacement,
            heat,
            config.step,
            target.seed,
            target.ends,
            target.region,
        ).items():
            summary = curve.summary()
            row[f"{kind}_auc"] = summary["auc"]
            row[f"{kind}_auc_normalised"] = summary["auc_normalised"]
            row[f"{kind}_dice_auc"] = summary["dice_auc"]
            even = step_fractions(config.step)  # the mean curve's steps; a small target's are finer at the ends
            result.curves.setdefault((*key, kind), []).append(np.interp(even, curve.fractions, curve.probability))
            result.fractions[kind] = even
    if "road" in config.metrics:
        for order, curve in road(
            target.scorer, target.image, heat, config.road_percentages, config.road_noise, target.seed
        ).items():
            summary = curve.summary()
            row[f"road_{order}"] = summary["auc"]
            row[f"road_{order}_dice"] = summary["dice_auc"]
            result.curves.setdefault((*key, f"road_{order}"), []).append(curve.probability)
            result.fractions[f"road_{order}"] = curve.fractions
    return row


def evaluate(
    model: LoadedModel,
    cases: Sequence[EvalCase],
    config: EvalConfig,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    keys: Sequence[tuple[int, ...]] | None = None,
) -> EvalResult:
    """Evaluate every case; ``progress(done, total)`` after each; ``cancel()`` returning
    True stops before the next case (raises :class:`~SegGradCAMLib.errors.CancelledError`).
    ``keys``: each case's seed keys (default: its position)."""
    network = model.network.to(config.device).eval()
    classes = list(config.classes) if config.classes is not None else list(range(1, len(model.spec.labels)))
    example = cases[0].image[None].to(config.device) if cases else None
    layers = list(resolve_layers(network, model.chosen_layers(config.layers), example))
    stages = model.layers or decoder_layers(network, example)
    result = EvalResult()
    start = time.perf_counter()
    for index, case in enumerate(cases):
        if cancel is not None and cancel():
            raise CancelledError("Cancelled by the user.")
        evaluate_case(
            model, case, (index,) if keys is None else tuple(keys[index]), classes, layers, stages, config, result
        )
        if progress is not None:
            progress(index + 1, len(cases))
    result.seconds = time.perf_counter() - start
    return result


def evaluate_volume(
    pipeline: Pipeline,
    paths: Sequence[str],
    name: str,
    index: int,
    config: EvalConfig,
    max_slices: int,
    max_voxels: int = MAX_VOXELS,
) -> EvalResult:
    """One volume of a cohort, the ``index``-th, given as its channel files: its cases (see the
    pipeline's ``evaluation_cases``, with the volume's findings when ``config.findings`` asks; a
    file declaring more than ``max_voxels`` values is refused), named after ``name`` and seeded by
    ``index`` (so the result does not depend on which process or machine runs it, nor on the other
    volumes)."""
    model = pipeline.model
    classes = list(config.classes) if config.classes is not None else list(range(1, len(model.spec.labels)))
    seed = case_seed(config.seed, index)
    cases = pipeline.evaluation_cases(
        paths, name, classes, max_slices, seed, config.batch_size, config.device, max_voxels, config.findings
    )
    if not cases:
        return EvalResult()
    return evaluate(model, cases, config, keys=[(index, k) for k in range(len(cases))])


def merge_results(parts: Sequence[EvalResult], gallery: int) -> EvalResult:
    """The results of several volumes, in their order, as one (at most ``gallery`` gallery cases)."""
    merged = EvalResult()
    for part in parts:
        merged.rows += part.rows
        for key, curves in part.curves.items():
            merged.curves.setdefault(key, []).extend(curves)
        merged.fractions.update(part.fractions)
        merged.randomization += part.randomization
        merged.gallery += part.gallery[: gallery - len(merged.gallery)]
        merged.seconds += part.seconds
    return merged


RESULT_FILE = "evaluation.json"

GALLERY_FILE = "gallery.npz"


def save_result(result: EvalResult, folder: Path, with_gallery: bool) -> None:
    """``result`` as ``evaluation.json`` (+ ``gallery.npz``, read without pickle) in ``folder``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    arrays, gallery = {}, []
    for i, item in enumerate(result.gallery if with_gallery else []):
        arrays[f"{i}.image"] = item["image"]
        classes = {}
        for j, (name, entry) in enumerate(item["classes"].items()):
            arrays[f"{i}.{j}.mask"] = entry["mask"]
            for k, heat in enumerate(entry["maps"].values()):
                arrays[f"{i}.{j}.{k}"] = heat
            classes[name] = [list(key) for key in entry["maps"]]
        gallery.append({"case": item["case"], "classes": classes})
    if arrays:
        np.savez_compressed(folder / GALLERY_FILE, **arrays)
    content = {
        "rows": result.rows,
        "curves": [{"key": list(k), "curves": [c.tolist() for c in v]} for k, v in result.curves.items()],
        "fractions": {k: v.tolist() for k, v in result.fractions.items()},
        "randomization": result.randomization,
        "gallery": gallery,
        "seconds": result.seconds,
    }
    (folder / RESULT_FILE).write_text(json.dumps(content), encoding="utf-8")


def load_result(folder: Path) -> EvalResult:
    """What :func:`save_result` wrote."""
    import json

    content = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    result = EvalResult(rows=content["rows"], randomization=content["randomization"], seconds=content["seconds"])
    result.curves = {tuple(e["key"]): [np.asarray(c) for c in e["curves"]] for e in content["curves"]}
    result.fractions = {k: np.asarray(v) for k, v in content["fractions"].items()}
    if content["gallery"]:
        with np.load(folder / GALLERY_FILE, allow_pickle=False) as arrays:
            for i, item in enumerate(content["gallery"]):
                classes = {
                    name: {
                        "mask": arrays[f"{i}.{j}.mask"],
                        "maps": {tuple(key): arrays[f"{i}.{j}.{k}"] for k, key in enumerate(keys)},
                    }
                    for j, (name, keys) in enumerate(item["classes"].items())
                }
                result.gallery.append({"case": item["case"], "image": arrays[f"{i}.image"], "classes": classes})
    return result


def config_dict(config: EvalConfig) -> dict:
    """``config`` as JSON-ready values; ``findings`` (its size limits) only when asked, so that the
    fingerprints of earlier cohorts, which had no such field, still match."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    del values["findings"]
    if config.findings is not None:
        values["findings"] = {"min_finding_mm3": config.findings.min_mm3, "max_findings": config.findings.max_findings}
    return values
