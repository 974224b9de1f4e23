"""GPU checks: the engine on CUDA against the CPU, and 100 (or 117) classes of nnU-Net's network on a 256^3 volume.

One script for one short run on a lent GPU machine (NVIDIA H100/H200; it falls back to the CPU when
CUDA is missing, which is how it is tested here). Each part runs in a fresh process; results are
printed as they come and written to ``${OUT:-/tmp/gpu_out}/gpu_checks.json`` after every part.

Parts:

- ``env``: torch, CUDA device, cuDNN/TF32 settings, where the packages were imported from.
- ``demo2d``: the shipped ``demo-lesions-unet2d`` (MONAI 2D UNet) through ``explain_volume`` on the
  held-out demo case (``.gpu_data/demo_case.npz``, made by :func:`make_data`), Grad-CAM and
  HiResCAM, both declared decoder stages: on the CPU, on the device, and on the device with
  ``amp`` (bfloat16 autocast); label agreement and heatmap differences against the CPU, timings,
  peak GPU memory.
- ``nnunet_demo``: the shipped nnU-Net (``demo-lesions-nnunet``) through ``explain_nnunet`` (nnU-Net's
  preprocessing, predictor, windows, Gaussian, export; our CAM pass) on the same case, CPU
  against device: label agreement, map differences, timings, peak GPU memory.
- ``many``: a random-weight nnU-Net as nnU-Net's planner configured it for the demo data (plans.json
  of the shipped model, 3d_fullres, 2 channels, 8-64 features, patch 48x64x64) built for 100
  foreground labels (``--many-classes 117``: issue 25's row, TotalSegmentator's ``total`` task),
  written as a trained-model folder (``fold_0/checkpoint_final.pth`` with
  ``network_weights``, read back by the project's safe loader); every class explained by
  ``explain_nnunet`` on a synthetic two-channel volume at the plans' spacing: wall time, time per
  window and class, peak GPU memory, host peak resident memory, and nnU-Net's plain prediction of
  the same volume (its predictor, ``perform_everything_on_device`` off as in our path, and on, its
  GPU default) for the ratio. A calibration run on 96x128x128 (27 windows) comes first; the whole
  256^3 volume (490 windows) runs when its estimate fits ``--big-limit-s`` and the time left,
  else the largest fitting slab Z x 256 x 256, extrapolated to 256^3 (window loop by windows, the
  rest by voxels). The summary's last line sets it against issue 25's targets (117 classes: host
  <= 16 GB, GPU <= 24 GB; 100 classes: <= 3x nnU-Net's prediction with export).

SimpleITK (nnU-Net's image reader for these plans) is not installed on the GPU machine and its
wheel does not fit the transfer limit: when it is missing, an empty ``SimpleITK`` module stands in
for nnU-Net's module-level imports (any use of it raises), and nnU-Net reads the inputs from .npy
files through a reader that returns what its SimpleITKIO returns (``read_images``: array and
properties). Everything after the file reading is nnU-Net's and the project's own code. The
report's ``env`` says whether the stand-in was used.

``.whl/`` (ignored, carried) holds cp312/py3 wheels, at the versions of ``.venv``, of what these parts
import and the GPU machine lacks: monai, nnunetv2, dynamic_network_architectures, acvl_utils (built
from its sdist: no wheel on the index), batchgenerators, blosc2 with msgpack, ndindex and numexpr,
nibabel, threadpoolctl, httpx, idna (``pip download --no-deps --only-binary=:all: --python-version
3.12 --implementation cp --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION``: ``bash
bench/gpu_wheels.sh`` fetches them all and prints the size that travels);
``.gpu_data/`` (ignored, carried) the demo case. On the GPU machine::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD/SegGradCAM || exit; python3 bench/gpu_checks.py

Here, to make the data file (needs the demo data's sources) and to test the flow on the CPU::

    .venv/bin/python bench/gpu_checks.py --make-data
    .venv/bin/python bench/gpu_checks.py --small

and with only the GPU machine's packages importable (``bench/device_packages.py``), which is how a
missing import shows before the device's minutes are spent::

    .venv/bin/python bench/device_packages.py /tmp/device_site
    PYTHONPATH=/tmp/device_site/startup .venv/bin/python bench/gpu_checks.py --small --skip many

The host peak of 117 classes on the whole 256^3 volume on a CPU, where the window loop takes hours: the
explain is cancelled after the first group's 490 windows and one of the second group, past nnU-Net's
prediction, the targets, the first group's buffers, its agreement check and its maps handed on (about
33 minutes here; bench/RESULTS.md R23)::

    .venv/bin/python bench/gpu_checks.py --part many --shape 256x256x256 --many-classes 117 --cancel-after 491

HD-BET's ``--faithfulness`` on the GPU (issue 25's 60 s row) is ``bench/gpu_hdbet_faithfulness.py``
(two calls: its fold file does not fit one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegGradCAM"))
DATA = ROOT / ".gpu_data" / "demo_case.npz"
SHIPPED_NNUNET = (
    ROOT
    / "SegGradCAM"
    / "Resources"
    / "Models"
    / "demo-lesions-nnunet"
    / "Dataset901_DemoLesions"
    / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
)
FULL = (256, 256, 256)
CALIBRATION = (96, 128, 128)
SMALL_CALIBRATION = (48, 64, 64)  # one window (--small, CPU test)
SMALL_BIG = (48, 64, 96)  # two windows
MANY_CLASSES = 100  # --many-classes: 117 for TotalSegmentator's `total` task (issue 25's memory row)
NNUNET_DEMO_LAYERS = ["decoder.stages.2", "decoder.stages.3"]
STUBBED_SIMPLEITK: list[str] = []  # attributes looked up on the stand-in (must stay empty)


# ---------------------------------------------------------------- helpers (run in the part processes)


def out_dir() -> Path:
    path = Path(os.environ.get("OUT") or "/tmp/gpu_out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def stub_simpleitk_if_missing() -> bool:
    """Put an empty ``SimpleITK`` module in ``sys.modules`` when SimpleITK is not installed (nnU-Net
    imports it at module level); every attribute lookup on it raises and is recorded."""
    if "SimpleITK" in sys.modules or importlib.util.find_spec("SimpleITK") is not None:
        return False
    stub = types.ModuleType("SimpleITK", "stand-in: SimpleITK is not installed here")

    def __getattr__(name: str):
        if not name.startswith("__"):
            STUBBED_SIMPLEITK.append(name)
        raise AttributeError(f"SimpleITK.{name}: SimpleITK is not installed here (stand-in module)")

    stub.__getattr__ = __getattr__
    sys.modules["SimpleITK"] = stub
    return True


def install_array_reader() -> None:
    """nnU-Net's reader lookup gives, for ``SimpleITKIO``, a reader of ``.npy`` files (geometry in a
    ``.json`` beside each) that returns what SimpleITKIO.read_images returns."""
    import numpy as np
    from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
    from nnunetv2.utilities.plans_handling import plans_handler

    class ArrayIO(BaseReaderWriter):
        supported_file_endings = [".npy"]

        def read_images(self, image_fnames):
            images, geometry = [], None
            for name in image_fnames:
                images.append(np.load(name)[None])
                geometry = json.loads(Path(name).with_suffix(".json").read_text())
            spacing = tuple(float(s) for s in geometry["spacing"])  # ITK order (x, y, z)
            properties = {
                "sitk_stuff": {
                    "spacing": spacing,
                    "origin": tuple(geometry["origin"]),
                    "direction": tuple(geometry["direction"]),
                },
                "spacing": list(np.abs(spacing[::-1])),
            }
            return np.vstack(images, dtype=np.float32, casting="unsafe"), properties

        def read_seg(self, seg_fname):
            return self.read_images((seg_fname,))

        def write_seg(self, seg, output_fname, properties):
            raise NotImplementedError("not needed: the explain path never writes through nnU-Net")

    # it stands in for SimpleITKIO: code that asks the reader's name (file order, supported readers) sees that one
    ArrayIO.__name__ = ArrayIO.__qualname__ = "SimpleITKIO"
    if getattr(plans_handler, "_gpu_checks_reader", False):
        return
    original = plans_handler.recursive_find_reader_writer_by_name
    plans_handler.recursive_find_reader_writer_by_name = lambda name: (
        ArrayIO if name == "SimpleITKIO" else original(name)
    )
    plans_handler._gpu_checks_reader = True


def write_channels(folder: Path, image, spacing_zyx=(2.0, 2.0, 2.0)) -> list[str]:
    """``(C, Z, Y, X)`` as one .npy per channel with its geometry (identity direction)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    geometry = {"spacing": list(spacing_zyx)[::-1], "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).ravel().tolist()}
    paths = []
    for c, channel in enumerate(image):
        path = folder / f"channel_{c:04d}.npy"
        np.save(path, np.ascontiguousarray(channel, dtype=np.float32))
        path.with_suffix(".json").write_text(json.dumps(geometry))
        paths.append(str(path))
    return paths


def carried_modules() -> list[str]:
    """Top-level packages this process imported from the wheels' folder /tmp/site (what must travel)."""
    return sorted(
        {
            name.split(".")[0]
            for name, module in list(sys.modules.items())
            if str(getattr(module, "__file__", None) or "").startswith("/tmp/site/")
        }
    )


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reset_gpu_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    torch.cuda.synchronize()
    return {
        "gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "gpu_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def timed(run):
    import torch

    start = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, round(time.perf_counter() - start, 3)


def compare(a, b) -> dict:
    """Explanation ``a`` against reference ``b`` (same classes and layers): label agreement;
    per layer, the largest difference of the normalised maps (each map's maximum is 1, so this is
    relative to the map's maximum), its 99th percentile, and the relative difference of the raw maxima."""
    import numpy as np

    report = {"labels_equal_fraction": float((a.labels == b.labels).mean()), "layers": {}}
    for layer in b.layers:
        rows = []
        for i, c in enumerate(b.classes):
            ha, hb = a.heatmaps[layer][i], b.heatmaps[layer][i]
            ra, rb = a.raw_max[layer][i], b.raw_max[layer][i]
            diff = np.abs(ha - hb)
            raw = np.abs(ha * ra - hb * rb).max() / max(rb, 1e-12)
            rows.append(
                {
                    "class": int(c),
                    "max_abs_diff_normalised": float(diff.max()),
                    "p99_abs_diff_normalised": float(np.percentile(diff, 99)),
                    "max_abs_diff_raw_over_raw_max": float(raw),
                    "raw_max_rel_diff": float(abs(ra - rb) / max(rb, 1e-12)),
                    "raw_max_reference": float(rb),
                }
            )
        report["layers"][layer] = {
            "max_abs_diff_normalised": max(r["max_abs_diff_normalised"] for r in rows),
            "p99_abs_diff_normalised": max(r["p99_abs_diff_normalised"] for r in rows),
            "raw_max_rel_diff": max(r["raw_max_rel_diff"] for r in rows),
            "per_class": rows,
        }
    return report


def demo_case(small: bool):
    import numpy as np

    if not DATA.is_file():
        raise SystemExit(f"{DATA} is missing: make it with `.venv/bin/python {Path(__file__).name} --make-data`")
    case = np.load(DATA)
    return case["image"].astype(np.float32), tuple(float(s) for s in case["spacing"])


# ---------------------------------------------------------------- parts


def part_env(args) -> dict:
    import importlib.metadata as metadata

    stubbed = stub_simpleitk_if_missing()
    import numpy
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "simpleitk_stand_in": stubbed,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    info["host_memory_gb"] = round(int(meminfo[1]) / 2**20, 1)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_name=props.name,
            device_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    import monai
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401  (the import chain of the nnU-Net path)

    import SegGradCAMLib

    modules = (("monai", monai), ("nnunetv2", sys.modules["nnunetv2"]), ("SegGradCAMLib", SegGradCAMLib))
    info["imported_from"] = {name: str(Path(module.__file__).parent) for name, module in modules}
    versions = {}
    for dist in (
        "monai",
        "nnunetv2",
        "dynamic_network_architectures",
        "acvl_utils",
        "batchgenerators",
        "blosc2",
        "nibabel",
        "scipy",
        "scikit-image",
        "SimpleITK",
        "timm",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    info["from_tmp_site"] = carried_modules()
    return info


def part_demo2d(args) -> dict:
    import numpy as np
    import torch

    from SegGradCAMLib.inference import explain_volume
    from SegGradCAMLib.models import load_model

    device = pick_device()
    image, spacing = demo_case(args.small)
    report = {"device": device, "case_shape": list(image.shape), "runs": {}, "comparisons": {}}
    for method in ("gradcam", "hirescam"):
        results = {}
        for name, dev, amp in (("cpu", "cpu", False), ("device", device, False), ("device_amp", device, True)):
            model = load_model("demo-lesions-unet2d", device=dev)
            layers = list(model.layers)

            # loop values bound as defaults (B023); run is only called inside this iteration
            def run(model=model, layers=layers, method=method, dev=dev, amp=amp):
                return explain_volume(
                    model, image, spacing, np.eye(3), layers=layers, method=method, device=dev, amp=amp
                )

            _, cold = timed(run)  # first call: CUDA context, cuDNN heuristics
            reset_gpu_peak(dev)
            result, warm = timed(run)
            report["runs"][f"{method}/{name}"] = {
                "device": dev,
                "amp": amp,
                "layers": layers,
                "first_call_s": cold,
                "seconds": warm,
                "timings": {k: round(v, 4) for k, v in result.timings.items()},
                **gpu_peak(dev),
            }
            results[name] = result
        report["comparisons"][f"{method}/device_vs_cpu"] = compare(results["device"], results["cpu"])
        report["comparisons"][f"{method}/device_amp_vs_cpu"] = compare(results["device_amp"], results["cpu"])
        report["comparisons"][f"{method}/device_amp_vs_device"] = {
            "labels_equal_fraction": float((results["device_amp"].labels == results["device"].labels).mean())
        }
    report["torch_threads"] = torch.get_num_threads()
    report["from_tmp_site"] = carried_modules()
    return report


def part_nnunet_demo(args) -> dict:
    stub_simpleitk_if_missing()
    install_array_reader()
    from SegGradCAMLib.inference_nnunet import explain_nnunet
    from SegGradCAMLib.models import load_model

    device = pick_device()
    image, spacing = demo_case(args.small)
    if args.small:  # one window on the CPU test
        image = image[:, 14:62, 16:80, 16:80]
    report = {"device": device, "case_shape": list(image.shape), "layers": NNUNET_DEMO_LAYERS, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_channels(Path(tmp), image, spacing)
        results = {}
        for name, dev in (("cpu", "cpu"), ("device", device)):
            model = load_model(str(SHIPPED_NNUNET), device=dev)
            windows = []

            # loop values bound as defaults (B023); both are only called inside this iteration
            def progress(stage: str, done: int, total: int, windows: list = windows) -> None:
                if stage == "windows":
                    windows.append(total)

            def run(model=model, dev=dev, progress=progress):
                return explain_nnunet(model, files, layers=NNUNET_DEMO_LAYERS, device=dev, progress=progress)

            cold = None
            if dev != "cpu":
                _, cold = timed(run)
            reset_gpu_peak(dev)
            result, seconds = timed(run)
            report["runs"][name] = {
                "device": dev,
                "first_call_s": cold,
                "seconds": seconds,
                "windows": windows[-1] if windows else None,
                "timings": {k: round(v, 4) for k, v in result.timings.items()},
                "checks": result.checks,
                **gpu_peak(dev),
            }
            results[name] = result
    report["device_vs_cpu"] = compare(results["device"], results["cpu"])
    report["simpleitk_used"] = list(STUBBED_SIMPLEITK)
    report["from_tmp_site"] = carried_modules()
    return report


def steps(size: int, patch: int, step: float = 0.5) -> int:
    """nnU-Net's number of sliding-window positions along one axis (compute_steps_for_sliding_window)."""
    return 1 if size <= patch else math.ceil((size - patch) / (patch * step)) + 1


def windows_of(shape) -> int:
    return math.prod(steps(s, p) for s, p in zip(shape, (48, 64, 64)))


def make_many_label_folder(root: Path, n_labels: int) -> Path:
    """A trained-model folder: the shipped plans.json, a dataset.json with ``n_labels - 1`` foreground
    labels and 2 channels, and fold_0/checkpoint_final.pth holding a random-weight network built by
    nnU-Net's get_network_from_plans (its default initialisation, seed 0) in nnU-Net's checkpoint layout."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads((SHIPPED_NNUNET / "plans.json").read_text())
    dataset = json.loads((SHIPPED_NNUNET / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, **{f"class_{c:03d}": c for c in range(1, n_labels)}}
    dataset["name"] = "Dataset990_ManyLabels"
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        2,
        n_labels,
        deep_supervision=False,
    )
    folder = root / "Dataset990_ManyLabels" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.save(
        {
            "network_weights": network.state_dict(),
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def synthetic_volume(shape, seed: int = 0):
    """Two channels ``(2, *shape)`` float32: smooth blobs (trilinear from a 16^3 grid) plus noise,
    nowhere exactly zero (nnU-Net crops to the non-zero box: the whole volume stays)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 2, 16, 16, 16, generator=generator)
    volume = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=False)[0]
    volume += 0.2 * torch.randn(volume.shape, generator=generator)
    volume += 10.0
    return volume.numpy()


def part_many(args) -> dict:
    """All ``args.many_classes`` classes of the many-label network on a synthetic volume of ``args.shape``;
    with ``args.cancel_after`` windows, the explain is cancelled after that many windows, counted over
    the groups as its progress counts them (the host peak of nnU-Net's prediction, the targets and the
    groups reached, without the hours of the whole loop on a CPU) and nnU-Net's plain prediction is not
    run."""
    stub_simpleitk_if_missing()
    install_array_reader()
    import numpy as np
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from SegGradCAMLib import seg_grad_cam
    from SegGradCAMLib.errors import CancelledError
    from SegGradCAMLib.inference_nnunet import explain_nnunet, nnunet_predictor
    from SegGradCAMLib.nnunet_grid import preprocess
    from SegGradCAMLib.models import load_model

    shape = tuple(int(s) for s in args.shape.split("x"))
    device = pick_device()
    status_file = out_dir() / f"many_{args.shape}_progress.json"
    report = {
        "device": device,
        "shape": list(shape),
        "labels": args.many_classes + 1,
        "classes": args.many_classes,
        "windows_expected": windows_of(shape),
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = make_many_label_folder(Path(tmp), args.many_classes + 1)
        files = write_channels(Path(tmp) / "input", synthetic_volume(shape))
        model = load_model(str(folder), device=device)
        layer = model.chosen_layers("auto")[0]
        report.update(layer=layer, setup_s=round(time.perf_counter() - start, 2))

        # warm-up (not measured): CUDA context, cuDNN autotuning for the patch, the batched backward
        start = time.perf_counter()
        patch = tuple(model.nnunet.configuration_manager.patch_size)
        x = torch.randn(1, 2, *patch, device=device)
        if device == "cuda":  # on the CPU (the --small test) nothing to warm up
            seg_grad_cam(model.network, x, layer, list(range(1, args.many_classes + 1)), upsample=True)
            with torch.no_grad():
                model.network(x)
            torch.cuda.synchronize()
        report["warm_up_s"] = round(time.perf_counter() - start, 2)
        del x

        events: list[tuple[str, int, int, float]] = []

        def progress(stage: str, done: int, total: int) -> None:
            now = time.perf_counter()
            events.append((stage, done, total, now))
            if stage == "windows" and (done % 20 == 0 or done == total):
                first = next(e[3] for e in events if e[0] == "windows")
                status = {
                    "windows_done": done,
                    "windows": total,
                    "loop_s": round(now - first, 2),
                    "since_start_s": round(now - began, 2),
                    "rss_mb": current_rss_mb(),
                    **gpu_peak(device),
                }
                status_file.write_text(json.dumps(status))

        kept = {"maps": 0, "max_raw": []}

        def on_heatmap(heatmap, labels) -> None:  # maps are not kept (every class x the volume): count and note maxima
            kept["maps"] += 1
            kept["max_raw"].append(heatmap.raw_max)

        rss_before = current_rss_mb()
        reset_gpu_peak(device)
        began = time.perf_counter()
        cancel = None
        if args.cancel_after:
            cancel = lambda: sum(e[0] == "windows" for e in events) >= args.cancel_after  # noqa: E731
        try:
            result = explain_nnunet(
                model, files, device=device, progress=progress, on_heatmap=on_heatmap, cancel=cancel
            )
        except CancelledError:
            windows = [e for e in events if e[0] == "windows"]
            report["explain_until_cancelled"] = {
                "seconds": round(time.perf_counter() - began, 2),
                "windows_done": len(windows),
                "windows_in_all": windows[-1][2],
                "before_windows_s": round(windows[0][3] - began, 2),
                "host_rss_before_mb": rss_before,
                "host_peak_rss_mb": peak_rss_mb(),
                "host_peak_above_before_mb": round(peak_rss_mb() - rss_before, 1),
                **gpu_peak(device),
            }
            return report
        explain_s = round(time.perf_counter() - began, 2)
        windows = [e for e in events if e[0] == "windows"]
        loop_s = windows[-1][3] - windows[0][3]
        n_windows, n_classes = windows[-1][2], len(result.classes)
        preprocessed = next(e[3] for e in events if e[0] == "preprocess" and e[1] == 1)
        report["explain"] = {
            "seconds": explain_s,
            "windows": n_windows,
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            # layers, predictor, nnU-Net's own prediction, targets
            "before_windows_s": round(windows[0][3] - preprocessed, 2),
            "window_loop_s": round(loop_s, 2),
            "per_window_s": round(loop_s / n_windows, 4),
            "per_window_and_class_ms": round(1000 * loop_s / (n_windows * n_classes), 3),
            "after_windows_s": round(began + explain_s - windows[-1][3], 2),  # stitching, checks, export, maps
            "checks": result.checks,
            "maps_handed_over": kept["maps"],
            "classes_with_nonzero_map": int(sum(m > 0 for m in kept["max_raw"])),
            "labels_present": int(len(np.unique(result.labels))),
            "host_rss_before_mb": rss_before,
            "host_peak_rss_mb": peak_rss_mb(),
            "host_peak_above_before_mb": round(peak_rss_mb() - rss_before, 1),
            **gpu_peak(device),
        }
        del result
        print(json.dumps({"explain": report["explain"]}), file=sys.stderr, flush=True)

        # nnU-Net's plain prediction of the same volume (no gradients): preprocessing, predictor, export
        (data, properties, _), preprocess_s = timed(lambda: preprocess(model, files))
        plain = {"preprocess_s": preprocess_s}
        logits = None
        for on_device in (False, True):
            predictor = nnunet_predictor(model, device, 0.5, False)
            predictor.perform_everything_on_device = on_device and device == "cuda"
            reset_gpu_peak(device)
            logits, seconds = timed(
                lambda predictor=predictor: predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
            )
            plain["perform_everything_on_device" if on_device else "results_on_cpu"] = {
                "predict_s": seconds,
                **gpu_peak(device),
            }
        parts = model.nnunet
        _, export_s = timed(
            lambda: convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, parts.plans_manager, parts.configuration_manager, parts.label_manager, properties
            )
        )
        plain["export_s"] = export_s
        best = min(plain["results_on_cpu"]["predict_s"], plain["perform_everything_on_device"]["predict_s"])
        plain["total_s"] = round(preprocess_s + best + export_s, 2)
        report["plain"] = plain
        report["ratio_explain_to_plain_total"] = round(explain_s / plain["total_s"], 2)
        report["ratio_window_loop_to_plain_predict"] = round(loop_s / best, 2)
    report["simpleitk_used"] = list(STUBBED_SIMPLEITK)
    report["from_tmp_site"] = carried_modules()
    return report


PARTS = {"env": part_env, "demo2d": part_demo2d, "nnunet_demo": part_nnunet_demo, "many": part_many}


# ---------------------------------------------------------------- driver


def run_part(name: str, args, timeout: float, extra: list[str] | None = None) -> dict:
    """``name`` in a fresh interpreter; its last stdout line is the JSON result. A part that fails or
    runs past ``timeout`` gives its error (and stderr tail) instead."""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, *(extra or [])]
    command += ["--many-classes", str(args.many_classes)]
    if args.small:
        command.append("--small")
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 5))
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {
            "error": f"timed out after {timeout:.0f} s",
            "wall_s": round(time.perf_counter() - start, 1),
            "stderr_tail": tail,
        }
    wall = round(time.perf_counter() - start, 1)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "wall_s": wall, "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(lines[-1])
    result["wall_s"] = wall
    return result


