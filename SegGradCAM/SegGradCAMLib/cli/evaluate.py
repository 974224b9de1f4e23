"""``seggradcam evaluate``: how faithful the heatmaps are, over a data set."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..options import EvaluateOptions

if TYPE_CHECKING:  # torch stays out of the import of the command line
    from ..inference import ProgressCallback


def add_evaluate_parser(sub, parents: list) -> None:
    """The ``evaluate`` subcommand: the arguments :class:`EvaluateOptions` declares."""
    evaluate = sub.add_parser(
        "evaluate", parents=parents, help="faithfulness of the heatmaps: Deletion/Insertion, ROAD, sanity checks"
    )
    EvaluateOptions.add_arguments(evaluate)


def evaluate_command(args: argparse.Namespace, progress: ProgressCallback | None = None):
    """The options of ``args``, evaluated (see :func:`SegGradCAMLib.api.evaluate`)."""
    from ..api import evaluate

    return evaluate(EvaluateOptions.from_namespace(args), progress)
