"""Training the demo multi-class 2D U-Net (``seggradcam train --recipe demo``).

The network is a MONAI ``UNet`` (2D, 2 input channels, 4 classes); its decoder
stages (coarse to fine, see :func:`SegGradCAMLib.layers.decoder_layers`) are
``model.1.submodule.1.submodule.2`` (1/4 resolution) and ``model.1.submodule.2``
(1/2 resolution, the default Seg-Grad-CAM layer); ``model.2`` is the head.

The output folder holds the weights (a ``state_dict``, read back with
``torch.load(weights_only=True)``), the JSON spec that :func:`SegGradCAMLib.models.load_model`
reads, ``model_card.json`` and a short ``README.md`` written from the card.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..cam import label_map
from . import data as demo_data
from ..errors import SegGradCAMError
from ..models import DEFAULT_MULTICLASS_MODEL as MODEL_NAME

ARCHITECTURE = "UNet"
NETWORK_ARGS = {
    "spatial_dims": 2,
    "in_channels": len(demo_data.CHANNELS),
    "out_channels": len(demo_data.LABELS),
    "channels": [8, 16, 32, 64],
    "strides": [2, 2, 2],
    "num_res_units": 1,
}
VALIDATION_STREAM = 1  # validation cases come from seed (train_seed, 1)
RECIPES = ("demo",)


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (with the code)."""

    seed: int = demo_data.TRAIN_SEED
    train_slices: int = 2400
    val_slices: int = 160
    eval_slices: int = 100
    epochs: int = 16
    batch_size: int = 16
    learning_rate: float = 3e-3
    threads: int = 1


@dataclass
class TrainResult:
    """A trained network (eval mode) with its per-epoch history and wall time."""

    network: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def build_demo_network() -> nn.Module:
    """The demo architecture with fresh weights (seed the global torch RNG first)."""
    from ..models.json_spec import build_network

    return build_network(ARCHITECTURE, NETWORK_ARGS)


