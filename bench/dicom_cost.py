"""Benchmark: what ``--dicom`` costs. HD-BET on Colin27 as a DICOM MR series (181 slices) and the
demo model on a held-out demo case as two series, each explained without and with ``--dicom`` in
alternation, every run a fresh ``seggradcam explain`` process; the medians of explain.json's
``total_s`` and ``dicom_s``, and the sizes of the objects written.

    .venv/bin/python bench/dicom_cost.py --repeats 3 --out bench/results/dicom_cost.json

Takes about 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SEGGRADCAM = str(Path(sys.executable).with_name("seggradcam"))


def make_cases(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """Colin27 as one series (HD-BET) and the first held-out demo case as two series (demo model)."""
    import SimpleITK as sitk

    from SegGradCAMLib.demo import data as demo_data
    from SegGradCAMLib.demo.dicom_series import write_colin27_series, write_mr_series

    write_colin27_series(folder / "colin27")
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, folder / "demo_nrrd")
    study, frame = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72"
    for channel in demo_data.CHANNELS:
        image = sitk.ReadImage(str(paths[channel]))
        write_mr_series(image, folder / channel, study_uid=study, frame_of_reference_uid=frame)
    return {
        "hdbet_colin27": ("hdbet", [str(folder / "colin27")]),
        "demo_two_series": ("demo-lesions-unet2d", [str(folder / c) for c in demo_data.CHANNELS]),
    }


def run(model: str, inputs: list[str], out: Path, dicom: bool) -> dict:
    """One ``seggradcam explain`` process; its explain.json timings and the DICOM files' bytes."""
    command = [SEGGRADCAM, "explain", *inputs, "--model", model, "--out", str(out), "--no-overview"]
    subprocess.run(command + (["--dicom"] if dicom else []), check=True, capture_output=True)
    report = json.loads((out / "explain.json").read_text())
    sizes = {name: (out / name).stat().st_size for name in report.get("dicom", {}).get("files", [])}
    return {"total_s": report["timings"]["total_s"], "dicom_s": report["timings"].get("dicom_s", 0.0), "bytes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(Path(tmp))
        for name, (model, inputs) in cases.items():
            rows: dict[str, list] = {"without": [], "with": []}
            for repeat in range(args.repeats):  # alternating, so drift of the machine hits both alike
                for kind in ("without", "with"):
                    rows[kind].append(run(model, inputs, Path(tmp) / f"{name}_{kind}_{repeat}", kind == "with"))
            without = statistics.median(r["total_s"] for r in rows["without"])
            with_dicom = statistics.median(r["total_s"] for r in rows["with"])
            results[name] = {
                "model": model,
                "runs": rows,
                "median_total_s_without": without,
                "median_total_s_with": with_dicom,
                "median_dicom_s": statistics.median(r["dicom_s"] for r in rows["with"]),
                "ratio_with_to_without": round(with_dicom / without, 3),
                "dicom_bytes": rows["with"][0]["bytes"],
            }
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "runs"}))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
