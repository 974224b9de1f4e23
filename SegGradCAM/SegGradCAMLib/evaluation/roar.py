"""ROAR and KAR (Hooker et al. 2019) for segmentation heatmaps (``seggradcam roar``).

For each fraction ``t``, every image's pixels are ranked by a heatmap and either the
top ``t`` (ROAR, remove and retrain) or all but the top ``t`` (KAR, keep and retrain)
are replaced by the per-channel mean of the training images, in the training AND the
test images. The network is retrained from scratch on the modified training images
and its Dice per class is measured on the modified test images. The control is a
random ranking. Evidence-finding heatmaps make Dice fall faster than random under
ROAR and stay higher than random under KAR.

The ranking of a slice is the pixel-wise maximum over the foreground classes of the
base model's Seg-Grad-CAM maps (``gradcam`` or another method of
:data:`SegGradCAMLib.selection.CAM_METHODS`; default layer, upsampled), each class map divided by
its maximum in that slice (an explicit per-slice normalisation, so that every class
counts in the ranking; classes not predicted in a slice give zero maps). Ties (e.g.
slices where nothing is predicted) are broken at random.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..cam import seg_grad_cam
from ..demo import data as demo_data
from ..demo.training import dice_scores, predict_labels, train_network
from ..selection import CAM_METHODS, DEFAULT_FRACTIONS

EXPLAINERS = (*CAM_METHODS, "random")
MODES = ("roar", "kar")


@dataclass
class RoarConfig:
    """What a ROAR/KAR run retrains and measures (fractions in 0..1)."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    explainers: tuple[str, ...] = ("gradcam", "random")
    modes: tuple[str, ...] = MODES
    seeds: tuple[int, ...] = (0,)
    train_slices: int = 1600
    test_slices: int = 100
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 3e-3
    layer: str | Sequence[str] = "auto"
    threads: int = 1


def cam_ranking(
    network: nn.Module,
    images: np.ndarray,
    method: str = "gradcam",
    layer: str | Sequence[str] = "auto",
    classes: Sequence[int] = range(1, len(demo_data.LABELS)),
    batch_size: int = 32,
) -> np.ndarray:
    """Ranking maps ``(N, H, W)`` in 0..1 from the Seg-Grad-CAM maps of ``classes`` on ``images`` ``(N, C, H, W)``."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        maps = seg_grad_cam(network, x, layer, list(classes), method, upsample=True)
        m = next(iter(maps.values()))  # (classes, B, H, W)
        peak = m.flatten(2).amax(2)[..., None, None]
        out.append((m / peak.clamp_min(1e-12)).amax(0).numpy())
    return np.concatenate(out).astype(np.float32)


def degrade(
    images: np.ndarray, ranking: np.ndarray, fraction: float, mode: str, fill: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Replace pixels of ``images`` ``(N, C, H, W)`` by ``fill`` ``(C,)``: the top ``fraction`` of
    each image's ``ranking`` ``(N, H, W)`` (``mode="roar"``) or all the others (``"kar"``)."""
    n, _, h, w = images.shape
    count = int(round(fraction * h * w))
    flat = ranking.reshape(n, -1)
    order = np.lexsort((rng.random(flat.shape), flat), axis=-1)  # ascending, ties at random
    top = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(top, order[:, flat.shape[1] - count :], True, axis=1)
    replace = (top if mode == "roar" else ~top).reshape(n, 1, h, w)
    return np.where(replace, fill.reshape(1, -1, 1, 1), images).astype(np.float32)


def _retrain_and_score(train: demo_data.SliceSet, test: demo_data.SliceSet, config: RoarConfig, seed: int) -> dict:
    result = train_network(train, None, config.epochs, config.batch_size, config.learning_rate, seed)
    scores = dice_scores(predict_labels(result.network, test.images), test.labels)
    return {"dice": {k: round(v, 4) for k, v in scores.items()}, "train_seconds": round(result.seconds, 1)}


def _replaced(data: demo_data.SliceSet, images: np.ndarray) -> demo_data.SliceSet:
    return demo_data.SliceSet(images, data.labels, data.case, data.seed)


