"""Evaluation outputs: metrics.json, metrics.csv, summary.md, curve plots, a heatmap gallery
and a self-contained report.html (images embedded, no external resources)."""

from __future__ import annotations

import base64
import csv
import html
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..volumes.files import safe_filename
from ..reports import EvaluationReport
from .scoring import config_dict
from .statistics import (
    METRIC_COLUMNS,
    bootstrap_summary,
    compare,
    explanation_name,
    format_stat,
    mean_curves,
    randomization_summary,
)

# Columns of the report's table: (metric, heading, better).
TABLE_COLUMNS = (
    ("deletion_auc", "Deletion AUC", "lower"),
    ("insertion_auc", "Insertion AUC", "higher"),
    ("road_morf", "ROAD MoRF", "lower"),
    ("road_lerf", "ROAD LeRF", "higher"),
    ("energy_inside", "energy in mask", "higher"),
    ("randomization_spearman", "Spearman after randomisation", "lower"),
)
CURVE_TITLES = {"deletion": "Deletion", "insertion": "Insertion", "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF"}


def write_tables(out: Path, report: EvaluationReport) -> None:
    """``metrics.json`` (everything) and ``metrics.csv`` (one row per case x class x method x layer;
    with findings, also per finding, its id in the ``finding`` column)."""
    report.write(out)
    finding = ["finding"] if any("finding" in row for row in report.rows) else []
    columns = ["case", "class", *finding, "method", "layer", "mask_voxels", *METRIC_COLUMNS]
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in report.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_curves(out: Path, curves: Sequence[dict]) -> list[Path]:
    """One PNG per class: mean Deletion / Insertion / ROAD curves with 95% bands, one line per explanation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in dict.fromkeys(c["class"] for c in curves):
        kinds = [k for k in CURVE_TITLES if any(c["class"] == name and c["curve"] == k for c in curves)]
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for curve in (c for c in curves if c["class"] == name and c["curve"] == kind):
                x = np.asarray(curve["fractions"]) * 100
                (line,) = ax.plot(
                    x,
                    curve["mean"],
                    label=explanation_name(curve["method"], curve["layer"]),
                    marker="o" if len(x) < 15 else None,
                    markersize=3,
                )
                ax.fill_between(x, curve["low"], curve["high"], color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(f"{CURVE_TITLES[kind]} — {name}", fontsize=10)
            ax.set_xlabel("voxels removed (%)" if kind != "insertion" else "voxels restored (%)")
            ax.set_ylabel("mean probability in the predicted mask")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"curves_{safe_filename(name)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_randomization(out: Path, summary: Sequence[dict]) -> Path | None:
    """Spearman and SSIM against the cascade step (head first), one line per class and explanation."""
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for key in dict.fromkeys((s["class"], s["method"], s["layer"]) for s in summary):
        steps = [s for s in summary if (s["class"], s["method"], s["layer"]) == key]
        for ax, measure in zip(axes, ("spearman", "ssim")):
            ax.plot(
                range(len(steps) + 1),
                [1.0] + [s[measure] for s in steps],
                marker="o",
                markersize=3,
                label=f"{key[0]}: {explanation_name(key[1], key[2])}",
            )
            ax.set_xticks(
                range(len(steps) + 1), ["original"] + [s["step"] for s in steps], rotation=30, fontsize=7, ha="right"
            )
    for ax, measure in zip(axes, ("Spearman rank correlation", "SSIM")):
        ax.set_title(f"Cascading randomisation: {measure}", fontsize=10)
        ax.set_ylim(-0.4, 1.05)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    path = out / "randomization.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_gallery(out: Path, gallery: Sequence[dict]) -> list[Path]:
    """Per case: image with each class's mask outline and every explanation's heatmap (mid-slice in 3D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "gallery"
    folder.mkdir(exist_ok=True)
    paths = []
    for item in gallery:
        classes = item["classes"]
        keys = list(next(iter(classes.values()))["maps"])
        fig, axes = plt.subplots(
            len(classes), len(keys), figsize=(2.2 * len(keys), 2.3 * len(classes)), squeeze=False, facecolor="black"
        )
        for row, (name, entry) in enumerate(classes.items()):
            mask = entry["mask"]
            z = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1))) if mask.ndim == 3 else None
            image = item["image"] if z is None else item["image"][z]
            for col, key in enumerate(keys):
                heat = entry["maps"][key] if z is None else entry["maps"][key][z]
                ax = axes[row][col]
                ax.imshow(image, cmap="gray", interpolation="nearest")
                top = float(heat.max())
                ax.imshow(
                    np.ma.masked_less_equal(heat / top if top > 0 else heat, 0.05),
                    cmap="inferno",
                    vmin=0,
                    vmax=1,
                    alpha=0.6,
                    interpolation="nearest",
                )
                ax.contour(mask if z is None else mask[z], levels=[0.5], colors="cyan", linewidths=0.7)
                ax.set_title(f"{name}\n{explanation_name(*key)}", color="white", fontsize=6)
                ax.axis("off")
        fig.suptitle(item["case"], color="white", fontsize=9)
        fig.tight_layout()
        path = folder / f"{safe_filename(item['case'])}.png"
        fig.savefig(path, dpi=80, facecolor="black")
        plt.close(fig)
        paths.append(path)
    return paths


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def verdict(stat: dict | None, better: str) -> str:
    """``better``/``worse`` when a paired difference's CI excludes 0 on that side, else ``n.s.``."""
    if not stat or not stat.get("n") or math.isnan(stat["mean"]):
        return ""
    sign = 1 if better == "higher" else -1
    if min(sign * stat["low"], sign * stat["high"]) > 0:
        return "better"
    if max(sign * stat["low"], sign * stat["high"]) < 0:
        return "worse"
    return "n.s."


