"""Statistics of an evaluation's rows: means with percentile-bootstrap confidence intervals,
paired differences against the baselines, mean curves and the randomisation summary."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NO_LAYER = "-"

# Columns of one row (case x class x explanation x layer); lower is better for
# deletion and ROAD MoRF, higher for insertion and ROAD LeRF.
METRIC_COLUMNS = (
    "deletion_auc",
    "deletion_auc_normalised",
    "deletion_dice_auc",
    "insertion_auc",
    "insertion_auc_normalised",
    "insertion_dice_auc",
    "road_morf",
    "road_lerf",
    "road_morf_dice",
    "road_lerf_dice",
    "energy_inside",
    "energy_shell",
    "energy_beyond",
    "randomization_spearman",
    "randomization_ssim",
)
POOLED = "all classes"
POOLED_FINDINGS = "all findings"


def group_name(row: dict) -> str:
    """The group a row (or randomisation step) is summarised in: its class, or ``<class> findings``
    for a finding's row (``evaluate --findings``), so findings never mix into their class."""
    return row["class"] if row.get("finding") is None else f"{row['class']} findings"


def explanation_name(method: str, layer: str) -> str:
    """A CAM method on a layer (``gradcam @ layer``), or a baseline's name."""
    return method if layer == NO_LAYER else f"{method} @ {layer}"


def format_stat(stat: dict | None) -> str:
    """``mean [low, high]`` of a :func:`~SegGradCAMLib.evaluation.statistics.bootstrap_ci` result, or a dash."""
    if not stat or not stat.get("n") or math.isnan(stat["mean"]):
        return "–"
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    cases: Sequence[str] | None = None,
) -> dict[str, float]:
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
    """Rows by (group, method, layer), plus the pooled ``all classes`` and ``all findings`` groups."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        pooled = POOLED if row.get("finding") is None else POOLED_FINDINGS
        groups.setdefault((group_name(row), row["method"], row["layer"]), []).append(row)
        groups.setdefault((pooled, row["method"], row["layer"]), []).append(row)
    return groups


def bootstrap_summary(rows: Sequence[dict], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Mean and case-level bootstrap CI of every metric column per (group, method, layer).

    Classes in order of appearance, then ``all classes`` (pooled); then the finding groups and ``all
    findings`` likewise; CAM methods before baselines.
    """
    summary = []
    for (name, method, layer), members in _groups(rows).items():
        entry = {"class": name, "method": method, "layer": layer, "n": len(members)}
        for column in METRIC_COLUMNS:
            if any(column in r for r in members):
                entry[column] = bootstrap_ci(
                    [r.get(column, np.nan) for r in members], resamples, seed=seed, cases=[r["case"] for r in members]
                )
        summary.append(entry)
    findings = {group_name(row) for row in rows if row.get("finding") is not None}
    names = list(dict.fromkeys(e["class"] for e in summary if e["class"] not in (POOLED, POOLED_FINDINGS)))
    order = [n for n in names if n not in findings] + [POOLED] + [n for n in names if n in findings] + [POOLED_FINDINGS]
    return sorted(summary, key=lambda e: (order.index(e["class"]), e["layer"] == NO_LAYER))


def compare(
    rows: Sequence[dict],
    columns: Sequence[str] = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"),
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Paired differences, CAM explanation minus baseline on the same case and class, pooled
    over classes (the findings' rows left out), with case-level bootstrap CIs: one dict per
    (method, layer, baseline) with a :func:`bootstrap_ci` result per column.
    """
    rows = [r for r in rows if r.get("finding") is None]
    by_key = {(r["case"], r["class"], r["method"], r["layer"]): r for r in rows}
    baselines = list(dict.fromkeys(r["method"] for r in rows if r["layer"] == NO_LAYER))
    explained = list(dict.fromkeys((r["method"], r["layer"]) for r in rows if r["layer"] != NO_LAYER))
    out = []
    for method, layer in explained:
        mine = [r for r in rows if (r["method"], r["layer"]) == (method, layer)]
        for other in baselines:
            entry = {"method": method, "layer": layer, "versus": other}
            for column in columns:
                pairs = [
                    (r["case"], r[column] - by_key[(r["case"], r["class"], other, NO_LAYER)][column])
                    for r in mine
                    if column in r and (r["case"], r["class"], other, NO_LAYER) in by_key
                ]
                if pairs:
                    entry[column] = bootstrap_ci(
                        [d for _, d in pairs], resamples, seed=seed, cases=[c for c, _ in pairs]
                    )
            out.append(entry)
    return out


def mean_curves(result) -> list[dict]:
    """Mean curve with a 95% band (mean +- 1.96 standard errors) per curve key of ``result`` (an
    :class:`~SegGradCAMLib.evaluation.scoring.EvalResult`)."""
    out = []
    for (name, method, layer, kind), curves in result.curves.items():
        stack = np.stack(curves)
        mean = stack.mean(axis=0)
        half = 1.96 * stack.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
        out.append(
            {
                "class": name,
                "method": method,
                "layer": layer,
                "curve": kind,
                "n": len(curves),
                "fractions": result.fractions[kind].tolist(),
                "mean": mean.tolist(),
                "low": (mean - half).tolist(),
                "high": (mean + half).tolist(),
            }
        )
    return out


def randomization_summary(steps: Sequence[dict]) -> list[dict]:
    """Mean Spearman/SSIM per (group, method, layer, cascade step), steps in cascade order."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for s in steps:
        groups.setdefault((group_name(s), s["method"], s["layer"], s["step"]), []).append(s)
    return [
        {
            "class": k[0],
            "method": k[1],
            "layer": k[2],
            "step": k[3],
            "n": len(v),
            "spearman": float(np.mean([s["spearman"] for s in v])),
            "ssim": float(np.mean([s["ssim"] for s in v])),
        }
        for k, v in groups.items()
    ]
