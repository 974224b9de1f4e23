"""The memory of the perturbation metrics: how many perturbed inputs one network call takes.

What one input costs is measured on the first call for each input shape: the tensors alive at
once while the network and the scoring run on that input alone (counted op by op, on any
device), plus the perturbed input and its mask, with a margin for the allocator and the
libraries' workspaces (HD-BET on a 176×128×176 head: 2,332 MiB of tensors, 2,532 MiB more
resident memory). A call then takes as many inputs as the budget holds: ``--max-memory-gb``
(default: 1 GB on a GPU, 128 MB on the CPU, or one input's cost where that is more), never more than
the free memory, and at most ``--batch-size``; never as many as there are steps. On the CPU a call of
about 100 MB is the fastest per input (the shipped nnU-Net, one input costing 4.5, 20, 54 and 203 MB:
8, 4, 2 and 1 inputs a call; bench/RESULTS.md R20.4).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import SegGradCAMError
from ..memory_plan import GB, free_memory_bytes

DEFAULT_CALL_BYTES = 1 * GB  # larger calls are no faster: a call of this size keeps a GPU busy
CPU_CALL_BYTES = 128 * 10**6  # larger calls are slower per input on the CPU (module docstring)
MARGIN = 1.25  # the allocator and oneDNN/cuDNN workspaces beyond the tensors counted (HD-BET: 1.09)

Scores = TypeVar("Scores")


class _TensorPeak(TorchDispatchMode):
    """While active: the bytes of the tensors that operations create, alive at once at most
    (``peak``); a storage shared by views counts once."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: dict[int, list[int]] = {}  # storage address -> [bytes, tensors using it]
        self.now = self.peak = 0

    def _release(self, address: int) -> None:
        entry = self.alive[address]
        entry[1] -= 1
        if entry[1] == 0:
            del self.alive[address]
            self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                entry = self.alive.setdefault(storage.data_ptr(), [storage.nbytes(), 0])
                if entry[1] == 0:
                    self.now += entry[0]
                    self.peak = max(self.peak, self.now)
                entry[1] += 1
                weakref.finalize(tensor, self._release, storage.data_ptr())
        return out


@dataclass
class MemoryBudget:
    """How many inputs one network call of the scoring takes: at most ``batch_size``, and as
    many as ``max_gb`` (None: :data:`DEFAULT_CALL_BYTES`, :data:`CPU_CALL_BYTES` on the CPU, or one
    input's cost where more) and the free memory of the device hold. ``costs``: one input's bytes
    per input shape ``(Cin, *S)``; ``most_held``: the most inputs one call took so far."""

    batch_size: int = 32
    max_gb: float | None = None
    costs: dict[tuple[int, ...], int] = field(default_factory=dict)
    most_held: int = 0

    def measure(self, score: Callable[[torch.Tensor], Scores], one: torch.Tensor, device: str) -> Scores:
        """``score(one)`` for one input ``(1, Cin, *S)``, recording what an input of its shape
        costs; refuses, in one line, an input that the budget cannot hold (before more is spent)."""
        with _TensorPeak() as tensors:
            scores = score(one)
        shape = tuple(one.shape[1:])
        cost = int(MARGIN * (tensors.peak + one[0].numel() * (one.element_size() + 1)))
        limit, what = self._limit(cost, device)
        if cost > limit:
            remedy = "raise --max-memory-gb" if what.startswith("--") else "free memory or use a larger machine"
            raise SegGradCAMError(
                f"Scoring one perturbed input of shape {shape} needs about {cost / GB:.2f} GB, more than "
                f"{what} ({limit / GB:.2f} GB); {remedy}."
            )
        self.costs[shape] = cost
        self.most_held = max(self.most_held, 1)
        return scores

    def inputs_per_call(self, shape: tuple[int, ...], device: str) -> int:
        """How many inputs of ``shape`` (measured) one call takes now: at least one."""
        cost = self.costs[tuple(shape)]
        return max(1, min(self.batch_size, self._limit(cost, device)[0] // cost))

    def hold(self, inputs: int) -> None:
        """Note a call of ``inputs`` inputs."""
        self.most_held = max(self.most_held, inputs)

    def _limit(self, cost: int, device: str) -> tuple[int, str]:
        """The bytes a call may take, and what sets them."""
        if self.max_gb is not None:
            limit, what = int(self.max_gb * GB), f"--max-memory-gb {self.max_gb:g}"
        else:
            default = CPU_CALL_BYTES if torch.device(device).type == "cpu" else DEFAULT_CALL_BYTES
            limit, what = max(default, cost), "the default budget"
        free = free_memory_bytes(device)
        return (free, "the free memory") if free is not None and free < limit else (limit, what)
