"""Benchmark: host peak memory of ``explain`` on a many-class nnU-Net folder against nnU-Net's own
prediction of the same case (one fold, no mirroring), each in a fresh process.

The folder is made by nnU-Net's own tools: a raw dataset of Colin27's 1 mm T1 head (and its mirror
image) labelled with 23 classes (the AAL atlas's regions, label mod 23 + 1), fingerprinted and
planned by nnU-Net's ``ExperimentPlanner`` (3d_fullres at 1 mm), the network built by
``nnUNetTrainer.build_network_architecture`` with random weights (near-tied logits: every class
is predicted somewhere), saved as ``nnUNetTrainer.save_checkpoint`` saves it. The case explained
is Colin27 itself.

    .venv/bin/python bench/nnunet_memory.py --workdir /tmp/nnunet_memory \\
        --out bench/results/nnunet_memory.json [--modes predict,one_class,all_classes]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from fresh_process import in_fresh_process, write_report

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
ATLAS = Path("/usr/share/mricron/templates/aal.nii.gz")
CLASSES = 23
DATASET = "Dataset950_ManyClasses"


def nnunet_environment(work: Path) -> None:
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(work / name)


def write_raw_dataset(raw: Path) -> None:
    """Colin27 and its left-right mirror image, each labelled with the atlas's regions in 23 classes."""
    import numpy as np
    import SimpleITK as sitk

    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(COLIN27), sitk.sitkFloat32)
    atlas = sitk.GetArrayFromImage(sitk.ReadImage(str(ATLAS)))
    labels = np.where(atlas > 0, atlas % CLASSES + 1, 0).astype(np.uint8)
    assert labels.shape == sitk.GetArrayFromImage(image).shape, "the atlas is not on Colin27's grid"
    for case, flip in (("head_000", False), ("head_001", True)):
        array = sitk.GetArrayFromImage(image)
        label = labels
        if flip:
            array, label = array[:, :, ::-1].copy(), label[:, :, ::-1].copy()
        for values, path in ((array, f"imagesTr/{case}_0000.nii.gz"), (label, f"labelsTr/{case}.nii.gz")):
            out = sitk.GetImageFromArray(values)
            out.CopyInformation(image)
            sitk.WriteImage(out, str(folder / path))
    names = {"background": 0, **{f"class_{c:02d}": c for c in range(1, CLASSES + 1)}}
    dataset = {"channel_names": {"0": "T1"}, "labels": names, "numTraining": 2, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def make_folder(work: Path) -> Path:
    """The trained-model folder (random weights) as nnU-Net's planner and trainer class make it."""
    import numpy as np
    import torch

    nnunet_environment(work)
    results = work / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if (results / "fold_0" / "checkpoint_final.pth").exists():
        return results
    write_raw_dataset(work / "raw")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    extract_fingerprints([950], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([950])
    preprocessed = work / "preprocessed" / DATASET
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(plans_manager, configuration, 1, CLASSES + 1, True)
    (results / "fold_0").mkdir(parents=True, exist_ok=True)
    (results / "plans.json").write_text(json.dumps(plans, indent=2))
    (results / "dataset.json").write_text(json.dumps(dataset, indent=2))
    torch.save(
        {
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.0)]},
            "_best_ema": None,
            "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        results / "fold_0" / "checkpoint_final.pth",
    )
    return results


def resident_mb() -> float:
    """This process's resident memory now (MiB)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def one_run(mode: str, folder: str, out: str) -> dict:
    """One measurement in this (fresh) process: host peak resident memory (MiB), seconds, and when
    the peak came (sampled every 0.2 s; with explain.json's timings it tells which stage holds it)."""
    import resource
    import threading

    start = time.perf_counter()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append((time.perf_counter() - start, resident_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if mode == "predict":
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), verbose=False, allow_tqdm=False
        )
        predictor.initialize_from_trained_model_folder(folder, (0,), "checkpoint_final.pth")
        predictor.predict_from_files([[str(COLIN27)]], [str(Path(out) / "predicted")], num_processes_preprocessing=1)
        report = {}
    else:
        from SegGradCAMLib.cli import main

        classes = ["--classes", "class_01"] if mode == "one_class" else []
        shutil.rmtree(Path(out) / mode, ignore_errors=True)
        code = main(["explain", str(COLIN27), "--model", folder, *classes, "--out", str(Path(out) / mode)])
        assert code == 0, code
        report = json.loads((Path(out) / mode / "explain.json").read_text())
    done.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"mode": mode, "seconds": round(time.perf_counter() - start, 1), "peak_mb": round(peak)}
    if samples:
        at, most = max(samples, key=lambda s: s[1])
        result["sampled_peak"] = {"at_s": round(at, 1), "mb": round(most)}
    for key in ("class_groups", "timings"):
        if key in report:
            result[key] = report[key]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnunet_memory"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--modes", default="predict,one_class,all_classes")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    folder = make_folder(args.workdir)
    print(f"folder: {folder}", file=sys.stderr)
    runs = [in_fresh_process(__file__, mode, str(folder), str(args.workdir)) for mode in args.modes.split(",")]
    write_report(args.out, runs)


if __name__ == "__main__":
    main()
