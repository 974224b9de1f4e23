"""``seggradcam explain``: segment a volume and write one heatmap per class and layer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SegGradCAMError
from ..models.cards import AUTO_METHOD, METHOD_CHOICES
from ..selection import ALL_CLASSES, AUTO_LAYER, class_indices, layer_selection, pick_device, split_list
from .cohort import add_engine_options
from .resources import peak_memory_mb, set_threads

if TYPE_CHECKING:  # torch stays out of the import of the command line
    from ..inference import ProgressCallback


def add_explain_parser(sub, parents: list) -> None:
    """The ``explain`` subcommand."""
    explain = sub.add_parser("explain", parents=parents, help="segment a volume and write one heatmap per class")
    explain.add_argument("inputs", nargs="*", metavar="INPUT",
                         help="volume file(s) (NRRD, NIfTI, ...) or DICOM folder(s), one per model channel; FILE@N picks volume N of a 4D file")
    explain.add_argument("--cohort", type=Path, metavar="LIST",
                         help="explain many cases instead of INPUT: a list file (one case per line, channel files "
                              "comma-separated) or a folder of volumes; each case into OUT/<case id>/")
    explain.add_argument("--model", default="hdbet", help="registered model name (see 'seggradcam models') or a model file/folder")
    explain.add_argument("--out", required=True, type=Path, help="output folder")
    explain.add_argument("--layers", default=AUTO_LAYER, help="'auto' (finest decoder stage) or comma-separated layer names")
    explain.add_argument("--method", default=AUTO_METHOD, choices=METHOD_CHOICES,
                         help="'auto' (default): the method the model's card chose by evidence, else hirescam")
    explain.add_argument("--classes", default=ALL_CLASSES,
                         help="'all' (every class but background) or comma-separated class names or indices")
    explain.add_argument("--region", type=Path, help="mask volume on the input grid: explain the class score inside this region only")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    explain.add_argument("--trust-model", action="store_true",
                         help="allow model formats that run code (TorchScript, MONAI bundle expressions)")
    explain.add_argument("--no-overview", action="store_true", help="skip overview.png")
    explain.add_argument("--heatmap-dtype", default="float32", choices=HEATMAP_DTYPES,
                         help="float32, or uint8 (0..255 of the normalised map; for many classes: a quarter "
                              "of the disk) - the raw maximum is kept in each file's metadata and explain.json")
    explain.add_argument("--amp", action="store_true",
                         help="run the network in bfloat16 autocast (GPU, or a CPU with AMX/AVX-512 BF16); "
                              "the CAM arithmetic stays float32")
    explain.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    explain.add_argument("--step-size", type=float, default=0.5,
                         help="nnU-Net models: sliding-window step as a fraction of the patch (nnU-Net's tile_step_size)")
    explain.add_argument("--folds", help="nnU-Net folders: comma-separated folds (default: every fold_N with the "
                                          "checkpoint; 'all' = fold_all)")
    explain.add_argument("--checkpoint", help="nnU-Net folders: checkpoint file name (default checkpoint_final.pth)")
    explain.add_argument("--faithfulness", action="store_true",
                         help="score each heatmap: Deletion/Insertion AUC against 5 random orderings and the mask, "
                              "with a verdict (on this volume only; several times the explain time)")
    explain.add_argument("--mirror", action="store_true",
                         help="nnU-Net models: test-time mirroring (as nnU-Net predicts by default); off by default")
    add_engine_options(explain)


OVERVIEW_ROWS = 6  # heatmaps drawn in overview.png (the first ones; every map is written to a file)
HEATMAP_DTYPES = ("float32", "uint8")


def encode_heatmap(heat, dtype: str):
    """A normalised map ``(Z, Y, X)`` in 0..1 as written: float32, or uint8 = round(255 x value)."""
    import numpy as np

    return heat if dtype == "float32" else np.rint(np.clip(heat, 0, 1) * 255).astype(np.uint8)


def load_explain_model(args: argparse.Namespace, device: str):
    """The model of ``args`` (``--model``, ``--trust-model``, nnU-Net's ``--folds``/``--checkpoint``)."""
    from ..models import load_model

    return load_model(args.model, trust=args.trust_model, device=device,
                      folds=split_list(args.folds) if args.folds else None, checkpoint=args.checkpoint)


def explain_command(args: argparse.Namespace, progress: ProgressCallback | None = None,
                    load=load_explain_model) -> dict:
    """Files in, files out; returns the explain.json content (a cohort's: what the run did).
    ``progress(stage, done, total)``; ``load(args, device)`` gives the model (cohorts: once per
    process)."""
    if args.cohort is not None:
        return explain_cohort(args, progress)
    if not args.inputs:
        raise SegGradCAMError("Give the input volume(s), one per model channel, or --cohort LIST.")
    import numpy as np
    import torch

    from ..evaluation.energy import heatmap_energy_fractions
    from ..inference import ClassHeatmap, explain_volume
    from ..models.cards import resolve_method
    from ..volumes.files import read_channels, read_volume, safe_filename, same_geometry, write_like

    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    began = start = time.perf_counter()
    step("read", 0, 1)
    device = pick_device(args.device)
    choice = resolve_method(args.method, args.model)
    method = choice.method
    threads = set_threads(args.threads)
    volumes = read_channels(args.inputs)
    reference = volumes[0]
    region = None if args.region is None else read_volume(str(args.region))
    timings["read_s"] = time.perf_counter() - start
    step("read", 1, 1)

    start = time.perf_counter()
    model = load(args, device)
    spec = model.spec
    timings["load_model_s"] = time.perf_counter() - start
    step("startup", 1, 1)
    spec.check_input_count(len(volumes))
    if model.nnunet is not None:
        check_nnunet_inputs(model, args)
    if args.faithfulness:
        from ..evaluation.dataset import check_scorable

        check_scorable(model)
        if args.region is not None:
            raise SegGradCAMError("--faithfulness scores the predicted masks; leave out --region.")
    classes = class_indices(args.classes, spec.labels)
    layers = layer_selection(args.layers)
    regions = None
    if region is not None:
        if not same_geometry(region, reference):
            raise SegGradCAMError(f"Region {args.region} is not on the input's grid; resample it onto {reference.path} first.")
        if not (region.array > 0).any():
            raise SegGradCAMError(f"Region {args.region} is empty (no voxel > 0).")
        regions = np.repeat((region.array > 0)[None], len(classes), axis=0)

    image = np.stack([v.array for v in volumes])
    spacing_zyx = tuple(reference.spacing)[::-1]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    chosen = model.chosen_layers(layers)
    several = chosen == "auto" or len(chosen) > 1
    files = len(classes) * (1 if chosen == "auto" else len(chosen)) + 2 + (not args.no_overview)
    written: list[str] = []
    entries: dict[int, dict] = {}
    overview_rows: list[tuple[str, str, int, np.ndarray]] = []  # (class name, layer, class index, map)

    def write_heatmap(heatmap: ClassHeatmap, labels: np.ndarray) -> None:
        """Write one class map as soon as it is on the input grid (only one is held at a time)."""
        c, layer, heat = heatmap.class_index, heatmap.layer, heatmap.array
        name = spec.labels[c]
        filename = f"heatmap_{safe_filename(name)}" + (f"_{safe_filename(layer)}" if several else "") + ".nrrd"
        own = labels == c if heatmap.mask is None else heatmap.mask
        mask = own if regions is None else regions[heatmap.position]
        if c not in entries:  # once per class, not per layer
            entries[c] = {"index": c, "name": name, "voxels": int(own.sum()), "layers": {}}
        entry = entries[c]
        entry["layers"][layer] = {
            "file": filename, "max_raw": heatmap.raw_max, "max": float(heat.max()), "mean": float(heat.mean()),
            **heatmap_energy_fractions(heat, mask, spacing_zyx, shell_mm=3.0),
        }
        metadata = {"SegGradCAM.RawMax": f"{heatmap.raw_max:.9g}", "SegGradCAM.Method": method,
                    "SegGradCAM.Layer": layer, "SegGradCAM.Class": name}
        if args.heatmap_dtype == "uint8":
            metadata["SegGradCAM.ValueScale"] = f"{1 / 255:.9g}"  # stored value x scale = normalised value
        write_like(encode_heatmap(heat, args.heatmap_dtype), reference, out / filename, metadata)
        if len(overview_rows) < OVERVIEW_ROWS and not args.no_overview:
            overview_rows.append((name, layer, c, heat))
        written.append(filename)
        step("write", len(written), files)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        if model.nnunet is not None:
            result = explain_nnunet_files(model, args, method, layers, classes, regions, device, progress,
                                          write_heatmap)
        else:
            result = explain_volume(
                model, image, spacing_zyx, reference.direction, layers=layers, classes=classes,
                method=method, regions=regions, device=device, progress=progress, amp=args.amp,
                on_heatmap=write_heatmap,
            )
    except torch.cuda.OutOfMemoryError as error:
        raise SegGradCAMError(
            f"{spec.name} ran out of GPU memory on {device} ({str(error).splitlines()[0][:120]}); "
            "try --device cpu or fewer layers"
        ) from None
    timings["explain_s"] = time.perf_counter() - start
    timings.update(result.timings)
    if args.faithfulness:
        from ..evaluation.dataset import cases_from_volume, nnunet_case
        from ..evaluation.faithfulness import explanation_faithfulness

        start = time.perf_counter()
        if model.nnunet is not None:  # scored with the first fold's weights, as evaluate does
            model.network.load_state_dict(model.nnunet.parameters[0])
            found = [nnunet_case(model, args.inputs, "volume")]
        else:
            found = cases_from_volume(model, image, spacing_zyx, reference.direction, "volume", classes, device=device)
        scores = explanation_faithfulness(model, found, classes, result.layers, method, device,
                                          progress=lambda done, total: step("faithfulness", done, total))
        for (c, layer), entry in scores.items():
            entries[c]["layers"][layer]["faithfulness"] = entry
        timings["faithfulness_s"] = time.perf_counter() - start

    start = time.perf_counter()
    write_like(result.labels.astype(np.uint8 if len(spec.labels) < 256 else np.int16), reference, out / "segmentation.nrrd")
    written.append("segmentation.nrrd")
    step("write", len(written), files)
    if not args.no_overview:
        from ..volumes.overview import save_overview

        rows = [(f"{name} / {layer}" + ("" if "faithfulness" not in entries[c]["layers"][layer] else
                                         f"\n{entries[c]['layers'][layer]['faithfulness']['verdict']}"), c, heat)
                for name, layer, c, heat in overview_rows]
        save_overview(out / "overview.png", reference.array, result.labels, rows, reference.spacing,
                      reference.direction, title=f"{spec.name} — {method}")
        written.append("overview.png")
        step("write", len(written), files)
    timings["write_s"] = time.perf_counter() - start + result.timings.get("postprocess_s", 0.0)
    report = {
        "tool": "seggradcam",
        "model": {"name": spec.name, "sha256": spec.sha256, "source": spec.source, "labels": spec.labels,
                  "trusted_code": spec.trusted_code, "subnormal_weights_zeroed": model.subnormals_zeroed},
        **choice.as_report(),
        "layers": result.layers,
        "normalisation": "each heatmap divided by its global maximum over the volume (max_raw)",
        "heatmap_dtype": args.heatmap_dtype,
        "region": str(args.region) if args.region else "predicted mask of each class",
        "classes": [entries[c] for c in classes],
        "inputs": [v.path for v in volumes],
        "input_geometry": reference.geometry(),
        "device": device,
        "amp": bool(args.amp),
        "torch": torch.__version__,
        "threads": threads,
        "peak_memory_mb": peak_memory_mb(device),
        "timings": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - began}.items()},
        **({"checks": result.checks} if result.checks else {}),
        **({"nnunet": {"model": spec.description, "step_size": args.step_size, "mirroring": bool(args.mirror),
                       "note": "the segmentation is nnU-Net's own prediction, "
                               + ("with" if args.mirror else "without") + " test-time mirroring (nnU-Net and "
                               "SlicerNNUnet mirror by default, so theirs can differ slightly unless --mirror)"}}
           if model.nnunet is not None else {}),
        "segmentation": "segmentation.nrrd",
    }
    (out / "explain.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    step("write", files, files)
    return report


def explain_cohort(args: argparse.Namespace, progress: ProgressCallback | None = None) -> dict:
    """``explain --cohort LIST``: each case as a single run writes it, into ``OUT/<case id>/``."""
    import copy

    from ..cohort.cases import cohort_cases
    from ..cohort.run import run_cohort
    from ..models.cards import resolve_method
    from .cohort import ExplainTask, case_device, engine_options, finish_cohort

    if args.inputs:
        raise SegGradCAMError("Give either input volumes or --cohort LIST, not both.")
    options = engine_options(args)
    cases = cohort_cases(str(args.cohort))
    resolve_method(args.method, args.model)  # a bad card fails here, not in every case
    task_args = copy.copy(args)
    task_args.device = case_device(args.device, options)
    report = run_cohort(ExplainTask(task_args), cases, args.out, options, progress)
    return {"cohort": finish_cohort("explain", report, options, len(cases), args.out)}


def check_nnunet_inputs(model, args: argparse.Namespace) -> None:
    """An nnU-Net model reads its inputs itself (plans.json's image reader): plain files only, NIfTI
    for nibabel's readers."""
    from ..inference_nnunet import READERS, reader_name

    reader = reader_name(model)
    if reader not in READERS:
        raise SegGradCAMError(f"{model.spec.name} reads images with {reader}; supported: {', '.join(READERS)}.")
    if any("@" in path or Path(path).is_dir() for path in args.inputs):
        raise SegGradCAMError("nnU-Net models read each channel from its own file (NRRD, NIfTI): no FILE@N, no DICOM folder.")
    if reader.startswith("Nibabel") and not all(path.endswith((".nii", ".nii.gz")) for path in args.inputs):
        raise SegGradCAMError(f"{model.spec.name} reads images with nibabel ({reader}): give NIfTI files (.nii.gz); "
                              "convert others first, e.g. in 3D Slicer or with SimpleITK.")
    if not 0 < args.step_size <= 1:
        raise SegGradCAMError(f"--step-size must be in (0, 1]; got {args.step_size}.")


def explain_nnunet_files(model, args: argparse.Namespace, method: str, layers, classes, regions, device, progress,
                         on_heatmap):
    """nnU-Net's pipeline on the input files (checked by :func:`check_nnunet_inputs`)."""
    from ..inference_nnunet import explain_nnunet

    return explain_nnunet(model, args.inputs, args.step_size, args.mirror, layers=layers, classes=classes,
                          method=method, region=None if regions is None else regions[0], device=device,
                          progress=progress, on_heatmap=on_heatmap)


def print_summary(report: dict, out: Path) -> None:
    """The method and why, then one line per class and layer: voxels, heatmap energy inside the mask, file."""
    card = report.get("method_card")
    print(f"Method {report['method']}" + (f" (auto: {card['basis']})" if card else ""))
    for entry in report["classes"]:
        for layer, info in entry["layers"].items():
            print(f"{entry['name']} [{layer}]: {entry['voxels']} voxels, "
                  f"heatmap energy inside mask {info['energy_inside']:.1%}, "
                  f"within 3 mm {info['energy_inside'] + info['energy_shell']:.1%} -> {out / info['file']}")
            if "faithfulness" in info:
                score = info["faithfulness"]
                print(f"    faithfulness: {score['verdict']} (Deletion AUC {score['deletion_auc']:.3f}, random "
                      f"{score['random']['deletion_mean']:.3f} ± {score['random']['deletion_sd']:.3f}, mask "
                      f"{score['mask']['deletion_auc']:.3f}; Insertion {score['insertion_auc']:.3f}; {score['basis']})")
    print(f"Wrote {out / 'explain.json'} ({report['timings']['total_s']:.1f} s in all)")
    print(f"See it in the browser viewer: seggradcam web {out}   (3D Slicer: load the .nrrd files)")
