"""Simple statistics of a heatmap against a mask: where is the evidence?"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def heatmap_energy_fractions(
    heatmap: np.ndarray, mask: np.ndarray, spacing: Sequence[float], shell_mm: float = 3.0
) -> dict[str, float]:
    """Fractions of heatmap energy (sum of values) inside ``mask``, in a shell of ``shell_mm``
    around it, and beyond. ``heatmap``, ``mask``: ``(Z, Y, X)``; ``spacing`` in array order (mm).
    """
    from scipy import ndimage

    total = float(heatmap.sum(dtype=np.float64))  # float64: the parts add up to at most the total
    if total <= 0:
        return {"energy_inside": 0.0, "energy_shell": 0.0, "energy_beyond": 0.0, "shell_mm": shell_mm}
    mask = mask.astype(bool)
    if mask.any():
        distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
        shell = (distance > 0) & (distance <= shell_mm)
    else:
        shell = np.zeros_like(mask)
    inside = float(heatmap[mask].sum(dtype=np.float64)) / total
    near = float(heatmap[shell].sum(dtype=np.float64)) / total
    return {
        "energy_inside": inside,
        "energy_shell": near,
        "energy_beyond": max(0.0, 1.0 - inside - near),
        "shell_mm": shell_mm,
    }
