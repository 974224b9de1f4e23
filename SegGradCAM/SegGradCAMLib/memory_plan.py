"""What memory a run may take: the device's free memory, and the groups of targets (classes and
findings) whose maps are made at once.

An explanation holds each target's map on the network's grid while its windows are stitched. With
many targets (100 classes, a finding per lesion) or several layers those maps outgrow what the
network's own prediction holds, so the targets are explained in groups: one group's maps are made,
brought to the input grid and handed on (written) before the next group's are made. A group holds
at most as many bytes of maps as the logits the pass holds anyway (``C`` classes: ``C`` logit volumes,
so one layer's maps of every class fit in one group against float32 logits, of half of them against
nnU-Net's float16 ones), and never more than half the free memory; each further group runs the
network's windows again. The first group's pass also stitches the logits, so it takes the
remainder: the smallest group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import SegGradCAMError

GB = 10**9
# Maps that take less are made at once: running the windows or slices again costs more than that memory.
MIN_GROUP_BYTES = 256 * 10**6


@dataclass(frozen=True)
class ClassGroups:
    """``targets`` explained ``size`` at a time, each one's maps taking ``bytes_per_target``, and
    ``why`` that size."""

    targets: int
    size: int
    bytes_per_target: int
    why: str

    def ranges(self) -> list[range]:
        """The targets' positions, one range per group, in order; the first group is the smallest (the
        remainder): its pass also stitches the logits (the agreement check, the labels)."""
        first = self.targets % self.size or self.size
        bounds = [0, *range(first, self.targets + 1, self.size)]
        return [range(a, b) for a, b in zip(bounds, bounds[1:])]

    def report(self) -> dict:
        """As explain.json records it."""
        groups = len(self.ranges())
        return {
            "targets": self.targets,
            "size": self.size,
            "groups": groups,
            "bytes_per_target": self.bytes_per_target,
            "why": self.why,
        }


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


def _size(size: int) -> str:
    """Bytes as MB below a GB, else GB."""
    return f"{size / 10**6:.0f} MB" if size < GB else f"{size / GB:.2f} GB"


def plan_class_groups(
    targets: int, bytes_per_target: int, held_bytes: int, device: str, max_bytes: int | None = None
) -> ClassGroups:
    """How many of ``targets`` to explain at once when each one's maps take ``bytes_per_target``:
    as many as ``max_bytes`` holds (default ``held_bytes``, what the pass holds anyway, or
    :data:`MIN_GROUP_BYTES` where that is more), never more than half the free memory of ``device``;
    at least one, refused in one line when one target's maps do not fit in the free memory."""
    if max_bytes is not None:
        limit, what = max_bytes, "the limit given"
    elif held_bytes < MIN_GROUP_BYTES:
        limit, what = MIN_GROUP_BYTES, "what is made at once without a second pass"
    else:
        limit, what = held_bytes, "what the logits take"
    free = free_memory_bytes(device)
    if free is not None and bytes_per_target > free:
        raise SegGradCAMError(
            f"The maps of one class take about {bytes_per_target / GB:.2f} GB, more than the free memory "
            f"({free / GB:.2f} GB); explain fewer layers, free memory or use a machine with more."
        )
    if free is not None and free // 2 < limit:
        limit, what = free // 2, "half the free memory"
    size = max(1, min(targets, limit // max(bytes_per_target, 1)))
    why = f"the maps of one target take {_size(bytes_per_target)}; a group takes at most {what} ({_size(limit)})"
    return ClassGroups(targets, size, bytes_per_target, why)


def plan_map_groups(
    targets: int,
    volume: Sequence[int],
    layers: int,
    input_gradients: int,
    heads: int,
    max_bytes: int | None,
    region_bytes: int = 0,
    logit_bytes: int = 4,
) -> ClassGroups:
    """:func:`plan_class_groups` of ``targets`` on the CPU, each one's maps float32 volumes of
    spatial shape ``volume`` (one per layer, one per input channel's ``|input x gradient|``:
    ``input_gradients`` of them) and its region ``region_bytes`` a voxel, against the logits
    ``(heads, *volume)`` a pass holds, ``logit_bytes`` a value (float32: 4, nnU-Net's float16: 2)."""
    voxels = math.prod(volume)
    per_target = voxels * (4 * (layers + input_gradients) + region_bytes)
    return plan_class_groups(targets, per_target, voxels * logit_bytes * heads, "cpu", max_bytes)
