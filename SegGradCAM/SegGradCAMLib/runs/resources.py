"""Threads, devices and memory of a run, as recorded in its report."""

from __future__ import annotations

import resource
import sys


def set_threads(threads: int) -> int:
    """Set torch's CPU threads when ``threads`` > 0 (checked >= 0 by the options); return the number in use."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process (and peak GPU memory allocated by torch on
    a CUDA ``device``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peaks = {"resident": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if device.startswith("cuda"):
        import torch

        peaks["gpu"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peaks
