"""Where a volume's voxels go on a model's grid: orientation, the slice axis of 2D models,
resampling to the model's spacing and its intensity normalisation, and back; with the checks a
volume must pass before a network sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import SegGradCAMError
from .models.spec import ModelSpec
from .preprocessing import Reorientation, normalize_intensity, resampled_shape, resize

Direction = np.ndarray | Sequence[Sequence[float]]
"""An ITK 3x3 direction: columns i, j, k of the voxel axes in LPS."""


@dataclass(frozen=True)
class ModelGrid:
    """Where a volume's voxels go on a model's grid.

    ``moved_grid``: the input grid in the model's axis order (for 2D models the
    slice axis first); ``shape``: the model grid after resampling; ``spacing``:
    its voxel size in mm, same axis order.
    """

    reorient: Reorientation
    slice_axis: int | None
    moved_grid: tuple[int, ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]

    @classmethod
    def of(
        cls, spec: ModelSpec, shape: Sequence[int], spacing: Sequence[float], direction: Direction | None
    ) -> "ModelGrid":
        """The grid of a model ``spec`` for a volume of ``shape`` ``(Z, Y, X)``, ``spacing`` (mm, array order)."""
        reorient = Reorientation()
        if spec.orientation is not None and direction is not None:
            reorient = Reorientation.between(direction, spec.orientation)
        moved = tuple(int(shape[p]) for p in reorient.perm)
        spacing_m = reorient.spacing(spacing)
        slice_axis = None
        if spec.spatial_dims == 2:
            slice_axis = spec.slice_axis
            moved = (moved[slice_axis],) + tuple(n for a, n in enumerate(moved) if a != slice_axis)
            spacing_m = (spacing_m[slice_axis],) + tuple(s for a, s in enumerate(spacing_m) if a != slice_axis)
        target_spacing, target_shape = spacing_m, moved
        if spec.spacing is not None:
            target_spacing = tuple(spec.spacing) if spec.spatial_dims == 3 else (spacing_m[0], *spec.spacing)
            target_shape = resampled_shape(moved, spacing_m, target_spacing)
        return cls(reorient, slice_axis, moved, tuple(target_shape), tuple(float(s) for s in target_spacing))

    def to_model(self, array: np.ndarray, labels: bool = False) -> torch.Tensor:
        """``(C, Z, Y, X)`` on the input grid -> ``(C, *shape)`` (linear, or nearest for labels)."""
        moved = self.reorient.apply(array)
        if self.slice_axis is not None:
            moved = np.moveaxis(moved, 1 + self.slice_axis, 1)
        return resize(torch.from_numpy(np.ascontiguousarray(moved)), self.shape, labels=labels)

    def to_input(self, array: torch.Tensor, labels: bool = False) -> np.ndarray:
        """Inverse of :meth:`to_model`: ``(C, *shape)`` on the model grid -> ``(C, Z, Y, X)`` on the input grid."""
        moved = resize(array, self.moved_grid, labels=labels).numpy()
        if self.slice_axis is not None:
            moved = np.moveaxis(moved, 1, 1 + self.slice_axis)
        return np.ascontiguousarray(self.reorient.undo(moved))


def prepare_input(
    spec: ModelSpec, image: np.ndarray, spacing: Sequence[float], direction: Direction | None
) -> tuple[torch.Tensor, ModelGrid]:
    """A volume ``(Cin, Z, Y, X)`` on the model's grid, normalised as the model declares."""
    grid = ModelGrid.of(spec, image.shape[1:], spacing, direction)
    x = grid.to_model(np.asarray(image, dtype=np.float32))
    return torch.from_numpy(normalize_intensity(x.numpy(), spec.normalization, spec.normalization_range)), grid


def check_volume(image: np.ndarray, spec: ModelSpec) -> None:
    """Raise a user-facing error for arrays a model cannot take. ``image``: ``(Cin, Z, Y, X)``."""
    if image.ndim != 4:
        raise SegGradCAMError(f"Expected a (channels, Z, Y, X) array; got shape {image.shape}.")
    spec.check_input_count(image.shape[0])
    for c, channel in enumerate(image):
        if not np.isfinite(channel).all():
            bad = int((~np.isfinite(channel)).sum())
            raise SegGradCAMError(f"Input volume {c + 1} has {bad} NaN/Inf voxels; fix or mask them first.")
        if channel.min() == channel.max():
            raise SegGradCAMError(
                f"Input volume {c + 1} is constant (all voxels {channel.flat[0]}); nothing to segment."
            )


def check_min_size(grid: Sequence[int], minimum: int) -> None:
    """Refuse volumes smaller than one cell of the network's coarsest level."""
    small = [n for n in grid if n < minimum]
    if small:
        raise SegGradCAMError(
            f"The volume is too small for this network: {tuple(grid)} voxels at the model's spacing, "
            f"at least {minimum} per axis needed."
        )
