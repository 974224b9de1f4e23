"""What each model declares about itself, readable without torch: the bottom of the import graph.

Each model's labels, input channels and decoder stages are declared once
(:class:`ModelFacts`): HD-BET's and deepbet's here, the shipped demo model's in its
own files (JSON spec and ``model_card.json``, read by :func:`shipped_facts`). The
registry (:mod:`.registry`, names -> loaders), the loaders, the 3D Slicer widget
and ``seggradcam models`` all read these declarations. This module imports nothing
of the package but :mod:`..errors`, and no torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import SegGradCAMError

DEFAULT_MODEL = "hdbet"
DEFAULT_MULTICLASS_MODEL = "demo-lesions-unet2d"


@dataclass(frozen=True)
class ModelFacts:
    """What a model declares: class names (index = output channel), number of input
    volumes, decoder stages offered for explanation (coarse to fine; the last is the default)."""

    labels: tuple[str, ...]
    in_channels: int
    layers: tuple[str, ...]


HDBET = ModelFacts(("background", "brain"), 1, ("loc1", "loc2", "loc3", "end_conv_2_bn"))
DEEPBET = ModelFacts(("background", "brain"), 1, ("up0", "up1", "up2", "up3", "tp_conv1", "conv"))


def _shipped_models_folder() -> Path:
    """Where the project's trained models lie: next to SegGradCAMLib (3D Slicer, editable
    install) or under ``<prefix>/share/seggradcam`` (wheel install, see pyproject's data-files)."""
    beside = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    installed = Path(sys.prefix) / "share" / "seggradcam" / "Models"
    return beside if beside.is_dir() or not installed.is_dir() else installed


SHIPPED_MODELS = _shipped_models_folder()


def shipped_spec_path(name: str) -> Path:
    """``Resources/Models/<name>/<name>.json`` of a model trained by this project."""
    path = SHIPPED_MODELS / name / f"{name}.json"
    if not path.is_file():
        raise SegGradCAMError(
            f"The shipped model {name} is missing ({path}); rebuild it with 'seggradcam train --recipe demo'."
        )
    return path


def shipped_facts(name: str) -> ModelFacts:
    """The declaration of a shipped model, from its JSON spec and ``model_card.json``."""
    spec = json.loads(shipped_spec_path(name).read_text(encoding="utf-8"))
    card_path = SHIPPED_MODELS / name / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    return ModelFacts(tuple(spec["labels"]), int(spec["in_channels"]), tuple(card.get("decoder_stages", ())))
