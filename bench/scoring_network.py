"""Benchmark: one scoring call (a forward pass without gradients on the case as the faithfulness
scores it) of the network itself against :func:`~SegGradCAMLib.evaluation.scoring_network.scoring_network`'s
copy, alternating in one process: medians, their ratio, and how far the outputs lie apart.

    .venv/bin/python bench/scoring_network.py --out bench/results/scoring_network.json

Cases: the shipped nnU-Net on held-out case 0 (nnU-Net's 2 mm grid, 80 × 96 × 96) and HD-BET on
Colin27 (128 × 160 × 128); about 4 minutes on a 2-core CPU.
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
from SegGradCAMLib.evaluation.scoring_network import scoring_network


def measure(name: str, repeats: int, folder: Path) -> dict:
    """Both networks on one case, alternating ``repeats`` times."""
    _, pipeline, case = scored_case(name, folder)
    network = pipeline.model.network.eval()
    x = case.image[None].float()
    scoring = scoring_network(network, "cpu")
    seconds: dict[str, list[float]] = {"network": [], "scoring copy": []}
    with torch.no_grad():
        expected, found = network(x), scoring(x)  # warm-up, and the outputs compared
        for _ in range(repeats):
            for label, net in (("network", network), ("scoring copy", scoring)):
                start = time.perf_counter()
                net(x)
                seconds[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    probabilities = torch.softmax(found, 1) - torch.softmax(expected, 1)
    return {
        "case": name,
        "shape": list(x.shape),
        "seconds": seconds,
        "median_s": medians,
        "copy_over_network": medians["scoring copy"] / medians["network"],
        "largest_logit": float(expected.abs().max()),
        "logit_difference": float((found - expected).abs().max()),
        "probability_difference": float(probabilities.abs().max()),
        "labels_equal": float((found.argmax(1) == expected.argmax(1)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cases", nargs="*", default=["nnunet", "hdbet"])
    parser.add_argument("--repeats", type=int, nargs="*", default=[9, 5], help="per case")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(name, repeats, Path(tmp)) for name, repeats in zip(args.cases, args.repeats)]
    for run in runs:
        print(run["case"], {k: round(v, 3) for k, v in run["median_s"].items()}, round(run["copy_over_network"], 3))
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