def run_roar(
    network: nn.Module,
    config: RoarConfig,
    out_json: Path | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """ROAR/KAR with the demo recipe: heatmaps of ``network`` (the base model) on
    ``config.train_slices`` training and ``config.test_slices`` held-out slices, then one
    retraining per seed, explainer, mode and fraction, plus an unmodified baseline per seed.

    The report is rewritten to ``out_json`` after every retraining (a partial run keeps its results).
    ``progress(stage, done, total)``: stage ``runs``, one step per retraining.
    """
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    train = demo_data.make_slice_set(demo_data.TRAIN_SEED, config.train_slices)
    test = demo_data.evaluation_set(config.test_slices)
    fill = train.images.mean(axis=(0, 2, 3))
    network.eval()
    rankings = _rankings(network, config, train, test)
    report = _new_report(config, train, test, fill, heatmap_seconds=round(time.perf_counter() - start, 1))
    jobs = [(seed, None, None, 0.0) for seed in config.seeds]
    jobs += [
        (seed, e, m, f)
        for seed in config.seeds
        for m in config.modes
        for e in config.explainers
        for f in config.fractions
    ]
    for i, job in enumerate(jobs, 1):
        if progress is not None:
            progress("runs", i - 1, len(jobs))
        entry, label = _run_job(job, train, test, rankings, fill, config, report)
        dice = ", ".join(f"{k} {v:.3f}" for k, v in entry["dice"].items())
        log(f"[{i}/{len(jobs)}] seed {job[0]} {label}: Dice {dice} ({entry['train_seconds']:.0f} s)")
        report["summary"] = mean_dice_over_seeds(report)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        if out_json is not None:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if progress is not None:
        progress("runs", len(jobs), len(jobs))
    return report


def _rankings(
    network: nn.Module, config: RoarConfig, train: demo_data.SliceSet, test: demo_data.SliceSet
) -> dict[str, list[np.ndarray]]:
    """Each explainer's ranking maps of the training and the test images: ``explainer -> [train, test]``."""
    rankings = {}
    for explainer in config.explainers:
        if explainer == "random":
            rng = np.random.default_rng(0)
            rankings[explainer] = [rng.random(s.labels.shape, dtype=np.float32) for s in (train, test)]
        else:
            rankings[explainer] = [cam_ranking(network, s.images, explainer, config.layer) for s in (train, test)]
    return rankings


def _new_report(
    config: RoarConfig, train: demo_data.SliceSet, test: demo_data.SliceSet, fill: np.ndarray, heatmap_seconds: float
) -> dict:
    """The report before any retraining: method, configuration, data and machine."""
    return {
        "method": "ROAR/KAR (Hooker et al. 2019): pixels replaced by the per-channel training mean "
        "in train and test images, retrained from scratch",
        "config": asdict(config),
        "data": {
            "train_seed": demo_data.TRAIN_SEED,
            "train_sha256": train.sha256(),
            "test_seed": demo_data.EVAL_SEED,
            "test_sha256": test.sha256(),
            "fill": fill.round(4).tolist(),
        },
        "heatmap_seconds": heatmap_seconds,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU, {config.threads} threads",
        "baseline": [],
        "runs": [],
    }


def _run_job(
    job: tuple,
    train: demo_data.SliceSet,
    test: demo_data.SliceSet,
    rankings: dict[str, list[np.ndarray]],
    fill: np.ndarray,
    config: RoarConfig,
    report: dict,
) -> tuple[dict, str]:
    """One retraining ``(seed, explainer, mode, fraction)`` (explainer None: the unmodified
    baseline), its entry appended to the report; returns the entry and its label."""
    seed, explainer, mode, fraction = job
    if explainer is None:
        entry = {"seed": seed, **_retrain_and_score(train, test, config, seed)}
        report["baseline"].append(entry)
        return entry, "baseline"
    rng = np.random.default_rng(seed)
    ranked = [
        _replaced(s, degrade(s.images, r, fraction, mode, fill, rng))
        for s, r in zip((train, test), rankings[explainer])
    ]
    entry = {
        "seed": seed,
        "explainer": explainer,
        "mode": mode,
        "fraction": fraction,
        **_retrain_and_score(*ranked, config, seed),
    }
    report["runs"].append(entry)
    return entry, f"{mode} {explainer} {fraction:.0%}"


def mean_dice_over_seeds(report: dict) -> dict:
    """Mean Dice over seeds: ``{mode: {explainer: {fraction: {class: dice}}}}`` plus the baseline,
    and ``<method>_minus_random_lesion_union`` per CAM method, mode and fraction."""

    def mean(entries: list[dict]) -> dict[str, float]:
        keys = entries[0]["dice"]
        return {k: round(float(np.mean([e["dice"][k] for e in entries])), 4) for k in keys}

    summary: dict = {"baseline": mean(report["baseline"]) if report["baseline"] else {}}
    for run in report["runs"]:
        summary.setdefault(run["mode"], {}).setdefault(run["explainer"], {}).setdefault(str(run["fraction"]), [])
    for mode, by_explainer in list(summary.items()):
        if mode == "baseline":
            continue
        for explainer, by_fraction in by_explainer.items():
            for fraction in by_fraction:
                by_fraction[fraction] = mean(
                    [
                        r
                        for r in report["runs"]
                        if r["mode"] == mode and r["explainer"] == explainer and str(r["fraction"]) == fraction
                    ]
                )
        for explainer in (e for e in by_explainer if e != "random" and "random" in by_explainer):
            common = [f for f in by_explainer[explainer] if f in by_explainer["random"]]
            summary.setdefault(f"{explainer}_minus_random_lesion_union", {})[mode] = {
                f: round(by_explainer[explainer][f]["lesion_union"] - by_explainer["random"][f]["lesion_union"], 4)
                for f in common
            }
    return summary


def plot_roar(report: dict, path: Path, classes: Sequence[str] | None = None) -> None:
    """Dice vs fraction, one panel per class (and the lesion union), one line per mode and explainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    classes = list(classes or summary["baseline"])
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.2), sharey=True, squeeze=False)
    styles = {"roar": "-", "kar": "--"}
    colours = {"gradcam": "tab:red", "hirescam": "tab:blue", "random": "tab:grey"}
    for ax, name in zip(axes[0], classes):
        for mode in (m for m in MODES if m in summary):
            for explainer, by_fraction in summary[mode].items():
                # the unmodified baseline is 0 % removed (ROAR) or 100 % kept (KAR)
                points = [(100 * float(f), by_fraction[f][name]) for f in by_fraction]
                points.append((0.0 if mode == "roar" else 100.0, summary["baseline"][name]))
                xs, ys = zip(*sorted(points))
                ax.plot(
                    xs,
                    ys,
                    styles[mode],
                    color=colours.get(explainer),
                    marker="o",
                    ms=3,
                    label=f"{mode.upper()} {explainer}",
                )
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("pixels replaced (ROAR) / kept (KAR), %")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test Dice")
    axes[0][-1].legend(fontsize=7)
    seeds = {m: sorted({r["seed"] for r in report["runs"] if r["mode"] == m}) for m in MODES if m in summary}
    seed_text = ", ".join(f"{m.upper()} {s}" for m, s in seeds.items())
    fig.suptitle(
        f"test Dice after retraining ({report['config']['epochs']} epochs, "
        f"{report['config']['train_slices']} slices); seeds {seed_text}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
