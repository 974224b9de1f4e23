"""What the user chose, parsed once for every front end: classes, layers, methods,
comma-separated lists, removal fractions and the device.

Torch-free at import (3D Slicer's module reads :data:`CAM_METHODS` without torch).
"""

from __future__ import annotations

import re
from typing import Sequence

from .errors import SegGradCAMError

ALL_CLASSES = "all"
AUTO_LAYER = "auto"
NONE = "none"
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
AUTO_METHOD = "auto"  # the method the model's card chose by evidence
METHOD_CHOICES = (AUTO_METHOD, *CAM_METHODS)
DEFAULT_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEFAULT_PERCENTAGES_TEXT = ",".join(f"{100 * f:g}" for f in DEFAULT_FRACTIONS)


def split_list(text: str | Sequence[str]) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``"none"`` -> ``[]``; a sequence is returned as a list."""
    if not isinstance(text, str):
        return [str(part) for part in text]
    if text.strip() == NONE:
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def layer_selection(text: str | Sequence[str]) -> str | list[str]:
    """``"auto"`` stays ``"auto"`` (the model's finest decoder stage); else the layer names."""
    if isinstance(text, str) and text.strip() in (AUTO_LAYER, ""):
        return AUTO_LAYER
    return split_list(text)


def choices(text: str, valid: Sequence[str], option: str) -> tuple[str, ...]:
    """Comma-separated names, each one of ``valid``; at least one."""
    chosen = tuple(split_list(text))
    unknown = [c for c in chosen if c not in valid]
    if unknown or not chosen:
        raise SegGradCAMError(f"{option}: unknown or missing {unknown or ''}; choose from {', '.join(valid)}.")
    return chosen


def numbers(text: str, option: str) -> list[float]:
    """Comma-separated numbers."""
    try:
        return [float(part) for part in split_list(text)]
    except ValueError:
        raise SegGradCAMError(
            f"{option} takes numbers (comma-separated numbers like 10,30,50); got {text!r}."
        ) from None


def fractions_from_percentages(text: str, option: str) -> tuple[float, ...]:
    """``"10,30,50"`` -> ``(0.1, 0.3, 0.5)``; each strictly between 0 and 100."""
    values = numbers(text, option)
    if not values or any(not 0 < v < 100 for v in values):
        raise SegGradCAMError(f"{option} are percentages strictly between 0 and 100; got {text!r}.")
    return tuple(v / 100 for v in values)


def class_indices(text: str | Sequence[int | str], labels: Sequence[str]) -> list[int]:
    """Class indices from ``"all"`` (every class but a leading ``background``), or
    names/indices (a comma-separated string or a sequence)."""
    if isinstance(text, str) and text.strip() == ALL_CLASSES:
        return [i for i, name in enumerate(labels) if i > 0 or name.lower() != "background"]
    chosen = []
    for part in split_list(text if isinstance(text, str) else [str(t) for t in text]):
        if part in labels:
            chosen.append(list(labels).index(part))
        elif part.isdigit() and int(part) < len(labels):
            chosen.append(int(part))
        else:
            raise SegGradCAMError(f"Unknown class {part!r}; valid classes: {', '.join(labels)}.")
    if not chosen:
        raise SegGradCAMError(f"No class given; valid classes: {', '.join(labels)}.")
    return list(dict.fromkeys(chosen))  # a class named twice (by name and index) is explained once


def check_device_name(name: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; whether it is present is :func:`pick_device`'s."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise SegGradCAMError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.")


def pick_device(name: str) -> str:
    """Resolve ``auto``/``cpu``/``cuda[:N]``/``mps``; refuse CUDA or MPS where there is none.

    ``auto``: CUDA when present, else Apple's MPS (untested here; operations it lacks
    run on the CPU, see ``PYTORCH_ENABLE_MPS_FALLBACK`` in the command line), else the CPU.
    """
    check_device_name(name)
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cpu" or (name == "mps" and mps):
        return name
    if name == "mps":
        raise SegGradCAMError("--device mps was requested but MPS (Apple GPU) is not available here; use --device cpu.")
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise SegGradCAMError(f"--device {name} was requested but CUDA is not available here; use --device cpu.")
    return name