def predict_labels(network: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Argmax labels ``(N, H, W)`` int64 of ``images`` ``(N, C, H, W)``."""
    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            out.append(label_map(network(batch)).numpy())
    return np.concatenate(out)


def dice_scores(
    predicted: np.ndarray, target: np.ndarray, labels: Sequence[str] = demo_data.LABELS
) -> dict[str, float]:
    """Dice per foreground class and on the union of all foreground classes (``lesion_union``),
    pooled over every voxel of the set. ``predicted``, ``target``: integer label arrays of one shape.
    A class absent from both scores 1."""

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total

    scores = {name: dice(predicted == c, target == c) for c, name in enumerate(labels) if c > 0}
    scores["lesion_union"] = dice(predicted > 0, target > 0)
    return scores


def train_network(
    train: demo_data.SliceSet,
    val: demo_data.SliceSet | None,
    epochs: int,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train :func:`build_demo_network` from scratch on ``train`` (Dice + cross-entropy, Adam,
    one-cycle learning rate); validation Dice after each epoch when ``val`` is given.
    ``progress(stage, done, total)``: stage ``train``, one step per batch over all epochs."""
    from monai.losses import DiceCELoss

    if len(train) == 0 or epochs < 1:
        raise SegGradCAMError("Training needs at least one slice and one epoch.")
    torch.manual_seed(seed)
    network = build_demo_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    steps = epochs * int(np.ceil(len(train) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.15)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels.astype(np.int64))[:, None]
    order = torch.Generator().manual_seed(seed)
    result = TrainResult(network)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        network.train()
        batches = torch.randperm(len(train), generator=order).split(batch_size)
        losses = []
        for batch in batches:
            optimizer.zero_grad()
            loss = loss_fn(network(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if progress is not None:
                progress("train", (epoch - 1) * len(batches) + len(losses), steps)
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - start, 1)}
        if val is not None:
            entry["val_dice"] = {
                k: round(v, 4) for k, v in dice_scores(predict_labels(network, val.images), val.labels).items()
            }
            dice_text = ", ".join(f"{k} {v:.3f}" for k, v in entry["val_dice"].items())
            log(
                f"epoch {epoch}/{epochs}: loss {entry['loss']:.4f}, "
                f"validation Dice {dice_text} ({entry['seconds']:.0f} s)"
            )
        result.history.append(entry)
    result.seconds = time.perf_counter() - start
    network.eval()
    return result


def model_spec(weights: str, sha256: str) -> dict:
    """The JSON spec of the demo model (the format of :mod:`SegGradCAMLib.models.formats`)."""
    return {
        "name": MODEL_NAME,
        "architecture": ARCHITECTURE,
        "args": NETWORK_ARGS,
        "weights": weights,
        "sha256": sha256,
        "labels": list(demo_data.LABELS),
        "in_channels": len(demo_data.CHANNELS),
        "spatial_dims": 2,
        "normalization": demo_data.NORMALIZATION,
        "normalization_range": list(demo_data.PERCENTILES),
        "spacing": [demo_data.SPACING_MM] * 2,
        "orientation": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        "slice_axis": 0,
        "source": "trained by `seggradcam train --recipe demo` (SegGradCAMLib.demo.training)",
        "description": (
            "Demo 2D U-Net for synthetic lesions in real MRI (inputs: t1c, flair). Demonstration only, not clinical."
        ),
    }


def _readme(card: dict) -> str:
    """The short model README, written from the model card."""
    held_out = card["held_out_dice"]
    rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in held_out.items())
    train, recipe = card["training"], card["data"]
    spacing = card["spacing_mm"][0]
    return f"""# {card["name"]}

**Demonstration model, not for clinical use.** A MONAI 2D U-Net trained on this
project's CPU from real MRI heads with synthetic tumour-like lesions, so that
class-discriminative Seg-Grad-CAM maps, the tumour example and ROAR have a
multi-class network with known ground truth.

- Labels: {", ".join(f"{i} {name}" for i, name in enumerate(card["labels"]))}
- Inputs (2 channels, in this order): {"; ".join(f"`{c['name']}` {c['description']}" for c in card["channels"])}
- Preprocessing: axial slices at {spacing} mm in-plane, orientation identity (LPS), each channel normalised over
  the whole volume: percentiles {card["normalization_range"][0]}/{card["normalization_range"][1]} -> 0..1, clipped.
- Network: `{card["architecture"]}` {json.dumps(card["args"])}; decoder stages
  (coarse to fine) {", ".join(f"`{s}`" for s in card["decoder_stages"])}; the last is the default layer.
- Data recipe: `SegGradCAMLib.demo.data`, train seed {recipe["train_seed"]} ({recipe["train_slices"]} slices),
  validation seed {recipe["val_seed"]} ({recipe["val_slices"]} slices), held-out evaluation seed {recipe["eval_seed"]}
  ({recipe["eval_slices"]} slices, not augmented). Sources: {", ".join(recipe["sources"])}. Lesions are synthetic.
- Training: {train["epochs"]} epochs, batch {train["batch_size"]}, Adam + one-cycle lr {train["learning_rate"]},
  Dice + cross-entropy: {train["seconds"] / 60:.1f} min wall after {recipe["seconds"] / 60:.1f} min of data generation
  ({train["machine"]}, torch {train["torch"]}).

Held-out Dice (pooled over the {recipe["eval_slices"]} evaluation slices):

| class | Dice |
|---|---|
{rows}

Reproduce: `{card["command"]}` (same seed, same data: the data sha256 values are in `model_card.json`).
Intended use: demonstrating and testing explanation methods. The anatomy (three heads) is shared
between training and evaluation; only the lesions, augmentations and slices differ.

Explanations: at the default stage (8 channels at half resolution) `--method hirescam` gives
class-localised maps (`Testing/models/test_demo_model.py`); plain Grad-CAM, whose channel weights are
mean gradients, spreads over the slice and leaves the small classes' maps nearly empty there.
"""


@dataclass
class _DemoData:
    """The three slice sets of one training run and the seconds spent generating them."""

    train: demo_data.SliceSet
    val: demo_data.SliceSet
    held_out: demo_data.SliceSet
    seconds: float