def results_table(summary: Sequence[dict]) -> list[list[str]]:
    """Rows of the summary table: class, explanation, then ``mean [CI]`` per :data:`TABLE_COLUMNS`."""
    return [
        [entry["class"], explanation_name(entry["method"], entry["layer"])]
        + [format_stat(entry.get(column)) for column, _, _ in TABLE_COLUMNS]
        for entry in summary
    ]


def markdown_table(report: EvaluationReport) -> str:
    """The summary table and the paired comparisons as Markdown (``summary.md``)."""
    head = ["class", "explanation", *(f"{h} ({b} better)" for _, h, b in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in results_table(report.summary)]
    compared = [(c, h, b) for c, h, b in TABLE_COLUMNS if any(c in e for e in report.comparisons)]
    lines += [
        "",
        "| explanation | versus | " + " | ".join(f"Δ {h}" for _, h, _ in compared) + " |",
        "|" + "---|" * (2 + len(compared)),
    ]
    lines += [
        f"| {explanation_name(e['method'], e['layer'])} | {e['versus']} | "
        + " | ".join(f"{format_stat(e.get(c))} {verdict(e.get(c), b)}" for c, _, b in compared)
        + " |"
        for e in report.comparisons
    ]
    return "\n".join(lines) + "\n"


def write_html(out: Path, report: EvaluationReport, figures: Sequence[Path], gallery: Sequence[Path]) -> Path:
    """``report.html``: settings, summary table with CIs, paired comparisons, plots, gallery."""
    esc = html.escape
    header = "".join(f"<th>{esc(h)}<br><small>({b} is better)</small></th>" for _, h, b in TABLE_COLUMNS)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in results_table(report.summary)
    )
    compared = [(c, b) for c, _, b in TABLE_COLUMNS if any(c in e for e in report.comparisons)]
    comparisons = "".join(
        f"<tr><td>{esc(explanation_name(e['method'], e['layer']))}</td><td>{esc(e['versus'])}</td>"
        + "".join(f"<td>{esc(format_stat(e.get(c)))} {verdict(e.get(c), better)}</td>" for c, better in compared)
        + "</tr>"
        for e in report.comparisons
    )
    headings = {c: h for c, h, _ in TABLE_COLUMNS}
    compared_header = "".join(f"<th>{esc(headings[c])}</th>" for c, _ in compared)
    config = report.config
    settings = (
        f"model <b>{esc(report.model['name'])}</b>, data <code>{esc(str(report.data))}</code>, "
        f"{report.cases} cases, {len(report.rows)} rows; step {config['step']:.0%} of voxels (of a 3D target: of those "
        f"within {config.get('neighbourhood_mm', 0):g} mm of it, finer at both ends where it is smaller than a step), "
        f"perturbation baseline {esc(config['baseline'])} (sigma {config['sigma_mm']} mm), ROAD at "
        f"{', '.join(f'{p:.0%}' for p in config['road_percentages'])} with noise {config['road_noise']}, "
        f"seed {config['seed']}, {config['bootstrap']} bootstrap resamples; "
        f"{report.timings['evaluate_s']:.0f} s on {esc(report.device)}."
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SegGradCAM evaluation — {esc(report.model["name"])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }}
th {{ background: #eee; }}
small {{ color: #666; }}
img {{ max-width: 100%; margin: 0.5em 0; }}
</style></head><body>
<h1>Faithfulness of the explanations of {esc(report.model["name"])}</h1>
<p>{settings}</p>
<p>Scores: mean softmax probability of the class over its original predicted mask (fixed through each curve).
Deletion replaces the highest-ranked voxels first by the baseline; Insertion restores them into it; ROAD removes
them (MoRF) or the least relevant (LeRF) and imputes them by noisy linear imputation. Mean over cases with 95%
percentile-bootstrap intervals. A finding (<i>class</i> findings, <i>all findings</i>; with --findings) is scored
as its class is with its own component as the mask and target, and summarised apart from the classes.</p>
<h2>Summary</h2>
<table id="summary"><tr><th>class</th><th>explanation</th>{header}</tr>{body_rows}</table>
<h2>Paired differences against the baselines</h2>
<p>Mean difference, explanation minus baseline on the same case and class, all classes pooled (not the findings),
with 95% bootstrap intervals: negative is better for Deletion and MoRF, positive for Insertion and LeRF;
"better"/"worse" when the interval excludes 0, "n.s." when it does not.</p>
<table id="comparisons"><tr><th>explanation</th><th>versus</th>{compared_header}</tr>
{comparisons}</table>
<h2>Curves</h2>
{"".join(_embed(p) for p in figures)}
<h2>Gallery</h2>
<p>Heatmaps (inferno) over the first input channel; cyan: predicted mask of the class.</p>
{"".join(_embed(p) for p in gallery)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(
    out: Path, model, data: str, result, config, timings: dict, device: str, peak_memory_mb: dict[str, float]
) -> EvaluationReport:
    """Write every evaluation output into ``out``; returns the ``metrics.json`` content.

    ``model``: the :class:`~SegGradCAMLib.models.LoadedModel`; ``result``: an
    :class:`~SegGradCAMLib.evaluation.scoring.EvalResult` of ``config``; ``peak_memory_mb``: the
    scoring process's peak memory.
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    randomization = randomization_summary(result.randomization)
    report = EvaluationReport(
        model={"name": spec.name, "sha256": spec.sha256, "labels": spec.labels, "spatial_dims": spec.spatial_dims},
        data=data,
        cases=len({r["case"] for r in result.rows}),
        device=device,
        config=config_dict(config),
        summary=bootstrap_summary(result.rows, config.bootstrap, config.seed),
        comparisons=compare(result.rows, resamples=config.bootstrap, seed=config.seed),
        randomization=randomization,
        curves=mean_curves(result),
        rows=result.rows,
        randomization_steps=result.randomization,
        timings=timings,
        peak_memory_mb=peak_memory_mb,
    )
    figures = plot_curves(out, report.curves)
    randomization_plot = plot_randomization(out, randomization)
    if randomization_plot is not None:
        figures.append(randomization_plot)
    gallery = plot_gallery(out, result.gallery)
    timings["write_s"] = time.perf_counter() - start
    write_tables(out, report)
    (out / "summary.md").write_text(markdown_table(report), encoding="utf-8")
    write_html(out, report, figures, gallery)
    return report
