"""The ``seggradcam`` command line: ``explain``, ``models``, ``evaluate``, ``train``, ``roar``.

One module per command. User errors (bad files, unknown names, ...) print one line
``seggradcam: error: ...`` and exit with code 2. Heavy imports (torch, monai) happen
only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import SegGradCAMError
from .evaluate import add_evaluate_parser, evaluate_command
from .explain import add_explain_parser, explain_command, print_summary
from .train import add_roar_parser, add_train_parser, roar_command, train_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seggradcam",
        description="Seg-Grad-CAM heatmaps for pre-trained medical segmentation networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_explain_parser(sub)
    sub.add_parser("models", help="list the registered models")
    add_evaluate_parser(sub)
    add_train_parser(sub)
    add_roar_parser(sub)
    return parser


def run_models() -> None:
    """Print the registry (without importing torch)."""
    from ..models.registry import DEFAULT_MODEL, list_models

    for entry in list_models():
        mark = "*" if entry["name"] == DEFAULT_MODEL else " "
        state = "" if entry["installed"] else "  [not installed]"
        print(f"{mark} {entry['name']:<14} {entry['description']}{state}")
    print("\nAlso accepted as --model: a MONAI bundle folder, a TorchScript file (--trust-model), "
          "or a JSON spec naming a MONAI architecture and a state_dict file.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            run_models()
        elif args.command == "train":
            train_command(args)
        elif args.command == "roar":
            roar_command(args)
        elif args.command == "evaluate":
            evaluate_command(args)
        else:
            print_summary(explain_command(args), args.out)
    except SegGradCAMError as error:
        print(f"seggradcam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seggradcam: interrupted", file=sys.stderr)
        return 130
    return 0
