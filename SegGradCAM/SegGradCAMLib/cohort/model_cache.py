"""The model of a cohort's cases, loaded once per process (a Ray worker runs many cases)."""

from __future__ import annotations

from typing import Callable

_MODELS: dict[tuple, object] = {}
_LOADS = {"count": 0}


def cached_model(key: tuple, load: Callable[[], object]):
    """The model loaded for ``key`` in this process, loading it on first use."""
    if key not in _MODELS:
        _MODELS.clear()  # one model per process
        _MODELS[key] = load()
        _LOADS["count"] += 1
    return _MODELS[key]


def model_loads() -> int:
    """How many times this process loaded a model."""
    return _LOADS["count"]
