"""ROAD: RemOve And Debias (Rong et al. 2022) with noisy linear imputation.

Removed voxels are imputed jointly: each takes the weighted mean of its
8 (2D) or 26 (3D) neighbours, known or imputed, with weights ``1 / |offset|^2``
(2D: 1/6 along the axes, 1/12 on the diagonals, as in the ROAD code). That is a
sparse, symmetric, diagonally dominant Laplace-like system ``A x = b``, solved
by conjugate gradients, after which a little Gaussian noise is added so that the
imputed region carries no tell-tale smoothness. MoRF removes the most relevant
voxels first (a faithful map makes the score fall fast); LeRF the least relevant
first (the score should stay up).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..selection import DEFAULT_FRACTIONS
from .deletion_insertion import ClassScorer, auc, rank_voxels

# A tiny pull of every imputed voxel towards the mean of the known voxels keeps the system
# solvable where a removed region touches no known voxel (e.g. all removed).
ANCHOR = 1e-6


def neighbour_weights(ndim: int) -> list[tuple[tuple[int, ...], float]]:
    """The 8 (2D) or 26 (3D) neighbour offsets with weights ``1/|o|^2``, summing to 1."""
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    raw = np.array([1.0 / sum(v * v for v in o) for o in offsets])
    return list(zip(offsets, (raw / raw.sum()).tolist()))


def imputation_system(values: np.ndarray, removed: np.ndarray):
    """The linear system of the imputation.

    Args:
        values: ``(Cin, *S)``; removed: ``(*S)`` bool.

    Returns:
        ``A`` (sparse ``(n, n)``), ``b`` ``(n, Cin)`` and the flat indices ``(n,)`` of
        the removed voxels, such that for each removed voxel ``i`` with in-bounds
        neighbours ``j``: ``sum_j w_ij (x_i - x_j) + ANCHOR (x_i - known mean) = 0``.
    """
    from scipy import sparse

    shape = np.array(removed.shape)
    flat_removed = removed.ravel()
    flat_values = values.reshape(values.shape[0], -1).astype(np.float64)
    index = np.flatnonzero(flat_removed)
    n = index.size
    position = np.full(flat_removed.size, -1, dtype=np.int64)
    position[index] = np.arange(n)
    coords = np.stack(np.unravel_index(index, removed.shape))
    diagonal = np.full(n, ANCHOR)
    known = flat_values[:, ~flat_removed] if n < flat_removed.size else flat_values
    b = np.tile(ANCHOR * known.mean(axis=1), (n, 1))
    rows, cols, entries = [], [], []
    for offset, weight in neighbour_weights(removed.ndim):
        neighbour = coords + np.array(offset)[:, None]
        inside = np.all((neighbour >= 0) & (neighbour < shape[:, None]), axis=0)
        i = np.flatnonzero(inside)
        j = np.ravel_multi_index(neighbour[:, inside], removed.shape)
        diagonal[i] += weight
        unknown = flat_removed[j]
        rows.append(i[unknown])
        cols.append(position[j[unknown]])
        entries.append(np.full(int(unknown.sum()), -weight))
        b[i[~unknown]] += weight * flat_values[:, j[~unknown]].T
    off_diagonal = sparse.csr_matrix(
        (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return (off_diagonal + sparse.diags(diagonal)).tocsr(), b, index


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor, noise: float = 0.01, seed: int = 0, rtol: float = 1e-8
) -> torch.Tensor:
    """Impute the removed voxels of ``image`` ``(Cin, *S)``; ``removed``: ``(*S)`` bool.

    ``noise`` is the standard deviation of the added noise as a fraction of the
    standard deviation of each channel's known voxels (0: plain linear imputation).
    """
    from scipy.sparse.linalg import LinearOperator, cg

    values = image.detach().cpu().numpy().astype(np.float64)
    mask = removed.detach().cpu().numpy().astype(bool)
    out = values.reshape(values.shape[0], -1).copy()
    if not mask.any():
        return image.clone()
    a, b, index = imputation_system(values, mask)
    preconditioner = 1.0 / a.diagonal()
    jacobi = LinearOperator(a.shape, matvec=lambda v: preconditioner * v)
    rng = np.random.default_rng(seed)
    known = out[:, ~mask.ravel()] if index.size < mask.size else out
    for c in range(values.shape[0]):
        # start from the mean of the known voxels: the removed values must not leak in
        start = np.full(index.size, known[c].mean())
        solution, _ = cg(a, b[:, c], x0=start, rtol=rtol, atol=0.0, maxiter=20 * index.size, M=jacobi)
        out[c, index] = solution + noise * known[c].std() * rng.standard_normal(index.size)
    return torch.from_numpy(out.reshape(values.shape).astype(np.float32))


@dataclass
class RoadCurve:
    """ROAD scores at removal fractions ``(T,)``, fraction 0 being the unperturbed input."""

    order: str
    fractions: np.ndarray
    probability: np.ndarray
    dice: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean score over ``[0, max fraction]`` (trapezoid), probability and Dice."""
        span = float(self.fractions[-1] - self.fractions[0])
        return {"auc": auc(self.probability, self.fractions) / span, "dice_auc": auc(self.dice, self.fractions) / span}


def road(
    scorer: ClassScorer,
    image: torch.Tensor,
    heatmap: torch.Tensor,
    percentages: Sequence[float] = DEFAULT_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    orders: Sequence[str] = ("morf", "lerf"),
) -> dict[str, RoadCurve]:
    """MoRF and/or LeRF curves for one heatmap. ``image``: ``(Cin, *S)``; ``heatmap``: ``(*S)``."""
    ranks = rank_voxels(heatmap, seed)
    total = ranks.numel()
    fractions = np.concatenate([[0.0], np.asarray(percentages, dtype=float)])
    curves = {}
    for order in orders:
        inputs = [image]
        for fraction in percentages:
            k = int(round(fraction * total))
            removed = ranks < k if order == "morf" else ranks >= total - k
            inputs.append(noisy_linear_imputation(image, removed, noise, seed))
        prob, dice = scorer(torch.stack(inputs))
        curves[order] = RoadCurve(order, fractions, prob, dice)
    return curves