def _make_demo_data(config: TrainConfig, log: Callable[[str], None]) -> _DemoData:
    """Generate the training, validation and held-out slice sets of ``config``."""
    start = time.perf_counter()
    train = demo_data.make_slice_set(config.seed, config.train_slices)
    val = demo_data.make_slice_set((config.seed, VALIDATION_STREAM), config.val_slices)
    held_out = demo_data.evaluation_set(config.eval_slices)
    data_seconds = time.perf_counter() - start
    log(f"data: {len(train)} training, {len(val)} validation, {len(held_out)} held-out slices ({data_seconds:.0f} s)")
    return _DemoData(train, val, held_out, data_seconds)


def _write_weights(out: Path, network: nn.Module) -> tuple[Path, dict]:
    """Write ``out/model.pt`` and the JSON spec next to it; returns the weights path and the spec."""
    from ..models.spec import sha256_of

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.pt"
    torch.save(network.state_dict(), weights)
    spec = model_spec(weights.name, sha256_of(weights))
    (out / f"{MODEL_NAME}.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return weights, spec


def _data_card(config: TrainConfig, data: _DemoData) -> dict:
    """The ``data`` section of the model card: sources, seeds, sizes and sha256 of each slice set."""
    return {
        "recipe": "SegGradCAMLib.demo.data",
        "sources": [
            "Colin27 (mricron-data)",
            "KmeansTest T1 head (insighttoolkit5-examples)",
            "MNI152 2009a template (nilearn)",
        ],
        "train_seed": config.seed,
        "train_slices": len(data.train),
        "train_sha256": data.train.sha256(),
        "val_seed": [config.seed, VALIDATION_STREAM],
        "val_slices": len(data.val),
        "val_sha256": data.val.sha256(),
        "eval_seed": demo_data.EVAL_SEED,
        "eval_slices": len(data.held_out),
        "eval_sha256": data.held_out.sha256(),
        "seconds": round(data.seconds, 1),
    }


def _model_card(
    config: TrainConfig,
    command: str,
    data: _DemoData,
    result: TrainResult,
    weights: Path,
    spec: dict,
    scores: dict[str, float],
) -> dict:
    """The model card of a finished run (written to ``model_card.json``)."""
    from ..layers import decoder_layers

    return {
        "name": MODEL_NAME,
        "intended_use": "demonstration and testing of explanation methods; not for clinical use",
        "labels": list(demo_data.LABELS),
        "terminology": demo_data.TERMINOLOGY,
        "channels": [
            {"name": "t1c", "description": "real T1 with contrast-enhanced-T1-like lesion intensities"},
            {"name": "flair", "description": "FLAIR-like contrast synthesised from the real T1, bright edema"},
        ],
        "spacing_mm": spec["spacing"],
        "normalization": spec["normalization"],
        "normalization_range": spec["normalization_range"],
        "architecture": ARCHITECTURE,
        "args": NETWORK_ARGS,
        "decoder_stages": decoder_layers(result.network),
        "weights": {"file": weights.name, "sha256": spec["sha256"], "bytes": weights.stat().st_size},
        "data": _data_card(config, data),
        "training": {
            **{
                k: v
                for k, v in asdict(config).items()
                if k not in ("seed", "train_slices", "val_slices", "eval_slices")
            },
            "loss": "DiceCE (MONAI, softmax)",
            "optimizer": "Adam, one-cycle schedule",
            "seconds": round(result.seconds, 1),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {config.threads} threads",
        },
        "history": result.history,
        "held_out_dice": {k: round(v, 4) for k, v in scores.items()},
        "command": command,
    }


def train_demo(
    out: Path,
    config: TrainConfig,
    command: str,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate the demo data, train, evaluate on the held-out set and write the model folder
    (``progress``: as in :func:`train_network`).

    Returns the model card (also written to ``out/model_card.json``).
    """
    torch.set_num_threads(config.threads)
    data = _make_demo_data(config, log)
    result = train_network(
        data.train, data.val, config.epochs, config.batch_size, config.learning_rate, config.seed, progress, log
    )
    scores = dice_scores(predict_labels(result.network, data.held_out.images), data.held_out.labels)
    weights, spec = _write_weights(out, result.network)
    card = _model_card(config, command, data, result, weights, spec, scores)
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(card), encoding="utf-8")
    log("held-out Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return card
