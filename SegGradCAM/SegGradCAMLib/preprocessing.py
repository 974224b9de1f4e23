"""Array preparation for a model: orientation, resampling, intensity normalisation, padding.

Arrays are ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) in the storage order of a
SimpleITK/ITK image: axis 0 = k, 1 = j, 2 = i. Directions are ITK (LPS) 3x3
matrices whose columns are the i, j, k axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from .errors import SegGradCAMError


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that bring an array to a model's orientation.

    ``oriented = flip(transpose(array, perm), flips)``; :meth:`undo` inverts it.
    ``perm`` and ``flips`` refer to the 3 spatial axes (array order).
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def between(cls, direction: npt.ArrayLike, target: npt.ArrayLike) -> "Reorientation":
        """The closest axis permutation/flip mapping ``direction`` onto ``target``."""
        src = np.asarray(direction, dtype=float).reshape(3, 3)[:, ::-1]  # columns in array order k, j, i
        tgt = np.asarray(target, dtype=float).reshape(3, 3)[:, ::-1]
        dots = tgt.T @ src  # [target axis, source axis]
        p0, p1, p2 = (int(a) for a in np.argmax(np.abs(dots), axis=1))
        if sorted((p0, p1, p2)) != [0, 1, 2]:
            raise SegGradCAMError("The volume's direction is too oblique to match the model's orientation.")
        f0, f1, f2 = (bool(dots[b, p] < 0) for b, p in enumerate((p0, p1, p2)))
        return cls((p0, p1, p2), (f0, f1, f2))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``(..., Z, Y, X)`` -> reoriented ``(..., Z', Y', X')``."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        axes = tuple(lead + b for b in range(3) if self.flips[b])
        return np.flip(out, axes) if axes else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply`."""
        lead = array.ndim - 3
        axes = tuple(lead + b for b in range(3) if self.flips[b])
        out = np.flip(array, axes) if axes else array
        inverse = np.argsort(self.perm)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(p) for p in inverse))

    def spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        return tuple(float(spacing[p]) for p in self.perm)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Grid size covering the same extent at ``target`` spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resize(array: torch.Tensor, size: Sequence[int], labels: bool = False) -> torch.Tensor:
    """Resize ``(N, *S)`` to ``(N, *size)``: linear for values, nearest for labels.

    Voxel centres are matched (align_corners=False / nearest-exact), so resizing
    back to the original size returns to the same grid.
    """
    if tuple(array.shape[1:]) == tuple(size):
        return array
    mode = "nearest-exact" if labels else {2: "bilinear", 3: "trilinear"}[len(size)]
    kwargs = {} if labels else {"align_corners": False}
    src = array[None].float()
    return F.interpolate(src, size=tuple(size), mode=mode, **kwargs)[0].to(array.dtype)


def normalize_intensity(image: np.ndarray, method: str, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Per-channel intensity normalisation of ``(C, *S)`` (float32 result)."""
    out = np.empty(image.shape, dtype=np.float32)
    for c, channel in enumerate(image.astype(np.float32)):
        if method == "zscore":
            out[c] = (channel - channel.mean()) / max(float(channel.std()), 1e-8)
        elif method == "zscore_nonzero":
            inside = channel[channel != 0]
            mean, std = (inside.mean(), inside.std()) if inside.size else (0.0, 1.0)
            out[c] = np.where(channel != 0, (channel - mean) / max(float(std), 1e-8), 0)
        elif method == "percentile":
            low, high = np.percentile(channel, percentiles)
            out[c] = np.clip((channel - low) / max(float(high - low), 1e-8), 0, 1)
        elif method == "minmax":
            low, high = channel.min(), channel.max()
            out[c] = (channel - low) / max(float(high - low), 1e-8)
        elif method == "none":
            out[c] = channel
        else:
            raise SegGradCAMError(f"Unknown normalisation {method!r}.")
    return out


def padded_shape(
    shape: Sequence[int], divisible_by: int | Sequence[int], min_size: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Smallest shape >= ``shape`` and ``min_size`` whose sizes are multiples of ``divisible_by``
    (one number for every axis, or one per axis)."""
    minimum = min_size if min_size is not None else (1,) * len(shape)
    factors = [divisible_by] * len(shape) if isinstance(divisible_by, (int, np.integer)) else list(divisible_by)
    return tuple(int(np.ceil(max(n, m) / f) * f) for n, m, f in zip(shape, minimum, factors))


def pad_end(array: torch.Tensor, shape: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad the last ``len(shape)`` axes at their upper end up to ``shape``."""
    pads: list[int] = []
    for n, target in zip(reversed(array.shape[-len(shape) :]), reversed(tuple(shape))):
        pads += [0, int(target) - int(n)]
    return F.pad(array, pads, value=value) if any(pads) else array
