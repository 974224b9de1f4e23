"""``seggradcam explain``: segment a volume and write one heatmap per class and layer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import SegGradCAMError
from ..selection import ALL_CLASSES, AUTO_LAYER, CAM_METHODS, class_indices, layer_selection, pick_device
from .progress import progress_bar


def add_explain_parser(sub) -> None:
    """The ``explain`` subcommand."""
    explain = sub.add_parser("explain", help="segment a volume and write one heatmap per class")
    explain.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="volume file(s) (NRRD, NIfTI, ...) or DICOM folder(s), one per model channel; FILE@N picks volume N of a 4D file")
    explain.add_argument("--model", default="hdbet", help="registered model name (see 'seggradcam models') or a model file/folder")
    explain.add_argument("--out", required=True, type=Path, help="output folder")
    explain.add_argument("--layers", default=AUTO_LAYER, help="'auto' (finest decoder stage) or comma-separated layer names")
    explain.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    explain.add_argument("--classes", default=ALL_CLASSES,
                         help="'all' (every class but background) or comma-separated class names or indices")
    explain.add_argument("--region", type=Path, help="mask volume on the input grid: explain the class score inside this region only")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    explain.add_argument("--trust-model", action="store_true",
                         help="allow model formats that run code (TorchScript, MONAI bundle expressions)")
    explain.add_argument("--no-overview", action="store_true", help="skip overview.png")


def explain_command(args: argparse.Namespace) -> dict:
    """Files in, files out; returns the explain.json content."""
    import numpy as np
    import torch

    from ..evaluation.energy import heatmap_energy_fractions
    from ..inference import explain_volume
    from ..models import load_model
    from ..volumes.files import read_channels, read_volume, safe_filename, same_geometry, write_like

    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = pick_device(args.device)
    volumes = read_channels(args.inputs)
    reference = volumes[0]
    timings["read_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model = load_model(args.model, trust=args.trust_model, device=device)
    spec = model.spec
    timings["load_model_s"] = time.perf_counter() - start
    spec.check_input_count(len(volumes))
    classes = class_indices(args.classes, spec.labels)
    layers = layer_selection(args.layers)
    regions = None
    if args.region is not None:
        region = read_volume(str(args.region))
        if not same_geometry(region, reference):
            raise SegGradCAMError(f"Region {args.region} is not on the input's grid; resample it onto {reference.path} first.")
        if not (region.array > 0).any():
            raise SegGradCAMError(f"Region {args.region} is empty (no voxel > 0).")
        regions = np.repeat((region.array > 0)[None], len(classes), axis=0)

    image = np.stack([v.array for v in volumes])
    spacing_zyx = tuple(reference.spacing)[::-1]
    bar, update = progress_bar(f"{spec.name} {args.method}")
    start = time.perf_counter()
    try:
        result = explain_volume(
            model, image, spacing_zyx, reference.direction, layers=layers, classes=classes,
            method=args.method, regions=regions, device=device, progress=update,
        )
    finally:
        bar.close()
    timings["explain_s"] = time.perf_counter() - start
    timings.update(result.timings)

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_like(result.labels.astype(np.uint8 if len(spec.labels) < 256 else np.int16), reference, out / "segmentation.nrrd")
    several = len(result.layers) > 1
    class_entries, rows = [], []
    for i, c in enumerate(result.classes):
        name = spec.labels[c]
        mask = result.labels == c if regions is None else regions[i]
        entry = {"index": c, "name": name, "voxels": int((result.labels == c).sum()), "layers": {}}
        for layer in result.layers:
            heat = result.heatmaps[layer][i]
            filename = f"heatmap_{safe_filename(name)}" + (f"_{safe_filename(layer)}" if several else "") + ".nrrd"
            write_like(heat, reference, out / filename)
            fractions = heatmap_energy_fractions(heat, mask, spacing_zyx, shell_mm=3.0)
            entry["layers"][layer] = {
                "file": filename,
                "max_raw": result.raw_max[layer][i],
                "max": float(heat.max()),
                "mean": float(heat.mean()),
                **fractions,
            }
            rows.append((f"{name} / {layer}", c, heat))
        class_entries.append(entry)
    if not args.no_overview:
        from ..volumes.overview import save_overview

        save_overview(out / "overview.png", reference.array, result.labels, rows, reference.spacing,
                      reference.direction, title=f"{spec.name} — {args.method}")
    timings["write_s"] = time.perf_counter() - start
    report = {
        "tool": "seggradcam",
        "model": {"name": spec.name, "sha256": spec.sha256, "source": spec.source, "labels": spec.labels,
                  "trusted_code": spec.trusted_code, "subnormal_weights_zeroed": model.subnormals_zeroed},
        "method": args.method,
        "layers": result.layers,
        "normalisation": "each heatmap divided by its global maximum over the volume (max_raw)",
        "region": str(args.region) if args.region else "predicted mask of each class",
        "classes": class_entries,
        "inputs": [v.path for v in volumes],
        "input_geometry": reference.geometry(),
        "device": device,
        "torch": torch.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "segmentation": "segmentation.nrrd",
    }
    (out / "explain.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def print_summary(report: dict, out: Path) -> None:
    """One line per class and layer: voxels, heatmap energy inside the mask, file."""
    for entry in report["classes"]:
        for layer, info in entry["layers"].items():
            print(f"{entry['name']} [{layer}]: {entry['voxels']} voxels, "
                  f"heatmap energy inside mask {info['energy_inside']:.1%}, "
                  f"within 3 mm {info['energy_inside'] + info['energy_shell']:.1%} -> {out / info['file']}")
    print(f"Wrote {out / 'explain.json'}")
