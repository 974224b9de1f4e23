"""``seggradcam train`` and ``seggradcam roar``: the demo model's recipe, and ROAR/KAR on it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SegGradCAMError
from ..models.declarations import DEFAULT_MULTICLASS_MODEL
from ..selection import AUTO_LAYER, DEFAULT_PERCENTAGES_TEXT, choices, fractions_from_percentages, numbers

if TYPE_CHECKING:  # torch stays out of the import of the command line
    from ..inference import ProgressCallback


def add_train_parser(sub, parents: list) -> None:
    """The ``train`` subcommand."""
    train = sub.add_parser(
        "train", parents=parents, help="train the demo multi-class 2D U-Net from its data recipe (CPU, ~10 min)"
    )
    train.add_argument(
        "--recipe",
        default="demo",
        choices=["demo"],
        help="data recipe: 'demo' = real MRI heads with synthetic lesions (SegGradCAMLib.demo.data)",
    )
    train.add_argument("--out", required=True, type=Path, help="output folder (weights, JSON spec, model card)")
    train.add_argument("--seed", type=int, help="data and initialisation seed (default 0)")
    train.add_argument("--epochs", type=int, help="training epochs (default 16)")
    train.add_argument("--train-slices", type=int, help="training slices (default 2400)")
    train.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1: on a shared 2-core machine one thread trains fastest)",
    )


def add_roar_parser(sub, parents: list) -> None:
    """The ``roar`` subcommand."""
    roar = sub.add_parser(
        "roar", parents=parents, help="ROAR/KAR benchmark of a model's heatmap rankings on the demo recipe (retrains)"
    )
    roar.add_argument(
        "--model",
        default=DEFAULT_MULTICLASS_MODEL,
        help="base model giving the heatmaps (demo recipe labels and channels)",
    )
    roar.add_argument("--out", required=True, type=Path, help="output folder: roar.json and roar.png")
    roar.add_argument("--fractions", default=DEFAULT_PERCENTAGES_TEXT, help="comma-separated percentages of pixels")
    roar.add_argument(
        "--explainers",
        default="gradcam,random",
        help="comma-separated rankings: CAM methods (gradcam, gradcam++, hirescam, layercam) and random",
    )
    roar.add_argument("--modes", default="roar,kar", help="comma-separated: roar (remove top), kar (keep top)")
    roar.add_argument("--seeds", default="0", help="comma-separated retraining seeds")
    roar.add_argument("--epochs", type=int, help="epochs per retraining (default 12)")
    roar.add_argument("--train-slices", type=int, help="training slices per retraining (default 1600)")
    roar.add_argument("--test-slices", type=int, help="held-out test slices (default 100)")
    roar.add_argument("--layer", help="Seg-Grad-CAM layer of the base model (default: finest decoder stage)")
    roar.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1: on a shared 2-core machine one thread trains fastest)",
    )


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """Config fields from the options the user gave (``names``: option dest -> field)."""
    values = {field: getattr(args, dest) for dest, field in names.items() if getattr(args, dest) is not None}
    bad = [
        f"--{dest.replace('_', '-')}"
        for dest, field in names.items()
        if isinstance(values.get(field), int) and values[field] < 1
    ]
    if bad:
        raise SegGradCAMError(f"{', '.join(bad)} must be at least 1.")
    return values


def train_command(args: argparse.Namespace, progress: ProgressCallback | None = None) -> None:
    from ..demo.training import TrainConfig, train_demo

    options = {"seed": "seed", "epochs": "epochs", "train_slices": "train_slices", "threads": "threads"}
    config = TrainConfig(**_given(args, options))
    command = ["seggradcam", "train", "--recipe", args.recipe, "--out", str(args.out)]
    for dest in (d for d in options if getattr(args, d) is not None):
        command += [f"--{dest.replace('_', '-')}", str(getattr(args, dest))]
    if progress is not None:
        progress("startup", 1, 1)
    card = train_demo(args.out, config, shlex.join(command), progress=progress)
    print(f"Wrote {args.out} ({card['training']['seconds'] / 60:.1f} min training)")


def roar_command(args: argparse.Namespace, progress: ProgressCallback | None = None) -> None:
    from ..demo import data as demo_data
    from ..evaluation.roar import EXPLAINERS, MODES, RoarConfig, plot_roar, run_roar
    from ..models import load_model

    fractions = fractions_from_percentages(args.fractions, "--fractions")
    seeds = [int(s) for s in numbers(args.seeds, "--seeds")]
    fields = _given(
        args, {"epochs": "epochs", "train_slices": "train_slices", "test_slices": "test_slices", "threads": "threads"}
    )
    explainers = choices(args.explainers, EXPLAINERS, "--explainers")
    modes = choices(args.modes, MODES, "--modes")
    model = load_model(args.model)
    if progress is not None:
        progress("startup", 1, 1)
    spec = model.spec
    if tuple(spec.labels) != demo_data.LABELS or spec.in_channels != len(demo_data.CHANNELS) or spec.spatial_dims != 2:
        raise SegGradCAMError(
            "ROAR runs on the demo recipe: the model must be 2D with inputs "
            f"{', '.join(demo_data.CHANNELS)} and labels {', '.join(demo_data.LABELS)}; "
            f"{spec.name} has {spec.in_channels} input(s) and labels {', '.join(spec.labels)}."
        )
    config = RoarConfig(
        fractions=fractions,
        explainers=explainers,
        modes=modes,
        seeds=tuple(seeds) or (0,),
        layer=model.chosen_layers(args.layer or AUTO_LAYER),
        **fields,
    )
    report = run_roar(model.network, config, args.out / "roar.json", progress=progress)
    plot_roar(report, args.out / "roar.png")
    print(f"Wrote {args.out / 'roar.json'} and {args.out / 'roar.png'}")
