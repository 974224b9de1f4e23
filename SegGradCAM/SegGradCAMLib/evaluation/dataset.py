"""Faithfulness evaluation over a dataset: Deletion/Insertion, ROAD, baselines, randomisation.

Everything happens on the model's grid (oriented, resampled, normalised, padded),
one *case* at a time: a slice for 2D models, a volume for 3D models. Per case,
class and explanation (a CAM method on a layer, or a baseline: ``random``,
``mask``, ``gradient``) it records one row of metrics; summaries are means over
cases with percentile-bootstrap confidence intervals, and paired differences
against the baselines.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..cam import label_map, seg_grad_cam
from ..errors import CancelledError, SegGradCAMError
from ..layers import decoder_layers, resolve_layers
from ..models.spec import LoadedModel
from ..preprocessing import pad_end, padded_shape
from ..selection import CAM_METHODS, DEFAULT_FRACTIONS
from .deletion_insertion import BASELINES, DEFAULT_SIGMA_MM, ClassScorer, deletion_insertion, make_baseline
from .energy import heatmap_energy_fractions
from .road import road
from .sanity import BASELINE_EXPLANATIONS, baseline_heatmap, cascading_randomisation

METRICS = ("deletion", "insertion", "road", "randomization")
NO_LAYER = "-"
POOLED = "all classes"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DEMO_DATA = "demo"
# Columns of one row (case x class x explanation x layer); lower is better for
# deletion and ROAD MoRF, higher for insertion and ROAD LeRF.
METRIC_COLUMNS = (
    "deletion_auc", "deletion_auc_normalised", "deletion_dice_auc",
    "insertion_auc", "insertion_auc_normalised", "insertion_dice_auc",
    "road_morf", "road_lerf", "road_morf_dice", "road_lerf_dice",
    "energy_inside", "energy_shell", "energy_beyond",
    "randomization_spearman", "randomization_ssim",
)


@dataclass
class EvalCase:
    """One unit of evaluation on the model grid: ``image`` ``(Cin, *S)`` normalised, ``spacing`` in mm."""

    name: str
    image: torch.Tensor
    spacing: tuple[float, ...]


@dataclass
class EvalConfig:
    """What to measure and how. ``step``: fraction of voxels per Deletion/Insertion step."""

    metrics: Sequence[str] = METRICS
    methods: Sequence[str] = ("gradcam",)
    baselines: Sequence[str] = BASELINE_EXPLANATIONS
    layers: object = "auto"
    classes: Sequence[int] | None = None
    step: float = 0.01
    baseline: str = "blur"
    sigma_mm: float = DEFAULT_SIGMA_MM
    road_percentages: Sequence[float] = DEFAULT_FRACTIONS
    road_noise: float = 0.01
    shell_mm: float = 3.0
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    bootstrap: int = 2000
    gallery: int = 6

    def check(self) -> None:
        """Raise a user-facing error for unknown names."""
        for values, valid, what in ((self.metrics, METRICS, "metric"), (self.methods, CAM_METHODS, "method"),
                                    (self.baselines, BASELINE_EXPLANATIONS, "baseline explanation"),
                                    ([self.baseline], BASELINES, "perturbation baseline")):
            bad = [v for v in values if v not in valid]
            if bad:
                raise SegGradCAMError(f"Unknown {what} {', '.join(bad)}; choose from {', '.join(valid)}.")
        if not self.methods and not self.baselines:
            raise SegGradCAMError("Nothing to evaluate: give at least one method or baseline.")


@dataclass
class EvalResult:
    """Rows of metrics, curves per key ``(class name, explanation, layer, curve)`` and randomisation steps."""

    rows: list[dict] = field(default_factory=list)
    curves: dict[tuple[str, str, str, str], list[np.ndarray]] = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    randomization: list[dict] = field(default_factory=list)
    gallery: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def case_seed(seed: int, *keys: int) -> int:
    """A seed for one case/class derived from the run's seed (independent streams)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --- cases ------------------------------------------------------------------------------


