"""Train a small, real nnU-Net v2 model (3d_fullres, fold 0) on the demo lesion data, on the CPU.

Everything is done with nnU-Net's own tools: the dataset is written in nnU-Net's raw format,
planned and preprocessed with ``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_preprocess``,
trained with ``nnUNetv2_train`` and one of nnU-Net's own fixed-length trainers
(``nnUNetTrainer_Xepochs``), and evaluated with ``nnUNetPredictor``. The only change to
nnU-Net's defaults is an edit of the generated plans (narrower network, smaller patch) so that
the checkpoint is small and training fits a CPU budget.

The trained-model folder is copied, in nnU-Net's layout, to
``SegGradCAM/Resources/Models/demo-lesions-nnunet/Dataset901_DemoLesions/<Trainer>__nnUNetPlans__3d_fullres/``
next to ``model_card.json`` and ``README.md``.

Run (needs a Python environment with nnunetv2 and the demo-data dependencies)::

    PYTHONPATH=SegGradCAM python scripts/train_nnunet_demo.py [--workdir /tmp/nnunet_demo]

Data: cases of :data:`SegGradCAMLib.demo.data.TRAIN_SEED` for training, cases of
:data:`SegGradCAMLib.demo.data.EVAL_SEED` (never seen in training) for the held-out Dice.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_DemoLesions"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
DEFAULT_OUT = REPO / "SegGradCAM" / "Resources" / "Models" / "demo-lesions-nnunet"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


TRAINER_MODULES = (
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs",
    "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring",
)


def use_direct_trainer_lookup() -> None:
    """Let nnU-Net find its stock trainers without importing every trainer module.

    nnU-Net looks a trainer up by name by importing all modules under
    ``nnunetv2/training/nnUNetTrainer`` in order; ``primus/`` comes before ``variants/`` and imports
    ``timm``, which imports ``torchvision``. With a CPU-only torch and PyPI's (CUDA) torchvision wheel,
    that import fails (``operator torchvision::nms does not exist``) and the lookup crashes. This
    resolves the stock trainers from their own modules first (the same class nnU-Net's search would
    return) and falls back to nnU-Net's search for any other name.
    """
    import importlib

    import nnunetv2.inference.predict_from_raw_data as predict_module
    import nnunetv2.run.run_training as run_module
    import nnunetv2.utilities.find_objects as find_objects

    original = find_objects.recursive_find_trainer_class_by_name
    if getattr(original, "_direct", False):
        return

    def find(trainer_name: str):
        for module_name in TRAINER_MODULES:
            module = importlib.import_module(module_name)
            if hasattr(module, trainer_name):
                return getattr(module, trainer_name)
        return original(trainer_name)

    find._direct = True
    for module in (find_objects, run_module, predict_module):
        module.recursive_find_trainer_class_by_name = find


def torchvision_importable() -> bool:
    """Whether ``import torchvision`` works in a fresh interpreter (see :func:`use_direct_trainer_lookup`)."""
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    return probe.returncode == 0


def train_child(trainer: str, threads: int) -> None:
    """Child process: nnU-Net's ``run_training`` for fold 0 on the CPU with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    use_direct_trainer_lookup()
    from nnunetv2.run.run_training import run_training

    run_training(str(DATASET_ID), CONFIGURATION, 0, trainer, PLANS, device=torch.device("cpu"))


