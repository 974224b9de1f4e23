"""Benchmark: time per input of one scoring call holding 1, 2, 4 or 8 inputs on the CPU, against what
one input costs (as the memory budget measures it), through the shipped nnU-Net's scoring copy on
blocks of held-out case 0 (16 × 32 × 32 up to the whole 80 × 96 × 96 volume).

    .venv/bin/python bench/scoring_batch.py --out bench/results/scoring_batch.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from faithfulness_3d import scored_case
from fresh_process import write_report
from SegGradCAMLib.evaluation.deletion_insertion import ClassScorer
from SegGradCAMLib.evaluation.memory import MemoryBudget
from SegGradCAMLib.evaluation.scoring_network import scoring_network

BLOCKS = ((16, 32, 32), (32, 48, 48), (48, 64, 64), (80, 96, 96))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        _, pipeline, case = scored_case("nnunet", Path(tmp))
    network = scoring_network(pipeline.model.network.eval(), "cpu")
    runs = []
    for block in BLOCKS:
        x = case.image[:, : block[0], : block[1], : block[2]].float().contiguous()
        budget = MemoryBudget()
        ClassScorer(network, 1, torch.ones(block, dtype=torch.bool), budget=budget)(x[None])
        per_input = {}
        with torch.no_grad():
            for inputs in (1, 2, 4, 8):
                batch = x[None].repeat(inputs, 1, 1, 1, 1)
                network(batch)
                seconds = []
                for _ in range(max(3, 40 // inputs if block != BLOCKS[-1] else 5)):
                    start = time.perf_counter()
                    network(batch)
                    seconds.append((time.perf_counter() - start) / inputs)
                per_input[inputs] = statistics.median(seconds)
        runs.append(
            {"block": block, "input_cost_mb": budget.costs[tuple(x.shape)] / 1e6, "seconds_per_input": per_input}
        )
        print(runs[-1], flush=True)
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
