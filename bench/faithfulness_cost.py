"""Benchmark: what ``explain --faithfulness`` costs against the explain, this version beside an
earlier one (``--baseline-src``: that version's ``SegGradCAM`` folder, e.g. a git worktree of the
commit before), alternating, each run a fresh ``explain --faithfulness`` process: explain.json's
``explain_s`` and ``faithfulness_s``, the network calls the progress counted, the verdicts.

    git worktree add /tmp/before 61093de
    .venv/bin/python bench/faithfulness_cost.py --baseline-src /tmp/before/SegGradCAM \\
        --cases demo nnunet --out bench/results/faithfulness_cost.json
    .venv/bin/python bench/faithfulness_cost.py --cases hdbet --out bench/results/faithfulness_cost_hdbet.json

Cases: the demo model and the shipped nnU-Net on held-out case 0 of the evaluation seed, HD-BET on
Colin27. The demo and nnU-Net pairs take about 12 minutes on a 2-core CPU, HD-BET alone 15.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fresh_process import write_report

ROOT = Path(__file__).resolve().parents[1]
NNUNET = (
    ROOT
    / "SegGradCAM/Resources/Models/demo-lesions-nnunet/Dataset901_DemoLesions"
    / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
)
CALLS = re.compile(r"faithfulness (\d+)/(\d+)")


def make_cases(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """(model, inputs) of each case."""
    from SegGradCAMLib.demo import data as demo_data

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, folder / "demo")
    channels = [str(paths[c]) for c in demo_data.CHANNELS]
    return {
        "demo": ("demo-lesions-unet2d", channels),
        "nnunet": (str(NNUNET), channels),
        "hdbet": ("hdbet", ["/usr/share/mricron/templates/ch2.nii.gz"]),
    }


def run(model: str, inputs: list[str], out: Path, source: Path) -> dict:
    """One ``explain --faithfulness`` process of the version in ``source``."""
    command = [sys.executable, "-m", "SegGradCAMLib", "explain", *inputs, "--model", model, "--out", str(out)]
    command += ["--faithfulness", "--no-overview", "--threads", "2", "--progress", "auto"]
    environment = {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    report = json.loads((out / "explain.json").read_text())
    timings = report["timings"]
    calls = [int(total) for _, total in CALLS.findall(proc.stdout + proc.stderr)]
    verdicts = {
        f"{entry['name']} @ {layer}": score["faithfulness"]["verdict"]
        for entry in report["classes"]
        for layer, score in entry["layers"].items()
        if "faithfulness" in score
    }
    return {
        "explain_s": timings["explain_s"],
        "faithfulness_s": timings["faithfulness_s"],
        "faithfulness_over_explain": timings["faithfulness_s"] / timings["explain_s"],
        "network_calls": calls[-1] if calls else None,
        "peak_mb": report["peak_memory_mb"]["resident"],
        "verdicts": verdicts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="*", default=["demo", "nnunet", "hdbet"])
    parser.add_argument("--baseline-src", type=Path, help="an earlier version's SegGradCAM folder")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    versions = {"this": ROOT / "SegGradCAM", **({"baseline": args.baseline_src} if args.baseline_src else {})}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, inputs) in make_cases(Path(tmp)).items():
            if name not in args.cases:
                continue
            for repeat in range(args.repeats):
                for version, source in versions.items():
                    result = run(model, inputs, Path(tmp) / f"{name}_{version}_{repeat}", source)
                    runs.append({"case": name, "version": version, **result})
                    print(json.dumps(runs[-1]), flush=True)
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