def _predicted_labels(model: LoadedModel, images: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    """Argmax labels ``(N, *S)`` of ``images`` ``(N, Cin, *S)``."""
    parts = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            parts.append(label_map(model.network(images[start:start + batch_size].to(device))).cpu())
    return torch.cat(parts)


def cases_from_volume(model: LoadedModel, image: np.ndarray, spacing: Sequence[float],
                      direction: Sequence[Sequence[float]] | None, name: str, classes: Sequence[int],
                      batch_size: int = 32, device: str = "cpu") -> list[EvalCase]:
    """Cases of one volume ``(Cin, Z, Y, X)`` (spacing in mm, array order).

    3D models: the whole volume on the model grid, padded. 2D models: the slices in
    which the network predicts at least one of ``classes``.
    """
    from ..inference import check_volume, prepare_input

    spec = model.spec
    check_volume(image, spec)
    x, grid = prepare_input(spec, image, spacing, direction)
    if spec.spatial_dims == 3:
        x = pad_end(x, padded_shape(x.shape[1:], spec.divisible_by, spec.roi_size or spec.min_size))
        return [EvalCase(name, x, grid.spacing)]
    slices = x.permute(1, 0, 2, 3)  # (Z, Cin, Y, X)
    slices = pad_end(slices, padded_shape(slices.shape[2:], spec.divisible_by, spec.min_size))
    labels = _predicted_labels(model, slices, device, batch_size)
    present = torch.stack([(labels == c).flatten(1).any(1) for c in classes]).any(0)
    return [EvalCase(f"{name}[{z}]", slices[z], grid.spacing[1:]) for z in torch.nonzero(present).flatten().tolist()]


def check_scorable(model: LoadedModel) -> None:
    """The model's heatmaps can be scored (Deletion/Insertion): any model but an nnU-Net folder of a
    2D configuration or of overlapping regions (sigmoid outputs), which are not yet."""
    if model.nnunet is None:
        return
    if model.spec.spatial_dims != 3:
        raise SegGradCAMError(f"{model.spec.name} is a 2D nnU-Net configuration; scoring heatmaps "
                              "(--faithfulness, evaluate) needs a 3D one.")
    if model.nnunet.label_manager.has_regions:
        raise SegGradCAMError(f"{model.spec.name} predicts overlapping regions (sigmoid outputs); scoring its heatmaps "
                              "(--faithfulness, evaluate) is not available for region-based nnU-Net models yet.")


def nnunet_case(model: LoadedModel, paths: Sequence[str], name: str) -> EvalCase:
    """One volume of an nnU-Net model as nnU-Net reads and preprocesses it (its grid, its
    normalisation), padded at the end to a multiple of the network's total stride along each axis:
    ``(Cin, z, y, x)``. Scored in one pass over the whole volume (not in sliding windows)."""
    from ..inference_nnunet import preprocess

    check_scorable(model)
    manager = model.nnunet.configuration_manager
    data, _, _ = preprocess(model, paths)
    x = torch.from_numpy(data).float()
    strides = np.prod(manager.pool_op_kernel_sizes, axis=0)  # the network's total stride per axis
    return EvalCase(name, pad_end(x, padded_shape(x.shape[1:], strides)), tuple(float(s) for s in manager.spacing))


def data_entries(data: str) -> list[list[str]]:
    """Input volumes per case from a folder (one volume file per case), a list file (one case
    per line, channels separated by commas; ``#`` starts a comment), or one case: a volume
    file, or its channel files separated by commas."""
    parts = [part.strip() for part in data.split(",")]
    if all(part.lower().endswith(VOLUME_SUFFIXES) for part in parts):
        missing = [part for part in parts if not Path(part).is_file()]
        if missing:
            raise SegGradCAMError(f"Data not found: {', '.join(missing)}.")
        return [parts]
    path = Path(data)
    if not path.exists():
        raise SegGradCAMError(f"Data not found: {data} (give a folder of volumes, a list file, or '{DEMO_DATA}').")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        if not files:
            raise SegGradCAMError(f"Folder {data} holds no volume files ({', '.join(VOLUME_SUFFIXES)}).")
        return [[str(p)] for p in files]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise SegGradCAMError(f"Cannot read {data} as a list file (one case per line, channel files separated by "
                              f"commas); give a volume ({', '.join(VOLUME_SUFFIXES)}), a folder or a list file.") from None
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append([str((path.parent / part.strip()).resolve()) for part in line.split(",") if part.strip()])
    if not entries:
        raise SegGradCAMError(f"List file {data} names no volumes.")
    return entries


def demo_cases(model: LoadedModel, n_slices: int) -> list[EvalCase]:
    """The demo model's held-out evaluation slices (:func:`SegGradCAMLib.demo.data.evaluation_set`)."""
    from ..demo import data as demo_data

    if model.spec.in_channels != len(demo_data.CHANNELS) or model.spec.spatial_dims != 2:
        raise SegGradCAMError(
            f"The '{DEMO_DATA}' data set has {len(demo_data.CHANNELS)}-channel 2D slices; model {model.spec.name} "
            f"takes {model.spec.in_channels} channel(s) in {model.spec.spatial_dims}D."
        )
    slices = demo_data.evaluation_set(n_slices)
    spacing = (demo_data.SPACING_MM,) * 2
    return [EvalCase(f"demo-{i:03d}", torch.from_numpy(image), spacing) for i, image in enumerate(slices.images)]


def volume_cases(model: LoadedModel, paths: Sequence[str], name: str, classes: Sequence[int], max_slices: int,
                 seed: int, batch_size: int = 32, device: str = "cpu") -> list[EvalCase]:
    """The cases of one volume given as its channel files, named ``name`` (2D models: ``name[z]``);
    of a 2D model's slices at most ``max_slices``, drawn at random with ``seed`` (kept in order);
    nnU-Net models: :func:`nnunet_case`."""
    from ..volumes.files import read_channels

    if model.nnunet is not None:
        return [nnunet_case(model, paths, name)]
    volumes = read_channels(paths)
    reference = volumes[0]
    cases = cases_from_volume(model, np.stack([v.array for v in volumes]), tuple(reference.spacing)[::-1],
                              reference.direction, name, classes, batch_size, device)
    if len(cases) > max_slices:
        keep = np.sort(np.random.default_rng(seed).choice(len(cases), max_slices, replace=False))
        cases = [cases[i] for i in keep]
    return cases


# --- one case ------------------------------------------------------------------------------


def _explanations(model: LoadedModel, case: EvalCase, classes: list[int], layers: list[str],
                  config: EvalConfig) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
    """Logits ``(C, *S)`` and CAMs ``(method, layer) -> (len(classes), *S)`` of one case."""
    x = case.image[None].to(config.device)
    maps, logits = {}, None
    for method in config.methods:
        result = seg_grad_cam(model.network, x, layers, classes, method, upsample=True)
        logits = result.logits[0].float().cpu()
        for layer, m in result.items():
            maps[(method, layer)] = m[:, 0].float().cpu()
    if logits is None:
        with torch.no_grad():
            logits = model.network(x)[0].float().cpu()
    return logits, maps


@dataclass
class _ClassTarget:
    """One class of one case: its scorer, the input ``(Cin, *S)``, the perturbation
    baseline, the scores of both (``ends``, shared by all heatmaps) and a seed."""

    name: str
    scorer: ClassScorer
    image: torch.Tensor
    replacement: torch.Tensor
    ends: tuple[np.ndarray, np.ndarray] | None
    seed: int


def evaluate_case(model: LoadedModel, case: EvalCase, keys: tuple[int, ...], classes: list[int], layers: list[str],
                  stages: list[str], config: EvalConfig, result: EvalResult) -> None:
    """Append the rows, curves and randomisation steps of one case to ``result``; ``keys`` (the
    case's position) seed its random orderings."""
    network, spec = model.network, model.spec
    logits, cams = _explanations(model, case, classes, layers, config)
    labels = label_map(logits, 0)
    image = case.image.float()
    replacement = make_baseline(image, case.spacing, config.baseline, config.sigma_mm)
    curves = bool({"deletion", "insertion"} & set(config.metrics))
    gallery = {"case": case.name, "image": image[0].numpy(), "classes": {}}
    for ci, c in enumerate(classes):
        mask = labels == c
        if not mask.any():
            continue
        scorer = ClassScorer(network, c, mask, spec.output_activation, config.device, config.batch_size)
        ends = scorer(torch.stack([image, replacement])) if curves else None
        target = _ClassTarget(spec.labels[c], scorer, image, replacement, ends, case_seed(config.seed, *keys, c))
        explanations = {key: m[ci] for key, m in cams.items()}
        for kind in config.baselines:
            explanations[(kind, NO_LAYER)] = baseline_heatmap(kind, network, image.to(config.device),
                                                              c, mask.to(config.device), target.seed).cpu()
        gallery["classes"][target.name] = {"mask": mask.numpy(),
                                           "maps": {k: v.numpy() for k, v in explanations.items()}}
        for (method, layer), heat in explanations.items():
            row = {"case": case.name, "class": target.name, "method": method, "layer": layer,
                   "mask_voxels": int(mask.sum())}
            row.update(_score_explanation(target, heat, (target.name, method, layer), config, result))
            row.update({k: v for k, v in heatmap_energy_fractions(heat.numpy(), mask.numpy(), case.spacing,
                                                                   config.shell_mm).items() if k != "shell_mm"})
            if "randomization" in config.metrics and method in config.methods:
                steps = cascading_randomisation(network, image.to(config.device), layer, c, mask.to(config.device),
                                                stages, method, target.seed)
                result.randomization += [{"case": case.name, "class": target.name, "method": method, "layer": layer,
                                          **s} for s in steps]
                row["randomization_spearman"] = steps[-1]["spearman"]
                row["randomization_ssim"] = steps[-1]["ssim"]
            result.rows.append(row)
    if len(result.gallery) < config.gallery and gallery["classes"]:
        result.gallery.append(gallery)


def _score_explanation(target: _ClassTarget, heat: torch.Tensor, key: tuple[str, str, str], config: EvalConfig,
                       result: EvalResult) -> dict[str, float]:
    """Deletion/Insertion and ROAD numbers of one heatmap ``(*S)``.

    ``key``: (class name, method, layer); the curves go into ``result.curves``.
    """
    row: dict[str, float] = {}
    if target.ends is not None:
        for kind, curve in deletion_insertion(target.scorer, target.image, target.replacement, heat, config.step,
                                              target.seed, config.batch_size, target.ends).items():
            summary = curve.summary()
            row[f"{kind}_auc"] = summary["auc"]
            row[f"{kind}_auc_normalised"] = summary["auc_normalised"]
            row[f"{kind}_dice_auc"] = summary["dice_auc"]
            result.curves.setdefault((*key, kind), []).append(curve.probability)
            result.fractions[kind] = curve.fractions
    if "road" in config.metrics:
        for order, curve in road(target.scorer, target.image, heat, config.road_percentages, config.road_noise,
                                 target.seed).items():
            summary = curve.summary()
            row[f"road_{order}"] = summary["auc"]
            row[f"road_{order}_dice"] = summary["dice_auc"]
            result.curves.setdefault((*key, f"road_{order}"), []).append(curve.probability)
            result.fractions[f"road_{order}"] = curve.fractions
    return row


def evaluate(model: LoadedModel, cases: Sequence[EvalCase], config: EvalConfig,
             progress: Callable[[int, int], None] | None = None,
             cancel: Callable[[], bool] | None = None, keys: Sequence[tuple[int, ...]] | None = None) -> EvalResult:
    """Evaluate every case; ``progress(done, total)`` after each; ``cancel()`` returning
    True stops before the next case (raises :class:`~SegGradCAMLib.errors.CancelledError`).
    ``keys``: each case's seed keys (default: its position)."""
    config.check()
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
        evaluate_case(model, case, (index,) if keys is None else tuple(keys[index]), classes, layers, stages,
                      config, result)
        if progress is not None:
            progress(index + 1, len(cases))
    result.seconds = time.perf_counter() - start
    return result


def evaluate_volume(model: LoadedModel, paths: Sequence[str], name: str, index: int, config: EvalConfig,
                    max_slices: int) -> EvalResult:
    """One volume of a cohort, the ``index``-th, given as its channel files: its cases (see
    :func:`volume_cases`), named after ``name`` and seeded by ``index`` (so the result does not
    depend on which process or machine runs it, nor on the other volumes)."""
    classes = list(config.classes) if config.classes is not None else list(range(1, len(model.spec.labels)))
    cases = volume_cases(model, paths, name, classes, max_slices, case_seed(config.seed, index), config.batch_size,
                         config.device)
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
        merged.gallery += part.gallery[:gallery - len(merged.gallery)]
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
    content = {"rows": result.rows, "curves": [{"key": list(k), "curves": [c.tolist() for c in v]}
                                                for k, v in result.curves.items()],
               "fractions": {k: v.tolist() for k, v in result.fractions.items()},
               "randomization": result.randomization, "gallery": gallery, "seconds": result.seconds}
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
                classes = {name: {"mask": arrays[f"{i}.{j}.mask"],
                                  "maps": {tuple(key): arrays[f"{i}.{j}.{k}"] for k, key in enumerate(keys)}}
                           for j, (name, keys) in enumerate(item["classes"].items())}
                result.gallery.append({"case": item["case"], "image": arrays[f"{i}.image"], "classes": classes})
    return result


# --- statistics ------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0,
                 cases: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of ``values`` with a percentile-bootstrap confidence interval (NaNs dropped).

    With ``cases`` (one id per value) whole cases are resampled, so that several
    values from one case (e.g. its classes) do not count as independent.
    """
    v = np.asarray(values, dtype=float)
    ids = np.asarray(cases if cases is not None else np.arange(v.size))
    keep = np.isfinite(v)
    v, ids = v[keep], ids[keep]
    if v.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    _, group = np.unique(ids, return_inverse=True)
    sums, counts = np.bincount(group, weights=v), np.bincount(group).astype(float)
    draw = np.random.default_rng(seed).integers(0, sums.size, (resamples, sums.size))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high), "n": int(v.size)}


def _groups(rows: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Rows by (class, method, layer), plus the pooled ``all classes`` group."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["class"], row["method"], row["layer"]), []).append(row)
        groups.setdefault((POOLED, row["method"], row["layer"]), []).append(row)
    return groups


def bootstrap_summary(rows: Sequence[dict], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Mean and case-level bootstrap CI of every metric column per (class, method, layer).

    Classes in order of appearance, ``all classes`` (pooled) last; CAM methods before baselines.
    """
    summary = []
    for (name, method, layer), members in _groups(rows).items():
        entry = {"class": name, "method": method, "layer": layer, "n": len(members)}
        for column in METRIC_COLUMNS:
            if any(column in r for r in members):
                entry[column] = bootstrap_ci([r.get(column, np.nan) for r in members], resamples, seed=seed,
                                             cases=[r["case"] for r in members])
        summary.append(entry)
    classes = list(dict.fromkeys(e["class"] for e in summary if e["class"] != POOLED))
    classes.append(POOLED)
    return sorted(summary, key=lambda e: (classes.index(e["class"]), e["layer"] == NO_LAYER))


def compare(rows: Sequence[dict], columns: Sequence[str] = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"),
            resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Paired differences, CAM explanation minus baseline on the same case and class, pooled
    over classes, with case-level bootstrap CIs: one dict per (method, layer, baseline) with
    a :func:`bootstrap_ci` result per column.
    """
    by_key = {(r["case"], r["class"], r["method"], r["layer"]): r for r in rows}
    baselines = list(dict.fromkeys(r["method"] for r in rows if r["layer"] == NO_LAYER))
    explained = list(dict.fromkeys((r["method"], r["layer"]) for r in rows if r["layer"] != NO_LAYER))
    out = []
    for method, layer in explained:
        mine = [r for r in rows if (r["method"], r["layer"]) == (method, layer)]
        for other in baselines:
            entry = {"method": method, "layer": layer, "versus": other}
            for column in columns:
                pairs = [(r["case"], r[column] - by_key[(r["case"], r["class"], other, NO_LAYER)][column])
                         for r in mine if column in r and (r["case"], r["class"], other, NO_LAYER) in by_key]
                if pairs:
                    entry[column] = bootstrap_ci([d for _, d in pairs], resamples, seed=seed,
                                                 cases=[c for c, _ in pairs])
            out.append(entry)
    return out


def mean_curves(result: EvalResult) -> list[dict]:
    """Mean curve with a 95% band (mean +- 1.96 standard errors) per curve key."""
    out = []
    for (name, method, layer, kind), curves in result.curves.items():
        stack = np.stack(curves)
        mean = stack.mean(axis=0)
        half = 1.96 * stack.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
        out.append({"class": name, "method": method, "layer": layer, "curve": kind, "n": len(curves),
                    "fractions": result.fractions[kind].tolist(), "mean": mean.tolist(),
                    "low": (mean - half).tolist(), "high": (mean + half).tolist()})
    return out


def randomization_summary(steps: Sequence[dict]) -> list[dict]:
    """Mean Spearman/SSIM per (class, method, layer, cascade step), steps in cascade order."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for s in steps:
        groups.setdefault((s["class"], s["method"], s["layer"], s["step"]), []).append(s)
    return [{"class": k[0], "method": k[1], "layer": k[2], "step": k[3], "n": len(v),
             "spearman": float(np.mean([s["spearman"] for s in v])), "ssim": float(np.mean([s["ssim"] for s in v]))}
            for k, v in groups.items()]


def config_dict(config: EvalConfig) -> dict:
    """``config`` as JSON-ready values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
