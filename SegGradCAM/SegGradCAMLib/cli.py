"""Command line: ``seggradcam explain`` and ``seggradcam models``.

User errors (bad files, unknown names, ...) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_train import add_roar_parser, add_train_parser, run_roar, run_train
from .errors import SegGradCAMError
from .targets import ALL_CLASSES, class_indices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seggradcam",
        description="Seg-Grad-CAM heatmaps for pre-trained medical segmentation networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="segment a volume and write one heatmap per class")
    explain.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="volume file(s) (NRRD, NIfTI, ...) or DICOM folder(s), one per model channel; FILE@N picks volume N of a 4D file")
    explain.add_argument("--model", default="hdbet", help="registered model name (see 'seggradcam models') or a model file/folder")
    explain.add_argument("--out", required=True, type=Path, help="output folder")
    explain.add_argument("--layers", default="auto", help="'auto' (finest decoder stage) or comma-separated layer names")
    explain.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "hirescam", "layercam"])
    explain.add_argument("--classes", default=ALL_CLASSES,
                         help="'all' (every class but background) or comma-separated class names or indices")
    explain.add_argument("--region", type=Path, help="mask volume on the input grid: explain the class score inside this region only")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    explain.add_argument("--trust-model", action="store_true",
                         help="allow model formats that run code (TorchScript, MONAI bundle expressions)")
    explain.add_argument("--no-overview", action="store_true", help="skip overview.png")
    sub.add_parser("models", help="list the registered models")
    _add_evaluate_parser(sub)
    add_train_parser(sub)
    add_roar_parser(sub)
    return parser


def _add_evaluate_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="faithfulness of the heatmaps: Deletion/Insertion, ROAD, sanity checks")
    evaluate.add_argument("--model", default="hdbet", help="registered model name or a model file/folder")
    evaluate.add_argument("--data", required=True,
                          help="folder of volumes (one case each), a list file (one case per line, channels "
                               "comma-separated), or 'demo' (the demo model's held-out slices)")
    evaluate.add_argument("--out", required=True, type=Path, help="output folder")
    evaluate.add_argument("--metrics", default="deletion,insertion,road,randomization",
                          help="comma-separated: deletion, insertion (computed together), road, randomization")
    evaluate.add_argument("--methods", default="gradcam",
                          help="comma-separated CAM methods (gradcam, gradcam++, hirescam, layercam)")
    evaluate.add_argument("--baselines", default="random,mask,gradient",
                          help="comma-separated baseline explanations (random, mask, gradient), or 'none'")
    evaluate.add_argument("--layers", default="auto", help="'auto' (finest decoder stage) or comma-separated layer names")
    evaluate.add_argument("--classes", default=ALL_CLASSES, help="'all' or comma-separated class names or indices")
    evaluate.add_argument("--max-slices", type=int, default=100, help="at most this many cases (slices for 2D models)")
    evaluate.add_argument("--step", type=float, default=0.01, help="fraction of voxels per Deletion/Insertion step")
    evaluate.add_argument("--baseline", default="blur", choices=["blur", "mean"], help="what removed voxels become")
    evaluate.add_argument("--sigma-mm", type=float, default=20.0,
                          help="blur sigma in mm for --baseline blur (larger than the structures to remove)")
    evaluate.add_argument("--road-percentages", default="10,30,50,70,90", help="ROAD removal percentages")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", type=int, default=32, help="perturbed inputs per network call")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--threads", type=int, default=0,
                          help="CPU threads for torch (0: torch's default; 1 is fastest for small 2D "
                               "models on a busy machine)")
    evaluate.add_argument("--trust-model", action="store_true", help="allow model formats that run code")


def run_evaluate(args: argparse.Namespace) -> dict:
    """Load model and cases, evaluate, write metrics.json/csv, plots and report.html."""
    from .evaluation import EvalConfig, evaluate, load_cases
    from .models import load_model
    from .report import write_outputs

    def names(text: str) -> list[str]:
        return [] if text.strip() == "none" else [p.strip() for p in text.split(",") if p.strip()]

    if args.max_slices < 1 or not 0 < args.step <= 1:
        raise SegGradCAMError("--max-slices must be >= 1 and --step a fraction in (0, 1].")
    try:
        percentages = [float(p) / 100 for p in names(args.road_percentages)]
    except ValueError:
        raise SegGradCAMError(
            f"--road-percentages takes numbers like 10,30,50; got {args.road_percentages!r}.") from None
    if not percentages or not all(0 < p < 1 for p in percentages):
        raise SegGradCAMError("--road-percentages must lie strictly between 0 and 100.")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = pick_device(args.device)
    model = load_model(args.model, trust=args.trust_model, device=device)
    classes = class_indices(args.classes, model.spec.labels)
    config = EvalConfig(
        metrics=names(args.metrics), methods=names(args.methods), baselines=names(args.baselines),
        layers="auto" if args.layers == "auto" else names(args.layers), classes=classes, step=args.step,
        baseline=args.baseline, sigma_mm=args.sigma_mm, road_percentages=percentages, seed=args.seed,
        batch_size=args.batch_size, device=device,
    )
    config.check()
    cases = load_cases(model, args.data, classes, args.max_slices, args.seed, args.batch_size, device)
    timings["load_s"] = time.perf_counter() - start
    bar, update = _progress_bar(f"evaluate {model.spec.name}")
    try:
        result = evaluate(model, cases, config, progress=update)
    finally:
        bar.close()
    timings["evaluate_s"] = result.seconds
    return write_outputs(args.out, model, args.data, result, config, timings, device)


def pick_device(name: str) -> str:
    """Resolve ``auto``/``cpu``/``cuda[:N]``; refuse CUDA where there is none."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise SegGradCAMError(f"--device {name} was requested but CUDA is not available here; use --device cpu.")
        return name
    raise SegGradCAMError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _progress_bar(total_label: str):
    from tqdm import tqdm

    bar = tqdm(total=1, desc=total_label, unit="step", disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def run_explain(args: argparse.Namespace) -> dict:
    """Files in, files out; returns the explain.json content."""
    import numpy as np
    import torch

    from .inference import explain_volume
    from .models import load_model
    from .stats import heatmap_energy_fractions
    from .volume_io import read_channels, read_volume, same_geometry, write_like

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
    if len(volumes) != spec.in_channels:
        raise SegGradCAMError(
            f"Model {spec.name} takes {spec.in_channels} input volume(s) ({spec.in_channels} channels); got {len(volumes)}."
        )
    classes = class_indices(args.classes, spec.labels)
    layers = "auto" if args.layers == "auto" else [p.strip() for p in args.layers.split(",") if p.strip()]
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
    bar, update = _progress_bar(f"{spec.name} {args.method}")
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
            filename = f"heatmap_{safe_name(name)}" + (f"_{safe_name(layer)}" if several else "") + ".nrrd"
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
        from .overview import save_overview

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


def run_models() -> None:
    from .models import DEFAULT_MODEL, list_models

    for entry in list_models():
        mark = "*" if entry["name"] == DEFAULT_MODEL else " "
        state = "" if entry["installed"] else "  [not installed]"
        print(f"{mark} {entry['name']:<14} {entry['description']}{state}")
    print("\nAlso accepted as --model: a MONAI bundle folder, a TorchScript file (--trust-model), "
          "or a JSON spec naming a MONAI architecture and a state_dict file.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            run_models()
        elif args.command == "train":
            run_train(args)
        elif args.command == "roar":
            run_roar(args)
        elif args.command == "evaluate":
            report = run_evaluate(args)
            print(f"Evaluated {report['cases']} cases in {report['timings']['evaluate_s']:.0f} s; "
                  f"wrote {args.out / 'metrics.json'}, metrics.csv, report.html")
        else:
            report = run_explain(args)
            for entry in report["classes"]:
                for layer, info in entry["layers"].items():
                    print(f"{entry['name']} [{layer}]: {entry['voxels']} voxels, "
                          f"heatmap energy inside mask {info['energy_inside']:.1%}, "
                          f"within 3 mm {info['energy_inside'] + info['energy_shell']:.1%} -> {args.out / info['file']}")
            print(f"Wrote {args.out / 'explain.json'}")
    except SegGradCAMError as error:
        print(f"seggradcam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seggradcam: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
