"""Where a layer's voxels lie on the input's grid, and resampling a layer's map onto the input grid.

Voxel ``i`` of a layer's output sits at the centre of its receptive field on the input: input
coordinate ``x = scale * i + offset`` along each axis (in input voxels). A strided convolution of
kernel 3 and padding 1 (MONAI's UNet, nnU-Net's encoders, HD-BET) keeps the centre of voxel 0 on input
voxel 0 (``offset = 0``): a layer at half resolution has its voxel ``i`` on input voxel ``2 i``. A 2x2
pooling shifts it by half an input voxel (``offset = (scale - 1) / 2``), which is what
``F.interpolate(..., align_corners=False)`` assumes for every network; used on the former it puts the
map ``(scale - 1) / 2`` input voxels off (half an input voxel on 2x, 3.5 voxels on 8x).

:class:`GridTrace` follows one forward pass: every convolution and pooling module maps the grid of
its input to the grid of its output, keyed by spatial shape; the first convolution to produce a shape
sets its grid (in a U-Net the encoder, whose grid the decoder's skip connections share), a pooling
only where no convolution produces that shape (residual blocks that pool their shortcut, as nnU-Net's
residual encoders do, keep the grid of their strided convolution). A shape the trace did not reach
gets the ``align_corners=False`` grid of its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

TRACED_MODULES = (  # every convolution and pooling: each maps its input's grid to its output's
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
)


@dataclass(frozen=True)
class Grid:
    """Input coordinate of a layer voxel: ``scale[a] * i + offset[a]`` along axis ``a``."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]


def identity_grid(ndim: int) -> Grid:
    """The input's own grid."""
    return Grid((1.0,) * ndim, (0.0,) * ndim)


def default_grid(shape: Sequence[int], size: Sequence[int]) -> Grid:
    """The grid ``F.interpolate(align_corners=False)`` assumes for ``shape`` resized to ``size``."""
    scale = tuple(s / n for s, n in zip(size, shape))
    return Grid(scale, tuple((f - 1) / 2 for f in scale))


def _per_axis(value, ndim: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def _output_grid(module: nn.Module, grid: Grid) -> Grid | None:
    """The grid of ``module``'s output given the grid of its input; None for string paddings
    other than ``"valid"`` with strides (PyTorch refuses those) and ``"same"`` (shape unchanged)."""
    ndim = len(grid.scale)
    kernel = _per_axis(module.kernel_size, ndim)
    stride = _per_axis(module.stride if module.stride is not None else kernel, ndim)
    if isinstance(module.padding, str):
        if module.padding != "valid":
            return None
    padding = _per_axis(0 if isinstance(module.padding, str) else module.padding, ndim)
    dilation = _per_axis(getattr(module, "dilation", 1), ndim)
    centre = [d * (k - 1) / 2 - p for k, p, d in zip(kernel, padding, dilation)]
    if getattr(module, "transposed", False):
        # output voxel o lies at input voxel (o - centre) / stride
        scale = tuple(f / s for f, s in zip(grid.scale, stride))
        offset = tuple(o - f * c / s for o, f, c, s in zip(grid.offset, grid.scale, centre, stride))
    else:
        # output voxel i is centred on input voxel stride * i + centre
        scale = tuple(f * s for f, s in zip(grid.scale, stride))
        offset = tuple(o + f * c for o, f, c in zip(grid.offset, grid.scale, centre))
    return Grid(scale, offset)


class GridTrace:
    """Context manager: the grid of every spatial shape one forward pass of ``network`` produces.

    Usage: ``with GridTrace(network, inputs.shape[2:]) as trace: network(inputs)``, then
    ``trace.grid(shape, size)``. Hooks are removed on exit, also on error.
    """

    def __init__(self, network: nn.Module, input_shape: Sequence[int]) -> None:
        self.network = network
        self.grids: dict[tuple[int, ...], Grid] = {tuple(input_shape): identity_grid(len(input_shape))}
        self._pooled: set[tuple[int, ...]] = set()  # grids set by a pooling (or a convolution of one)
        self._handles: list = []

    def _hook(self, module: nn.Module, args, output) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        source = tuple(args[0].shape[2:])
        grid = self.grids.get(source)
        shape = tuple(output.shape[2:])
        # a pooling, or a convolution of a pooled input, sets a grid that a convolution may replace
        pooling = not isinstance(module, nn.modules.conv._ConvNd) or source in self._pooled
        if (
            grid is None
            or len(shape) != len(grid.scale)
            or (shape in self.grids and (pooling or shape not in self._pooled))
        ):
            return
        out = _output_grid(module, grid)
        if out is not None:
            self.grids[shape] = out
            if pooling:
                self._pooled.add(shape)
            else:
                self._pooled.discard(shape)

    def __enter__(self) -> "GridTrace":
        self._handles = [
            m.register_forward_hook(self._hook) for m in self.network.modules() if isinstance(m, TRACED_MODULES)
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def grid(self, shape: Sequence[int], size: Sequence[int]) -> Grid:
        """The traced grid of a layer output of spatial ``shape``; else the default grid to ``size``."""
        return self.grids.get(tuple(shape)) or default_grid(shape, size)


def resample_to_input(maps: torch.Tensor, grid: Grid, size: Sequence[int]) -> torch.Tensor:
    """Maps ``(N, B, *s)`` on a layer's ``grid`` -> ``(N, B, *size)`` on the input grid: linear
    interpolation along each axis at layer coordinate ``(x - offset) / scale``, the edge voxels
    repeated beyond the layer's first and last voxel (as ``F.interpolate`` does)."""
    out = maps
    for axis, (n_out, scale, offset) in enumerate(zip(size, grid.scale, grid.offset)):
        dim = axis + 2
        n_in = out.shape[dim]
        if n_in == n_out and scale == 1 and offset == 0:
            continue
        x = torch.arange(n_out, dtype=torch.float64)  # on the CPU: some devices (MPS) have no float64
        u = ((x - offset) / scale).clamp(0, n_in - 1)
        low = u.floor().clamp(max=max(n_in - 2, 0)).long()
        high = (low + 1).clamp(max=n_in - 1)
        shape = [1] * out.ndim
        shape[dim] = n_out
        weight = (u - low).to(device=out.device, dtype=out.dtype).reshape(shape)
        low, high = low.to(out.device), high.to(out.device)
        out = out.index_select(dim, low) * (1 - weight) + out.index_select(dim, high) * weight
    return out
