"""Benchmark: a cohort with `seggradcam explain --cohort`, sequential (`--engine local`) against Ray
with 1 and 2 worker processes; cases per minute and Ray's overhead on one worker. Each run is a
fresh command (as a user runs it: interpreter, Ray start-up and model load included) into a
fresh folder; median of ``--repeats``.

    .venv/bin/python bench/cohort.py --cohorts demo --repeats 3 --out bench/results/cohort_demo.json
    .venv/bin/python bench/cohort.py --cohorts heads --repeats 1 --out bench/results/cohort_heads.json \
        --rows "local (torch's threads);ray, 1 worker x 2 CPUs;ray, 2 workers x 1 CPU"

Cohorts: ``demo`` = 6 held-out demo cases, 2D demo model, ``--faithfulness`` (seconds per case);
``heads`` = HD-BET on three real heads (Colin27, KmeansTest, the MNI152 template of nilearn).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADS = (
    Path("/usr/share/mricron/templates/ch2.nii.gz"),
    Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz"),
)
ENGINES = {  # row -> engine options
    "local (torch's threads)": ["--engine", "local"],
    "local, 1 thread": ["--engine", "local", "--threads", "1"],
    "ray, 1 worker x 1 CPU": ["--engine", "ray", "--workers", "1", "--cpus-per-case", "1"],
    "ray, 1 worker x 2 CPUs": ["--engine", "ray", "--workers", "1", "--cpus-per-case", "2"],
    "ray, 2 workers x 1 CPU": ["--engine", "ray", "--workers", "2", "--cpus-per-case", "1"],
}


def demo_cohort(folder: Path) -> tuple[Path, list[str]]:
    from SegGradCAMLib.demo import data as demo_data

    lines = []
    for i, (case, _) in enumerate(itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), 6)):
        demo_data.write_case(case, folder / f"case_{i}")
        lines.append(f"case_{i}/t1c.nrrd,case_{i}/flair.nrrd")
    (folder / "demo.txt").write_text("\n".join(lines) + "\n")
    return folder / "demo.txt", ["--model", "demo-lesions-unet2d", "--faithfulness"]


def heads_cohort(folder: Path) -> tuple[Path, list[str]]:
    from nilearn import datasets

    mni = folder / "mni152.nii.gz"
    datasets.load_mni152_template(resolution=1).to_filename(mni)
    (folder / "heads.txt").write_text("\n".join(str(p) for p in (*HEADS, mni)) + "\n")
    return folder / "heads.txt", ["--model", "hdbet"]


def run(cohort: Path, options: list[str], engine: list[str], out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "SegGradCAMLib",
            "explain",
            "--cohort",
            str(cohort),
            *options,
            "--no-overview",
            "--out",
            str(out),
            *engine,
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    state = json.loads((out / "cohort.json").read_text())["last_run"]
    shutil.rmtree(out)
    return {"wall_s": wall, "cases_s": state["seconds"], "cases": state["done"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default="demo,heads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default=";".join(ENGINES), help="rows of ENGINES separated by ; (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "cohorts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cohorts.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            cohort, options = (demo_cohort if name == "demo" else heads_cohort)(folder)
            runs = {row: [] for row in args.rows.split(";")}
            for _ in range(args.repeats):  # rows interleaved, so drift of the machine hits each alike
                for row in runs:
                    runs[row].append(run(cohort, options, ENGINES[row], folder / "out"))
                    print(name, row, runs[row][-1], flush=True)
            rows = {}
            for row, results in runs.items():
                wall = statistics.median(r["wall_s"] for r in results)
                cases = results[0]["cases"]
                rows[row] = {
                    "wall_s": round(wall, 2),
                    "cases_s": round(statistics.median(r["cases_s"] for r in results), 2),
                    "cases": cases,
                    "cases_per_min": round(60 * cases / wall, 2),
                    "walls": [round(r["wall_s"], 2) for r in results],
                }
            base = rows["local (torch's threads)"]["wall_s"]
            for entry in rows.values():
                entry["wall_vs_local"] = round(entry["wall_s"] / base, 3)
            report["cohorts"][name] = rows
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
