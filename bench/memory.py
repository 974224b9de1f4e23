"""Benchmark: peak memory of explaining against plain inference as the volume grows, and for a
50-class network explaining every class. Each configuration runs in a fresh process.

The bound (issue target): all classes <= 1.2 x (plain inference + the autograd graph of the tail
from the explained layer, measured as one class's forward and backward from that layer).

    .venv/bin/python bench/memory.py --out bench/results/memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fresh_process import in_fresh_process, measured, write_report


def one_run(network_name: str, size: int, classes: int, mode: str) -> dict:
    import torch
    from monai.networks import nets

    from SegGradCAMLib import decoder_layers, seg_grad_cam

    torch.manual_seed(0)
    if network_name == "BasicUNet":
        network = nets.BasicUNet(3, 1, classes, features=(16, 16, 32, 64, 128, 16)).eval()
    else:
        network = nets.UNet(3, 1, classes, (16, 32, 64, 128), (2, 2, 2), num_res_units=1).eval()
    layer = decoder_layers(network)[-1]
    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    which = [1] if mode == "one_class" else list(range(classes))

    def run():
        if mode == "plain":
            with torch.no_grad():
                network(x)
        else:
            seg_grad_cam(network, x, layer, which)

    return {"network": network_name, "size": size, "classes": classes, "mode": mode, "layer": layer, **measured(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, size, classes, mode = args.one
        print(json.dumps(one_run(name, int(size), int(classes), mode)))
        return
    configs = [("BasicUNet", size, 4) for size in map(int, args.sizes.split(","))] + [("UNet", 96, 50)]
    runs = []
    for name, size, classes in configs:
        row = {
            mode: in_fresh_process(__file__, name, str(size), str(classes), mode)
            for mode in ("plain", "one_class", "all_classes")
        }
        bound = row["one_class"]["peak_above_start_mb"]
        runs.append(
            {
                "network": name,
                "size": size,
                "classes": classes,
                "layer": row["plain"]["layer"],
                **{f"{m}_mb": row[m]["peak_above_start_mb"] for m in row},
                **{f"{m}_s": row[m]["seconds"] for m in row},
                "all_over_bound": round(row["all_classes"]["peak_above_start_mb"] / max(bound, 1), 3),
            }
        )
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
