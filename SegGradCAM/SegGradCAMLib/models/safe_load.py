"""Loading weight files as data, never as code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import SegGradCAMError

TRUST_HINT = "pass --trust-model (trust=True) only if you trust its source"


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip archive (it contains a ``code/`` folder)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``.

    Checkpoints that nest the weights under ``state_dict``/``model`` keys are
    unwrapped. A file that carries pickled code is refused, not executed.
    """
    path = Path(path)
    if not path.is_file():
        raise SegGradCAMError(f"Model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error) and "global" not in str(error):
            raise SegGradCAMError(
                f"Cannot read model file {path.name}: it is corrupt or not a PyTorch file."
            ) from error
        raise SegGradCAMError(
            f"Refused to load {path.name}: it is a pickle that carries Python objects or code "
            "(weights_only=True rejected it). Save the weights as a plain state_dict "
            "(torch.save(model.state_dict(), ...)); code in a checkpoint is never executed."
        ) from error
    except Exception as error:  # weights_only never runs code: any other failure is a damaged file
        raise SegGradCAMError(
            f"Cannot read model file {path.name}: it is corrupt or not a PyTorch file "
            f"({type(error).__name__}: {error})."
        ) from error
    for key in ("state_dict", "model", "network", "model_state_dict"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SegGradCAMError(f"Model file {path.name} does not hold a state_dict of tensors.")
    return data
