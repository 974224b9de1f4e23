"""Overview figure: mid-slices in three planes, segmentation outline and heatmap overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..preprocessing import Reorientation

# ITK identity direction: i -> Left, j -> Posterior, k -> Superior.
LPS = np.eye(3)


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of an LPS-ordered ``(S, P, L)`` array, display-ready."""
    k, j, i = centre
    axial = volume[k]  # rows posterior-down, columns to patient left (radiological)
    coronal = volume[:, j, :][::-1]  # superior up
    sagittal = volume[:, :, i][::-1]  # superior up, anterior left
    return [axial, coronal, sagittal]


def save_overview(
    path: Path,
    image: np.ndarray,
    labels: np.ndarray,
    rows: Sequence[tuple[str, int, np.ndarray]],
    spacing: Sequence[float],
    direction: np.ndarray,
    title: str = "",
) -> None:
    """Write a PNG with one row per heatmap (class/layer) and three plane columns.

    image, labels: ``(Z, Y, X)``; rows: (title, class index, heatmap ``(Z, Y, X)`` in 0..1),
    each row outlines its own class;
    spacing ITK order (x, y, z); direction ITK 3x3.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reorient = Reorientation.between(direction, LPS)
    image, labels = reorient.apply(image[None])[0], reorient.apply(labels[None])[0]
    rows = [(name, c, reorient.apply(h[None])[0]) for name, c, h in rows] or [("segmentation", -1, None)]
    zyx_spacing = reorient.spacing(tuple(spacing)[::-1])
    first = rows[0][1] if rows and rows[0][1] >= 0 else None
    foreground = np.argwhere(labels == first if first is not None else labels > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.array(labels.shape) // 2
    aspects = [zyx_spacing[1] / zyx_spacing[2], zyx_spacing[0] / zyx_spacing[2], zyx_spacing[0] / zyx_spacing[1]]
    low, high = np.percentile(image, (1, 99.5))
    fig, axes = plt.subplots(len(rows), 3, figsize=(11, 3.7 * len(rows)), squeeze=False, facecolor="black")
    for row, (name, label, heat) in enumerate(rows):
        mask = labels == label if label >= 0 else labels > 0
        planes = zip(
            _planes(image, centre),
            _planes(mask, centre),
            _planes(heat, centre) if heat is not None else [None] * 3,
            aspects,
            ("axial", "coronal", "sagittal"),
        )
        for col, (img, lab, hm, aspect, plane) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            if hm is not None:
                overlay = np.ma.masked_less(hm, 0.05)
                shown = ax.imshow(overlay, cmap="inferno", vmin=0, vmax=1, alpha=0.6, aspect=aspect)
            if lab.any():
                ax.contour(lab, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{name} — {plane}", color="white", fontsize=9)
            ax.axis("off")
        if heat is not None:
            bar = fig.colorbar(shown, ax=axes[row].tolist(), fraction=0.02, pad=0.01)
            bar.ax.tick_params(colors="white", labelsize=7)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