def write_nifti(array, path: Path, spacing: float) -> None:
    """``(Z, Y, X)`` array -> NIfTI with isotropic ``spacing``, origin 0, identity direction
    (the geometry :func:`SegGradCAMLib.demo.data.write_case` writes)."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing((float(spacing),) * 3)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_raw_dataset(raw: Path, n_train: int, seed: int) -> list[dict]:
    """nnU-Net raw dataset from the first ``n_train`` cases of ``seed``."""
    from SegGradCAMLib.demo import data

    folder = raw / DATASET_NAME
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    cases = []
    for index, (case, _rng) in enumerate(itertools.islice(data.iter_cases(seed), n_train)):
        name = f"case_{index:03d}"
        for channel in range(len(data.CHANNELS)):
            write_nifti(case.image[channel], folder / "imagesTr" / f"{name}_{channel:04d}.nii.gz", data.SPACING_MM)
        write_nifti(case.labels, folder / "labelsTr" / f"{name}.nii.gz", data.SPACING_MM)
        cases.append({"name": name, "subject": case.subject, "case_seed": case.seed, "shape": list(case.labels.shape)})
    dataset_json = {
        "channel_names": {str(i): c for i, c in enumerate(data.CHANNELS)},
        "labels": {label: i for i, label in enumerate(data.LABELS)},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "SegGradCAM demo: real MRI heads (colin27, kmeans, mni152) with synthetic lesions, "
        f"2 mm isotropic, cases of seed {seed} (SegGradCAMLib.demo.data). Demonstration only.",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return cases


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of the running environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> float:
    """Run an nnU-Net command, teeing its output to ``log_path``; returns the wall time."""
    log("$ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + (" " if env else "") + " ".join(cmd))
    start = time.time()
    with open(log_path, "w") as handle:
        process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        for line in process.stdout:
            handle.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        code = process.wait()
    if code:
        raise SystemExit(f"{cmd[0]} failed with exit code {code}; see {log_path}")
    return time.time() - start


def edit_plans(
    plans_path: Path, max_features: int, base_features: int, patch_size: list[int] | None, batch_size: int | None
) -> dict:
    """Narrow the 3d_fullres network (and optionally its patch/batch size) in nnU-Net's plans.

    Changes only network width and sampling, not the preprocessing (spacing, normalisation),
    so it does not matter whether this happens before or after preprocessing; it is done before.
    Returns a record of the edits.
    """
    plans = json.loads(plans_path.read_text())
    config = plans["configurations"][CONFIGURATION]
    kwargs = config["architecture"]["arch_kwargs"]
    before = {
        "features_per_stage": list(kwargs["features_per_stage"]),
        "patch_size": list(config["patch_size"]),
        "batch_size": config["batch_size"],
    }
    if patch_size is not None:
        if len(patch_size) != len(config["patch_size"]):
            raise SystemExit(f"--patch-size needs {len(config['patch_size'])} values")
        # The network's pooling must still divide the patch: keep the planned number of stages
        # and check divisibility by the product of the strides along each axis.
        strides = kwargs["strides"]
        for axis, size in enumerate(patch_size):
            factor = 1
            for stride in strides:
                factor *= stride[axis] if isinstance(stride, list) else stride
            if size % factor:
                raise SystemExit(
                    f"patch size {patch_size} not divisible by the network's pooling {factor} on axis {axis}"
                )
        config["patch_size"] = list(patch_size)
    kwargs["features_per_stage"] = [
        min(base_features * 2**i, max_features) for i in range(len(kwargs["features_per_stage"]))
    ]
    if batch_size is not None:
        config["batch_size"] = batch_size
    plans_path.write_text(json.dumps(plans, indent=4))
    after = {
        "features_per_stage": list(kwargs["features_per_stage"]),
        "patch_size": list(config["patch_size"]),
        "batch_size": config["batch_size"],
    }
    return {"before": before, "after": after, "n_stages": kwargs["n_stages"], "strides": kwargs["strides"]}


def epoch_times(training_log_dir: Path) -> list[float]:
    times = []
    for path in sorted(training_log_dir.glob("training_log_*.txt")):
        times += [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", path.read_text())]
    return times


def dice(prediction, reference) -> float | None:
    import numpy as np

    denominator = int(prediction.sum()) + int(reference.sum())
    if denominator == 0:
        return None
    return float(2 * np.logical_and(prediction, reference).sum() / denominator)


def evaluate(model_dir: Path, work: Path, n_cases: int, seed: int, use_mirroring: bool) -> dict:
    """Held-out Dice of the trained model on the first ``n_cases`` cases of ``seed``, predicted by
    nnU-Net's own ``nnUNetPredictor`` from NIfTI files read with nnU-Net's ``SimpleITKIO``."""
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from SegGradCAMLib.demo import data

    use_direct_trainer_lookup()
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=(0,), checkpoint_name="checkpoint_final.pth"
    )
    folder = work / "heldout"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    io = SimpleITKIO()
    per_case = []
    start = time.time()
    for index, (case, _rng) in enumerate(itertools.islice(data.iter_cases(seed), n_cases)):
        files = []
        for channel in range(len(data.CHANNELS)):
            path = folder / f"eval_{index:03d}_{channel:04d}.nii.gz"
            write_nifti(case.image[channel], path, data.SPACING_MM)
            files.append(str(path))
        image, properties = io.read_images(files)
        t0 = time.time()
        prediction = np.asarray(predictor.predict_single_npy_array(image, properties, None, None, False))
        seconds = time.time() - t0
        assert prediction.shape == case.labels.shape, (prediction.shape, case.labels.shape)
        reference = case.labels
        record = {
            "case": index,
            "subject": case.subject,
            "case_seed": case.seed,
            "seconds": round(seconds, 1),
            "lesion_union": dice(prediction > 0, reference > 0),
        }
        for label in range(1, len(data.LABELS)):
            record[data.LABELS[label]] = dice(prediction == label, reference == label)
        per_case.append(record)
        log(
            f"held-out case {index} ({case.subject}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float) and k != "seconds")
            + f" [{seconds:.1f} s]"
        )

    def mean(key):
        values = [r[key] for r in per_case if r[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    summary = {"lesion_union": mean("lesion_union")}
    summary.update({label: mean(label) for label in data.LABELS[1:]})
    return {
        "seed": seed,
        "n_cases": n_cases,
        "mean_dice": summary,
        "per_case": per_case,
        "predictor": {
            "tile_step_size": 0.5,
            "use_gaussian": True,
            "use_mirroring": use_mirroring,
            "checkpoint": "checkpoint_final.pth",
            "folds": [0],
        },
        "wall_s": round(time.time() - start, 1),
    }


def describe_checkpoint(path: Path) -> dict:
    """Top-level keys of an nnU-Net checkpoint, the types of its non-tensor values per key, and the
    pickle globals a ``torch.load(weights_only=True)`` would reject (what a loader must allow-list).
    Our own checkpoint, so ``weights_only=False`` is fine here."""
    import torch

    import importlib

    unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    # That scan misses globals reached through reduce calls (numpy 2 pickles dtypes as
    # numpy.dtypes.Float32DType): find the verified list by actually loading with weights_only=True.
    allowed, names = [], list(unsafe)
    verified = None
    for _ in range(20):
        allowed = []
        for name in names:
            module, _, attr = name.rpartition(".")
            allowed.append(getattr(importlib.import_module(module), attr))
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(str(path), map_location="cpu", weights_only=True)
            verified = names
            break
        except Exception as error:  # noqa: BLE001 - parse the rejected global from torch's message
            # "GLOBAL numpy.x was not an allowed global" or "... but got <class 'numpy.dtypes.Float32DType'>"
            match = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(error))
            name = match and (match.group(1) or match.group(2))
            if not name or name in names:
                break
            names.append(name)
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)

    def walk(value, types: set[str]) -> set[str]:
        if isinstance(value, torch.Tensor):
            return types
        types.add(f"{type(value).__module__}.{type(value).__qualname__}")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, types)
                walk(v, types)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v, types)
        elif hasattr(value, "dtype"):
            types.add(f"dtype {value.dtype!r}")
        return types

    keys = {key: sorted(walk(value, set())) for key, value in checkpoint.items()}
    weights = checkpoint["network_weights"]
    unique = {v.untyped_storage().data_ptr(): v.numel() for v in weights.values() if v.dtype.is_floating_point}
    n_params = int(sum(unique.values()))  # the decoder holds the encoder too: count shared tensors once
    return {
        "top_level_keys": list(checkpoint),
        "non_tensor_types_by_key": keys,
        "unsafe_globals_scan": unsafe,
        "weights_only_allowlist_verified": verified,  # None if no allow-list made weights_only work
        "network_parameters": n_params,
    }


def copy_model(model_dir: Path, out: Path) -> Path:
    """Copy nnU-Net's trained-model folder (without validation outputs, best checkpoint and
    plots) to ``out/<Dataset>/<Trainer>__<Plans>__<Configuration>/``."""
    target = out / DATASET_NAME / model_dir.name
    if target.exists():
        shutil.rmtree(target)
    (target / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, target / name)
    fold = model_dir / "fold_0"
    shutil.copy2(fold / "checkpoint_final.pth", target / "fold_0" / "checkpoint_final.pth")
    for path in sorted(fold.glob("training_log_*.txt")):
        if path.stat().st_size < 200_000:
            shutil.copy2(path, target / "fold_0" / "training_log.txt")
    summary = fold / "validation" / "summary.json"
    if summary.is_file():
        shutil.copy2(summary, target / "fold_0" / "validation_summary.json")
    from SegGradCAMLib.demo import data

    card = {"terminology": data.TERMINOLOGY}  # the labels' DICOM codes; evaluate --write-card adds to it
    (target / "seggradcam_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return target


def folder_listing(out: Path) -> tuple[list[dict], int]:
    files = [
        {"path": str(p.relative_to(out)), "bytes": p.stat().st_size} for p in sorted(out.rglob("*")) if p.is_file()
    ]
    return files, sum(f["bytes"] for f in files)


def write_readme(out: Path, card: dict) -> None:
    held = card["held_out"]["mean_dice"]
    edits = card["plans_edits"]
    lines = [
        "# demo-lesions-nnunet: a small nnU-Net v2 model of the demo lesions",
        "",
        "**Demonstration only, not for clinical use.** Trained on synthetic lesions implanted in three real",
        "MRI heads (`SegGradCAMLib.demo.data`); it has never seen a real tumour.",
        "",
        f"- nnU-Net trained-model folder: `{card['model_folder']}` (nnU-Net's own layout; use it with",
        "  `nnUNetPredictor.initialize_from_trained_model_folder(folder, use_folds=(0,))`).",
        f"- nnU-Net {card['versions']['nnunetv2']}, configuration `{CONFIGURATION}`, fold 0, trainer "
        f"`{card['training']['trainer']}` ({card['training']['epochs']} epochs x "
        f"{card['training']['iterations_per_epoch']} iterations), "
        f"CPU ({card['training']['cpu_threads']} torch thread"
        f"{'s' if card['training']['cpu_threads'] != 1 else ''}).",
        "- Inputs: channel 0 `t1c`, channel 1 `flair` (2 mm isotropic, NIfTI/NRRD via SimpleITK); nnU-Net's own",
        "  preprocessing (z-score per channel) is applied by the predictor.",
        "- Labels: 0 background, 1 edema, 2 enhancing_rim, 3 necrotic_core.",
        f"- Data: {card['data']['n_train']} training cases of seed {card['data']['train_seed']} "
        f"(nnU-Net fold 0: {card['data']['fold0_train']} train / {card['data']['fold0_val']} validation); "
        f"held-out evaluation on {card['held_out']['n_cases']} cases of seed {card['held_out']['seed']}.",
        f"- Plans edits (3d_fullres): features_per_stage {edits['before']['features_per_stage']} -> "
        f"{edits['after']['features_per_stage']}, patch_size {edits['before']['patch_size']} -> "
        f"{edits['after']['patch_size']}, batch_size {edits['before']['batch_size']} -> "
        f"{edits['after']['batch_size']}.",
        f"- Wall times: planning {card['wall_times_s']['planning']:.0f} s, preprocessing "
        f"{card['wall_times_s']['preprocessing']:.0f} s, training (incl. nnU-Net's final validation) "
        f"{card['wall_times_s']['training']:.0f} s; mean epoch {card['training']['mean_epoch_s']:.0f} s.",
        "",
        "## Held-out Dice (nnUNetPredictor, seed %d, %d cases)"
        % (card["held_out"]["seed"], card["held_out"]["n_cases"]),
        "",
        "| lesion union | edema | enhancing_rim | necrotic_core |",
        "|---|---|---|---|",
        "| "
        + " | ".join(
            f"{held[k]:.3f}" if held[k] is not None else "n/a"
            for k in ("lesion_union", "edema", "enhancing_rim", "necrotic_core")
        )
        + " |",
        "",
        "Per-case lesion-union Dice: "
        + ", ".join(f"{r['lesion_union']:.3f}" for r in card["held_out"]["per_case"] if r["lesion_union"] is not None)
        + " (small lesions are the hardest; per-case values in `model_card.json`).",
        "",
    ]
    if card.get("note"):
        lines += [card["note"], ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        card["command"],
        "```",
        "",
        "(Python environment with `nnunetv2` and the demo-data dependencies; CPU only; nothing is downloaded.",
        "CPU training is not bit-reproducible across machines and thread counts.)",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/nnunet_demo"),
        help="working folder for nnUNet_raw/preprocessed/results (default /tmp/nnunet_demo)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model output folder (default {DEFAULT_OUT})")
    parser.add_argument("--n-train", type=int, default=36, help="training cases (default 36)")
    parser.add_argument("--n-eval", type=int, default=12, help="held-out evaluation cases (default 12)")
    parser.add_argument(
        "--trainer",
        default="nnUNetTrainer_5epochs",
        help="nnU-Net trainer class (one of nnunetv2's own; default nnUNetTrainer_5epochs)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for training and prediction (default 1: fastest on a shared 2-core machine)",
    )
    parser.add_argument("--base-features", type=int, default=8, help="features of the first stage (default 8)")
    parser.add_argument("--max-features", type=int, default=64, help="feature cap (default 64)")
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        default=[48, 64, 64],
        help="3d_fullres patch size (default 48 64 64; 0 keeps the planned one)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="3d_fullres batch size (default: planned)")
    parser.add_argument("--no-eval-mirroring", action="store_true", help="held-out prediction without mirroring TTA")
    parser.add_argument("--prepare-only", action="store_true", help="stop after planning and preprocessing")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse raw data, plans and preprocessed data of a previous run in --workdir",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="with --reuse: reuse the trained model in --workdir, only evaluate and export",
    )
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        train_child(args.trainer, args.threads)
        return

    import numpy as np
    import torch
    from SegGradCAMLib.demo import data

    if args.skip_training:
        args.reuse = True
    if args.patch_size == [0]:
        args.patch_size = None
    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    raw, preprocessed, results = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    logs = work / "logs"
    for folder in (raw, preprocessed, results, logs):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "nnUNet_raw": str(raw),
            "nnUNet_preprocessed": str(preprocessed),
            "nnUNet_results": str(results),
            "nnUNet_compile": "false",
        }
    )
    import nnunetv2  # after the environment: nnunetv2.paths reads it on import

    wall = {"data": 0.0, "planning": 0.0, "preprocessing": 0.0, "training": 0.0}
    plans_path = preprocessed / DATASET_NAME / f"{PLANS}.json"
    edits_path = work / "plans_edits.json"
    cases_path = work / "cases.json"

    if args.reuse and plans_path.is_file() and edits_path.is_file():
        log("reusing raw data, plans and preprocessed data")
        edits = json.loads(edits_path.read_text())
        cases = json.loads(cases_path.read_text())
        wall.update(edits.get("wall", {}))
    else:
        for folder in (raw / DATASET_NAME, preprocessed / DATASET_NAME):
            if folder.exists():
                shutil.rmtree(folder)
        t = time.time()
        cases = write_raw_dataset(raw, args.n_train, data.TRAIN_SEED)
        cases_path.write_text(json.dumps(cases, indent=1))
        wall["data"] = time.time() - t
        log(f"wrote {len(cases)} training cases in {wall['data']:.0f} s")

        wall["planning"] = run(
            [
                nnunet_command("nnUNetv2_plan_and_preprocess"),
                "-d",
                str(DATASET_ID),
                "-c",
                CONFIGURATION,
                "--verify_dataset_integrity",
                "-npfp",
                "1",
                "-np",
                "1",
                "--no_pp",
                "--no_pbar",
            ],
            logs / "plan.log",
        )
        edits = edit_plans(plans_path, args.max_features, args.base_features, args.patch_size, args.batch_size)
        log(f"plans edits: {json.dumps(edits)}")
        wall["preprocessing"] = run(
            [
                nnunet_command("nnUNetv2_preprocess"),
                "-d",
                str(DATASET_ID),
                "-c",
                CONFIGURATION,
                "-np",
                "1",
                "--no_pbar",
            ],
            logs / "preprocess.log",
        )
        edits["wall"] = {k: wall[k] for k in ("data", "planning", "preprocessing")}
        edits_path.write_text(json.dumps(edits, indent=1))

    if args.prepare_only:
        return
    model_dir = results / DATASET_NAME / f"{args.trainer}__{PLANS}__{CONFIGURATION}"
    training_record = work / "training_record.json"
    if args.skip_training:
        if not (model_dir / "fold_0" / "checkpoint_final.pth").is_file() or not training_record.is_file():
            raise SystemExit(f"--skip-training: no finished training of {args.trainer} in {work}")
        wall["training"] = json.loads(training_record.read_text())["wall_training_s"]
        log(f"reusing the trained model {model_dir}")
    else:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        # nnU-Net's Python training entry run_training (what ``nnUNetv2_train 901 3d_fullres 0 -tr <trainer>
        # -device cpu`` calls), in a child process with a fixed number of torch threads: ``nnUNetv2_train
        # -device cpu`` gives torch all cores, which is several times slower on a small shared machine.
        wall["training"] = run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--train-child",
                "--trainer",
                args.trainer,
                "--threads",
                str(args.threads),
            ],
            logs / "train.log",
            # no background augmentation workers (only for training: the planner calls
            # torch.set_num_threads(nnUNet_n_proc_DA), which rejects 0)
            env={"nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": str(args.threads)},
        )
        training_record.write_text(
            json.dumps({"trainer": args.trainer, "threads": args.threads, "wall_training_s": wall["training"]})
        )
    times = epoch_times(model_dir / "fold_0")
    log(f"training done in {wall['training']:.0f} s; epoch times {times}")

    use_direct_trainer_lookup()
    from nnunetv2.utilities import find_objects

    trainer_class = find_objects.recursive_find_trainer_class_by_name(args.trainer)
    trainer_file = Path(sys.modules[trainer_class.__module__].__file__)
    checkpoint_info = describe_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    checkpoint = torch.load(str(model_dir / "fold_0" / "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    epochs = int(checkpoint["current_epoch"])
    del checkpoint

    held_out = evaluate(model_dir, work, args.n_eval, data.EVAL_SEED, not args.no_eval_mirroring)
    log(f"held-out mean Dice: {held_out['mean_dice']}")

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{DATASET_NAME}/*"):
        shutil.rmtree(old)
    target = copy_model(model_dir, out)
    splits = json.loads((preprocessed / DATASET_NAME / "splits_final.json").read_text())[0]
    validation_summary = model_dir / "fold_0" / "validation" / "summary.json"
    fold0_validation = None
    if validation_summary.is_file():
        summary = json.loads(validation_summary.read_text())
        fold0_validation = {
            "foreground_mean_dice": summary["foreground_mean"]["Dice"],
            "per_label_dice": {k: v["Dice"] for k, v in summary["mean"].items()},
        }

    command = (
        "PYTHONPATH=SegGradCAM python scripts/train_nnunet_demo.py"
        f" --workdir {args.workdir} --n-train {args.n_train} --n-eval {args.n_eval} --trainer {args.trainer}"
        f" --base-features {args.base_features} --max-features {args.max_features} --threads {args.threads}"
        + f" --patch-size {' '.join(map(str, args.patch_size)) if args.patch_size else 0}"
        + (f" --batch-size {args.batch_size}" if args.batch_size else "")
        + (" --no-eval-mirroring" if args.no_eval_mirroring else "")
    )
    iterations = 250  # nnUNetTrainer default, unchanged by the Xepochs variants
    card = {
        "name": "demo-lesions-nnunet",
        "purpose": "Demonstration only, not clinical. Synthetic lesions in real MRI heads.",
        "framework": "nnU-Net v2",
        "model_folder": str(target.relative_to(out)),
        "dataset": DATASET_NAME,
        "configuration": CONFIGURATION,
        "plans": PLANS,
        "fold": 0,
        "checkpoint": "fold_0/checkpoint_final.pth",
        "channels": list(data.CHANNELS),
        "labels": {str(i): label for i, label in enumerate(data.LABELS)},
        "spacing_mm": [data.SPACING_MM] * 3,
        "command": command,
        "training": {
            "trainer": args.trainer,
            "trainer_source": f"nnunetv2/{trainer_file.relative_to(Path(nnunetv2.__file__).parent)}",
            "entry": (
                f"nnunetv2.run.run_training.run_training('{DATASET_ID}', '{CONFIGURATION}', 0, '{args.trainer}', "
                f"'{PLANS}', device=torch.device('cpu')) with torch.set_num_threads({args.threads}), "
                f"nnUNet_n_proc_DA=0; equivalent to nnUNetv2_train {DATASET_ID} {CONFIGURATION} 0 "
                f"-tr {args.trainer} -device cpu except for the thread count"
            ),
            "epochs": epochs,
            "iterations_per_epoch": iterations,
            "validation_iterations_per_epoch": 50,
            "device": "cpu",
            "cpu_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "nnUNet_n_proc_DA": 0,
            "epoch_times_s": [round(t, 1) for t in times],
            "mean_epoch_s": float(np.mean(times)) if times else float("nan"),
        },
        "plans_edits": {k: edits[k] for k in ("before", "after", "n_stages", "strides")},
        "wall_times_s": {k: round(v, 1) for k, v in wall.items()},
        "data": {
            "recipe": "SegGradCAMLib.demo.data.iter_cases",
            "train_seed": data.TRAIN_SEED,
            "n_train": len(cases),
            "subjects": list(data.SUBJECTS),
            "fold0_train": len(splits["train"]),
            "fold0_val": len(splits["val"]),
            "eval_seed": data.EVAL_SEED,
        },
        "fold0_validation": fold0_validation,
        "held_out": held_out,
        "checkpoint_contents": checkpoint_info,
        "versions": {
            "nnunetv2": nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else _version("nnunetv2"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "dynamic_network_architectures": _version("dynamic_network_architectures"),
            "torchvision": _version("torchvision"),
            "torchvision_importable": torchvision_importable(),
        },
    }
    union = held_out["mean_dice"]["lesion_union"]
    notes = []
    if union is None or union < 0.7:
        notes.append(
            f"Held-out lesion-union Dice {union} is below the 0.7 aim: the CPU time budget "
            f"allowed only {epochs} epochs of {iterations} iterations with a narrow network."
        )
    weak = {k: v for k, v in held_out["mean_dice"].items() if k != "lesion_union" and (v is None or v < 0.5)}
    if weak:
        notes.append(
            "Weak classes (held-out Dice < 0.5): "
            + ", ".join(f"{k} {v}" for k, v in weak.items())
            + f". The small necrotic core is under-segmented after this short CPU training ({epochs} "
            f"epochs x {iterations} iterations); use the model for lesion / edema / rim demonstrations."
        )
    if notes:
        card["note"] = "Note: " + " ".join(notes)
    write_readme(out, card)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    files, total = folder_listing(out)
    card["files"] = files
    card["total_bytes"] = total
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    files, total = folder_listing(out)
    log(f"wrote {out} ({total / 1e6:.2f} MB):")
    for f in files:
        log(f"  {f['path']}  {f['bytes']}")
    if total > 10_000_000:
        log("WARNING: model folder larger than 10 MB")


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
