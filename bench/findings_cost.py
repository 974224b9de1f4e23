"""Benchmark: what ``--findings`` and ``--probabilities`` cost. The demo model on the first held-out
demo case with two lesions (2D, two channels: findings come with channel reliance), the shipped
nnU-Net on the same case (3D sliding windows, two channels) and HD-BET on Colin27 (3D whole
volume, one channel: one finding, no reliance), each run a fresh ``seggradcam
explain`` process, the configurations in alternation; the medians of explain.json's ``explain_s``
(segmentation and maps, without start-up and writing), of its slice-wise segmentation pass and
channel occlusion, ``total_s`` and peak resident memory.

The issue's budget for K findings is ``explain + K x one class's backward pass`` (+5 %); one
class's share is measured as (all classes - one class) / (classes - 1), both plain runs.

    .venv/bin/python bench/findings_cost.py --repeats 3 --out bench/results/findings_cost.json

Takes about 20 minutes on a 2-core CPU (every run is a new process).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SEGGRADCAM = str(Path(sys.executable).with_name("seggradcam"))
NNUNET = (
    Path(__file__).resolve().parents[1]
    / "SegGradCAM/Resources/Models/demo-lesions-nnunet/Dataset901_DemoLesions"
    / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
)
KEYS = ("explain_s", "total_s", "segmentation_pass_s", "occlusion_s", "peak_mb")
CONFIGS = {
    "plain": [],
    "one_class": None,  # --classes <first class>, set per case
    "probabilities": ["--probabilities"],
    "findings": ["--findings", "--no-probabilities"],
    "findings_no_reliance": ["--findings", "--no-probabilities", "--no-reliance"],
    "findings_and_probabilities": ["--findings"],
}


def make_cases(folder: Path) -> dict[str, tuple[str, list[str], str]]:
    """(model, inputs, first class) of the two cases."""
    import numpy as np
    from scipy import ndimage

    from SegGradCAMLib.demo import data as demo_data

    for case, _ in demo_data.iter_cases(demo_data.EVAL_SEED):
        if ndimage.label(case.labels > 0, np.ones((3, 3, 3)))[1] == 2:
            break
    paths = demo_data.write_case(case, folder / "demo")
    return {
        "demo_two_lesions": ("demo-lesions-unet2d", [str(paths["t1c"]), str(paths["flair"])], "edema"),
        "nnunet_two_lesions": (str(NNUNET), [str(paths["t1c"]), str(paths["flair"])], "edema"),
        "hdbet_colin27": ("hdbet", ["/usr/share/mricron/templates/ch2.nii.gz"], "brain"),
    }


def run(model: str, inputs: list[str], out: Path, extra: list[str]) -> dict:
    """One ``seggradcam explain`` process: its explain.json timings, memory and finding count."""
    command = [SEGGRADCAM, "explain", *inputs, "--model", model, "--out", str(out), "--no-overview", "--threads", "2"]
    subprocess.run(command + extra, check=True, capture_output=True)
    report = json.loads((out / "explain.json").read_text())
    timings = report["timings"]
    return {
        "explain_s": timings["explain_s"],
        "total_s": timings["total_s"],
        "segmentation_pass_s": timings.get("segmentation_pass_s", 0.0),
        "occlusion_s": timings.get("occlusion_s", 0.0),
        "peak_mb": report["peak_memory_mb"]["resident"],
        "findings": len((report.get("findings") or {}).get("findings", [])),
        "classes": len(report["classes"]),
    }


def summary(runs: dict[str, list[dict]]) -> dict:
    """Medians per configuration and the ratios against the plain explain."""
    median = {name: {key: statistics.median(r[key] for r in rs) for key in KEYS} for name, rs in runs.items()}
    plain, one = median["plain"]["explain_s"], median["one_class"]["explain_s"]
    classes, findings = runs["plain"][0]["classes"], runs["findings"][0]["findings"]
    per_class = (plain - one) / max(classes - 1, 1)
    findings_run = median["findings"]
    return {
        "median": median,
        "classes": classes,
        "findings": findings,
        "one_class_share_s": per_class,
        "budget_findings_s": plain + findings * per_class,
        "findings_over_budget": median["findings"]["explain_s"] / (plain + findings * per_class),
        "findings_no_reliance_over_budget": median["findings_no_reliance"]["explain_s"]
        / (plain + findings * per_class),
        "segmentation_pass_over_explain": findings_run["segmentation_pass_s"] / plain,
        "occlusion_over_explain": findings_run["occlusion_s"] / plain,
        "findings_over_explain": median["findings"]["explain_s"] / plain,
        "probabilities_over_explain": median["probabilities"]["explain_s"] / plain,
        "peak_findings_over_explain": median["findings_and_probabilities"]["peak_mb"] / median["plain"]["peak_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, inputs, first) in make_cases(Path(tmp)).items():
            if args.cases and name not in args.cases:
                continue
            runs: dict[str, list[dict]] = {config: [] for config in CONFIGS}
            for repeat, (config, extra) in itertools.product(range(args.repeats), CONFIGS.items()):
                options = ["--classes", first] if extra is None else extra
                runs[config].append(run(model, inputs, Path(tmp) / f"{name}_{config}_{repeat}", options))
                print(name, config, runs[config][-1], flush=True)
            results[name] = {"runs": runs, **summary(runs)}
    args.out.write_text(json.dumps(results, indent=2))
    for name, result in results.items():
        print(name, {k: v for k, v in result.items() if k != "runs"})


if __name__ == "__main__":
    main()
