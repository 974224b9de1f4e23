"""MONAI's sliding windows as SegGradCAM runs them: the overlap and Gaussian weighting of
``sliding_window_inference``, and what MONAI does to a volume smaller than a window."""

from __future__ import annotations

from typing import Sequence

OVERLAP = 0.5
SIGMA_SCALE = 0.125


def monai_padding(shape: Sequence[int], roi: Sequence[int]) -> list[int]:
    """``F.pad`` widths (last axis first) that ``sliding_window_inference`` gives a
    volume of spatial ``shape`` smaller than ``roi``: the missing voxels split in two,
    the odd one at the end (as MONAI computes ``pad_size``)."""
    pads: list[int] = []
    for n, r in zip(reversed(tuple(shape)), reversed(tuple(roi))):
        missing = max(int(r) - int(n), 0)
        pads += [missing // 2, missing - missing // 2]
    return pads


def monai_windows(shape: Sequence[int], roi: Sequence[int]) -> int:
    """How many windows MONAI's ``sliding_window_inference`` takes over a volume of spatial ``shape``."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval  # private MONAI helper: its own scan, to count windows

    scanned = tuple(max(n, r) for n, r in zip(shape, roi))  # MONAI's image_size, after its padding
    interval = _get_scan_interval(scanned, roi, len(roi), (OVERLAP,) * len(roi))
    return len(dense_patch_slices(scanned, roi, interval))
