"""Issue 22.6: the perturbed inputs of Deletion/Insertion go through the network as many at a time
as a memory budget holds (``--max-memory-gb``, the free memory), never as many as there are steps;
the results are those of one input per call. A toy 3D network stands in for HD-BET."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.evaluation import memory
from SegGradCAMLib.evaluation.deletion_insertion import ClassScorer, deletion_insertion, make_baseline
from SegGradCAMLib.evaluation.memory import GB, MemoryBudget

SHAPE = (1, 16, 16, 16)


@pytest.fixture()
def case():
    """A small 3D network (32 feature channels: one input's forward costs ~100 times the input), an
    image ``(1, 16, 16, 16)``, its blur and its predicted class-1 mask."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv3d(32, 2, 1)).eval()
    image = torch.randn(SHAPE)
    with torch.no_grad():
        mask = network(image[None])[0].argmax(0) == 1
    return network, image, make_baseline(image, (1.0, 1.0, 1.0), "blur", 2.0), mask


def _cost(network: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> int:
    """What one input costs, as a scorer measures it on its first call."""
    budget = MemoryBudget()
    ClassScorer(network, 1, mask, budget=budget)(image[None])
    return budget.costs[tuple(image.shape)]


def _calls(network: nn.Module) -> list[int]:
    """The batch size of every network call from now on."""
    sizes: list[int] = []
    network.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def test_the_perturbed_inputs_follow_the_budget_not_the_steps_and_score_as_one_at_a_time(case):
    network, image, baseline, mask = case
    cost = _cost(network, image, mask)
    assert cost > 50 * image.numel() * 4  # the network's own tensors are counted, not just the input
    reference = deletion_insertion(
        ClassScorer(network, 1, mask, budget=MemoryBudget(batch_size=1)), image, baseline, image.abs()[0], step=0.01
    )
    for step in (0.1, 0.01):  # 9 and 99 inner steps: 3 inputs per call either way
        budget = MemoryBudget(batch_size=32, max_gb=3.5 * cost / GB)
        calls = _calls(network)
        curves = deletion_insertion(ClassScorer(network, 1, mask, budget=budget), image, baseline, image.abs()[0], step)
        assert max(calls) == budget.most_held == 3 and len(calls) > 2 * (round(1 / step) - 1) / 3
    for kind, curve in curves.items():  # step 0.01: the same numbers as one input per call
        np.testing.assert_allclose(curve.probability, reference[kind].probability, rtol=0, atol=1e-6)
        np.testing.assert_allclose(curve.dice, reference[kind].dice, rtol=0, atol=1e-6)


def test_the_free_memory_bounds_the_budget_and_an_input_it_cannot_hold_is_refused(case, monkeypatch):
    network, image, baseline, mask = case
    cost = _cost(network, image, mask)
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: int(2.5 * cost))
    budget = MemoryBudget(batch_size=32, max_gb=100.0)
    calls = _calls(network)
    deletion_insertion(ClassScorer(network, 1, mask, budget=budget), image, baseline, image.abs()[0], step=0.1)
    assert max(calls) == budget.most_held == 2
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: cost // 2)
    with pytest.raises(SegGradCAMError, match=r"needs about .* GB, more than the free memory"):
        ClassScorer(network, 1, mask, budget=MemoryBudget())(image[None])
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: None)
    with pytest.raises(SegGradCAMError, match=r"more than --max-memory-gb .*; raise --max-memory-gb"):
        ClassScorer(network, 1, mask, budget=MemoryBudget(max_gb=cost / 3 / GB))(image[None])


def test_the_default_call_holds_less_on_the_cpu_than_on_a_gpu(monkeypatch):
    """On the CPU a call of about 100 MB is the fastest per input (bench/RESULTS.md R20.4): the
    default budget holds 128 MB there and 1 GB on a GPU; an input costing more goes alone."""
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: None)
    budget = MemoryBudget(batch_size=64)
    budget.costs[(2, 32, 48, 48)] = 20 * 2**20
    budget.costs[(2, 80, 96, 96)] = 194 * 2**20
    assert budget.inputs_per_call((2, 32, 48, 48), "cpu") == 6
    assert budget.inputs_per_call((2, 32, 48, 48), "cuda") == 47
    assert budget.inputs_per_call((2, 80, 96, 96), "cpu") == 1
    assert budget.inputs_per_call((2, 80, 96, 96), "cuda") == 4
