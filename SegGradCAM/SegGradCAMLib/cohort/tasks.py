"""The per-case work of a cohort, run by either engine: ``explain`` and ``evaluate`` of one case
through the same functions a single run uses, with the model loaded once per process.

A task object holds the command's options (it travels to Ray's worker processes by value); its
:meth:`run` writes one case's outputs into a folder.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cases import CohortCase

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


@dataclass
class ExplainTask:
    """``seggradcam explain`` of one case into ``OUT/<case id>/``, as a single run writes it."""

    args: argparse.Namespace
    command = "explain"
    done_file = "explain.json"

    def folder(self, out: Path, case: CohortCase) -> Path:
        return out / case.id

    def fingerprint(self) -> dict:
        """The options that shape a case's outputs (a resumed run must use the same)."""
        keep = ("model", "layers", "method", "classes", "region", "heatmap_dtype", "amp", "step_size", "folds",
                "checkpoint", "faithfulness", "mirror", "no_overview")
        return {k: str(getattr(self.args, k)) for k in keep}

    def run(self, case: CohortCase, folder: Path) -> None:
        from ..cli.explain import explain_command, load_explain_model

        args = copy.copy(self.args)
        args.inputs, args.out, args.cohort = list(case.inputs), folder, None

        def load(a: argparse.Namespace, device: str):
            key = (a.model, a.trust_model, device, a.folds, a.checkpoint)
            return cached_model(key, lambda: load_explain_model(a, device))

        explain_command(args, None, load)


@dataclass
class EvaluateTask:
    """``seggradcam evaluate``'s rows, curves and gallery of one case into ``OUT/cases/<case id>/``
    (merged over the cohort afterwards)."""

    model: str
    trust_model: bool
    config: object  # EvalConfig
    max_slices: int
    command = "evaluate"
    done_file = "evaluation.json"

    def folder(self, out: Path, case: CohortCase) -> Path:
        return out / "cases" / case.id

    def fingerprint(self) -> dict:
        from ..evaluation.dataset import config_dict

        return {"model": self.model, "max_slices": self.max_slices,
                **{k: str(v) for k, v in config_dict(self.config).items() if k != "device"}}

    def run(self, case: CohortCase, folder: Path) -> None:
        from ..evaluation.dataset import evaluate_volume, save_result
        from ..models import load_model

        device = self.config.device
        model = cached_model((self.model, self.trust_model, device),
                             lambda: load_model(self.model, trust=self.trust_model, device=device))
        result = evaluate_volume(model, case.inputs, case.id, case.index, self.config, self.max_slices)
        save_result(result, folder, with_gallery=case.index < self.config.gallery)