def extrapolate(calibration: dict, shape) -> dict:
    """Estimated explain and plain seconds for ``shape`` from a calibration run: the window loop scales with
    the windows, everything else with the voxels; the host peak above the process's start with the voxels
    (the volumes held: logits, one group's maps, the regions), an upper bound: one window's graph and the
    plane-wise transients are scaled too (R23: 96x128x128 scaled to 256^3 gives 18.7 GB, 12.4 GB measured)."""
    explain = calibration["explain"]
    voxels = math.prod(shape) / math.prod(calibration["shape"])
    windows = windows_of(shape)
    loop = explain["per_window_s"] * windows
    rest = (explain["seconds"] - explain["window_loop_s"]) * voxels
    plain = (
        calibration["plain"]["preprocess_s"]
        + calibration["plain"]["results_on_cpu"]["predict_s"]
        + calibration["plain"]["perform_everything_on_device"]["predict_s"]
        + calibration["plain"]["export_s"]
    )
    plain *= windows / calibration["explain"]["windows"]
    part = loop + rest + plain + calibration["setup_s"] * voxels + calibration["warm_up_s"] + 15  # + process start
    return {
        "shape": list(shape),
        "windows": windows,
        "explain_s": round(loop + rest, 1),
        "plain_runs_s": round(plain, 1),
        "part_s": round(part, 1),
        "host_peak_rss_mb": round(explain["host_rss_before_mb"] + explain["host_peak_above_before_mb"] * voxels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU test sizes (one or two nnU-Net windows)")
    parser.add_argument("--budget-s", type=float, default=380, help="wall-clock budget of the whole script")
    parser.add_argument(
        "--big-limit-s", type=float, default=240, help="longest estimated run of the whole 256^3 volume"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip (env, demo2d, nnunet_demo, many)")
    parser.add_argument(
        "--make-data", action="store_true", help=f"write {DATA.relative_to(ROOT)} (needs the demo data sources)"
    )
    parser.add_argument(
        "--many-classes", type=int, default=MANY_CLASSES, help="classes of the many-label network (117: issue 25's row)"
    )
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="x".join(map(str, CALIBRATION)), help=argparse.SUPPRESS)
    parser.add_argument("--cancel-after", type=int, default=0, help=argparse.SUPPRESS)  # windows (part many)
    args = parser.parse_args()
    if args.make_data:
        make_data()
        return
    if args.part:
        print(json.dumps(PARTS[args.part](args)), flush=True)
        return

    began = time.perf_counter()
    out = out_dir() / "gpu_checks.json"
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "small": args.small, "budget_s": args.budget_s}
    skip = set(filter(None, args.skip.split(",")))

    def left() -> float:
        return args.budget_s - (time.perf_counter() - began)

    def record(key: str, value: dict) -> None:
        report[key] = value
        report["elapsed_s"] = round(time.perf_counter() - began, 1)
        out.write_text(json.dumps(report, indent=2))
        print(f"== {key} ({report['elapsed_s']} s)\n{json.dumps(without_per_class(value))}", flush=True)

    for name, limit in (("env", 60), ("demo2d", 120), ("nnunet_demo", 150)):
        if name not in skip:
            record(name, run_part(name, args, min(limit, left() - 60)))
    if "many" not in skip:
        calibration_shape = SMALL_CALIBRATION if args.small else CALIBRATION
        shape_arg = "x".join(map(str, calibration_shape))
        calibration = run_part("many", args, min(150, left() - 30), ["--shape", shape_arg])
        record("many_calibration", calibration)
        if "error" not in calibration:
            budget = min(args.big_limit_s, left() - 20)
            if args.small:
                chosen = SMALL_BIG
                estimate = extrapolate(calibration, chosen)
            else:
                chosen, estimate = None, None
                for z in range(256, 47, -8):  # the whole volume, else the largest slab that fits
                    candidate = extrapolate(calibration, (z, 256, 256))
                    if candidate["part_s"] <= budget:
                        chosen, estimate = (z, 256, 256), candidate
                        break
            record(
                "many_plan",
                {
                    "time_left_s": round(left(), 1),
                    "limit_s": budget,
                    "chosen": chosen,
                    "estimate_chosen": estimate,
                    "estimate_256": None if args.small else extrapolate(calibration, FULL),
                },
            )
            if chosen is not None:
                big = run_part("many", args, left() - 5, ["--shape", "x".join(map(str, chosen))])
                if "error" in big:
                    status = out_dir() / f"many_{'x'.join(map(str, chosen))}_progress.json"
                    if status.is_file():
                        big["progress_when_stopped"] = json.loads(status.read_text())
                elif tuple(chosen) != FULL and not args.small:
                    big["extrapolated_to_256"] = extrapolate(big, FULL)
                record("many_big", big)
    report["elapsed_s"] = round(time.perf_counter() - began, 1)
    out.write_text(json.dumps(report, indent=2))
    print("== summary")
    for line in summary(report):
        print(line)
    print(f"wrote {out} ({report['elapsed_s']} s)")


def without_per_class(value):
    """``value`` without the per-class rows of the comparisons (they stay in the JSON file)."""
    if isinstance(value, dict):
        return {k: without_per_class(v) for k, v in value.items() if k != "per_class"}
    if isinstance(value, list):
        return [without_per_class(v) for v in value]
    return value


def summary(report: dict) -> list[str]:
    """The headline numbers, one line each."""
    lines = []
    env = report.get("env", {})
    lines.append(
        f"env: {env.get('device_name', 'no CUDA')} torch {env.get('torch')} python {env.get('python')} "
        f"SimpleITK stand-in {env.get('simpleitk_stand_in')} error {env.get('error')}"
    )
    demo = report.get("demo2d", {})
    for key, c in demo.get("comparisons", {}).items():
        layers = c.get("layers", {})
        diffs = ", ".join(
            f"{name}: max {v['max_abs_diff_normalised']:.2e} p99 {v['p99_abs_diff_normalised']:.2e} "
            f"raw max {v['raw_max_rel_diff']:.2e}"
            for name, v in layers.items()
        )
        lines.append(f"demo2d {key}: labels equal {c['labels_equal_fraction']:.6f}" + (f"; {diffs}" if diffs else ""))
    for key, r in demo.get("runs", {}).items():
        lines.append(
            f"demo2d {key}: {r['seconds']} s (first call {r['first_call_s']} s), "
            f"GPU peak {r.get('gpu_peak_allocated_mb')} MiB"
        )
    if "error" in demo:
        lines.append(f"demo2d error: {demo['error']}")
    nn = report.get("nnunet_demo", {})
    if "device_vs_cpu" in nn:
        c = nn["device_vs_cpu"]
        diffs = ", ".join(
            f"{name}: max {v['max_abs_diff_normalised']:.2e} p99 {v['p99_abs_diff_normalised']:.2e} "
            f"raw max {v['raw_max_rel_diff']:.2e}"
            for name, v in c["layers"].items()
        )
        lines.append(f"nnunet_demo device vs cpu: labels equal {c['labels_equal_fraction']:.6f}; {diffs}")
        for key, r in nn["runs"].items():
            lines.append(
                f"nnunet_demo {key}: {r['seconds']} s (first call {r['first_call_s']}), "
                f"{r['windows']} windows, GPU peak {r.get('gpu_peak_allocated_mb')} MiB, checks {r['checks']}"
            )
    elif nn:
        lines.append(f"nnunet_demo error: {nn.get('error')}")
    for key in ("many_calibration", "many_big"):
        m = report.get(key)
        if not m:
            continue
        if "error" in m:
            lines.append(f"{key}: error {m['error']} progress {m.get('progress_when_stopped')}")
            continue
        e, p = m["explain"], m["plain"]
        lines.append(
            f"{key} {'x'.join(map(str, m['shape']))}, {m['classes']} classes, {e['windows']} windows: explain "
            f"{e['seconds']} s (loop {e['window_loop_s']} s, {e['per_window_s']} s/window, "
            f"{e['per_window_and_class_ms']} ms/window/class), GPU peak {e.get('gpu_peak_allocated_mb')} MiB, "
            f"host peak RSS {e['host_peak_rss_mb']} MiB; plain {p['total_s']} s (predict "
            f"{p['results_on_cpu']['predict_s']} / on-device "
            f"{p['perform_everything_on_device']['predict_s']} s); explain/plain "
            f"{m['ratio_explain_to_plain_total']}; labels equal nnU-Net "
            f"{e['checks'].get('labels_equal_to_nnunet')}"
        )
        if "extrapolated_to_256" in m:
            lines.append(f"{key} extrapolated to 256^3: {m['extrapolated_to_256']}")
        if key == "many_big":  # issue 25: 117 classes on 256^3 in 16 GB host, 24 GB GPU; 100 classes <= 3x
            host = e["host_peak_rss_mb"]
            if "extrapolated_to_256" in m:
                host = f"{m['extrapolated_to_256']['host_peak_rss_mb']} (extrapolated from the slab: at most)"
            lines.append(
                f"issue 25 targets, {m['classes']} classes: host peak {host} MiB (<= 16384), "
                f"GPU peak {e.get('gpu_peak_allocated_mb')} MiB (<= 24576), explain/plain "
                f"{m['ratio_explain_to_plain_total']} (<= 3)"
            )
    return lines


def make_data() -> None:
    """The held-out demo case that ``python -m SegGradCAMLib.demo.data`` writes (index 0 of the
    evaluation seed), as ``.gpu_data/demo_case.npz`` (image ``(2, Z, Y, X)`` float32, labels, spacing)."""
    import itertools

    import numpy as np

    from SegGradCAMLib.demo import data as demo_data

    case, _ = next(itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), 0, None))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        DATA,
        image=case.image.astype(np.float32),
        labels=case.labels,
        spacing=np.array([demo_data.SPACING_MM] * 3),
        subject=case.subject,
        seed=case.seed,
    )
    print(f"{DATA}: {case.subject}, image {case.image.shape}")


if __name__ == "__main__":
    main()
