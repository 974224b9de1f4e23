"""Threads, devices and memory of a run, as recorded in its report."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


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


def free_memory_bytes(device: str) -> int | None:
    """Memory a run may still take on ``device``, in bytes: CUDA's free memory and what torch
    holds unused; else the system's available memory (Linux's MemAvailable, lowered to what this
    cgroup's limit leaves); None where unknown."""
    if device.startswith("cuda"):
        import torch

        cuda = torch.device(device)
        return torch.cuda.mem_get_info(cuda)[0] + torch.cuda.memory_reserved(cuda) - torch.cuda.memory_allocated(cuda)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii")))
    except (OSError, ValueError):
        pass
    return free
