"""Models: pre-trained networks by name, or model files/folders by path.

``load_model("hdbet")`` gives HD-BET (the default real network);
``load_model(path, trust=...)`` reads a MONAI bundle folder (:mod:`.bundle`), a
TorchScript file (:mod:`.torchscript`) or a JSON spec next to a ``state_dict``
file (:mod:`.json_spec`). What each registered model declares (labels, input
channels, decoder stages) is in :mod:`.declarations`, readable without torch; the
names and their loaders are in :mod:`.registry`. This package imports torch only
when a model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import SegGradCAMError
from .declarations import DEFAULT_MODEL, DEFAULT_MULTICLASS_MODEL, SHIPPED_MODELS
from .nnunet import looks_like_nnunet_folder
from .registry import REGISTRY, list_models
from .spec import LoadedModel, ModelSpec


def load_model_path(
    path: Path, trust: bool, folds: Sequence[str] | None = None, checkpoint: str | None = None
) -> LoadedModel:
    """Load a model file or MONAI bundle folder, picking the format from the path:

    - a folder: an nnU-Net v2 trained-model folder (``plans.json`` + ``dataset.json``), else a
      MONAI bundle;
    - ``*.json``: a JSON spec;
    - any other file with a JSON spec of the same stem beside it (``model.pt`` +
      ``model.json``): that spec, for this file;
    - a TorchScript archive (a zip with ``code/``), needs ``trust=True``;
    - anything else (a bare ``state_dict``): refused, with an example spec.

    The network is in eval mode and returns logits ``(B, C, *S)``. ``folds`` (``["all"]`` for
    ``fold_all``) and ``checkpoint`` apply to nnU-Net folders only (default: every fold holding
    ``checkpoint_final.pth``).
    """
    from .bundle import load_bundle
    from .json_spec import EXAMPLE_SPEC, load_json_spec
    from .safe_load import is_torchscript_archive
    from .torchscript import load_torchscript

    path = Path(path)
    if path.is_dir() and looks_like_nnunet_folder(path):
        from .nnunet import CHECKPOINTS, load_nnunet_model

        return load_nnunet_model(path, folds, checkpoint or CHECKPOINTS[0], trust=trust)
    if path.is_dir():
        return load_bundle(path, trust)
    if not path.is_file():
        raise SegGradCAMError(f"Model file not found: {path}")
    if path.suffix.lower() == ".json":
        return load_json_spec(path, trust)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return load_json_spec(sidecar, trust, weights=path)
    if is_torchscript_archive(path):
        return load_torchscript(path, trust, {})
    raise SegGradCAMError(
        f"{path.name} holds no architecture: a weights file needs a JSON spec naming the network. "
        f"Write {path.stem}.json next to it, e.g. {EXAMPLE_SPEC}"
    )


def load_model(
    name_or_path: str,
    trust: bool = False,
    device: str = "cpu",
    folds: Sequence[str] | None = None,
    checkpoint: str | None = None,
) -> LoadedModel:
    """Load a registered model by name, or a model file/folder by path.

    ``trust=True`` allows formats that execute code (TorchScript, MONAI bundle
    configs with expressions). The network is returned in eval mode on ``device``,
    with its subnormal weights set to zero (counted in ``subnormals_zeroed``).
    """
    if (folds or checkpoint) and not looks_like_nnunet_folder(Path(name_or_path)):
        raise SegGradCAMError("--folds and --checkpoint apply to nnU-Net trained-model folders only.")
    if name_or_path in REGISTRY:
        loaded = REGISTRY[name_or_path].loader(trust)
    elif Path(name_or_path).exists():
        loaded = load_model_path(Path(name_or_path), trust, folds, checkpoint)
    else:
        names = ", ".join(REGISTRY)
        raise SegGradCAMError(f"Unknown model {name_or_path!r}: not a registered name ({names}) nor an existing path.")
    from .subnormal import zero_subnormals

    loaded.subnormals_zeroed = zero_subnormals(loaded.network)
    loaded.network.to(device).eval()
    return loaded


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MULTICLASS_MODEL",
    "REGISTRY",
    "SHIPPED_MODELS",
    "LoadedModel",
    "ModelSpec",
    "list_models",
    "load_model",
    "load_model_path",
]
