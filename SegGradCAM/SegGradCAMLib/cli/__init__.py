"""The ``seggradcam`` command line: ``explain``, ``models``, ``evaluate``, ``train``, ``roar``.

One module per command. User errors (bad files, unknown names, ...) print one line
``seggradcam: error: ...`` and exit with code 2. Long commands report progress
(:mod:`.progress`): a bar on a terminal, a line per stage otherwise, nothing with
``--quiet``, and with ``--progress json`` the project's JSON events on standard output
(ending in exactly one ``done`` or ``error`` event; Ctrl-C: the ``error`` event "interrupted"
and exit code 130; SIGTERM: "terminated" and 143; further signals are ignored while the run
cleans up). Heavy imports (torch, monai) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import SegGradCAMError
from ..reports import ExplainReport
from .evaluate import add_evaluate_parser, evaluate_command
from .explain import add_explain_parser, explain_command, print_summary
from .progress import MODES, events_on_stdout, make_reporter
from .train import add_roar_parser, add_train_parser, roar_command, train_command
from .web import add_web_parser, web_command

COMMANDS = {"explain": explain_command, "evaluate": evaluate_command, "train": train_command, "roar": roar_command}


def _progress_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--progress",
        default="auto",
        choices=MODES,
        help="auto: a bar on a terminal, one line per stage otherwise; json: one JSON event per "
        "line on standard output (for the 3D Slicer module and the web viewer); quiet: none",
    )
    options.add_argument("--quiet", action="store_true", help="no progress output (same as --progress quiet)")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seggradcam",
        description="Seg-Grad-CAM heatmaps for pre-trained medical segmentation networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_progress_options()]
    add_explain_parser(sub, common)
    models = sub.add_parser("models", help="list the registered models (and the nnU-Net folders under --scan DIR)")
    models.add_argument(
        "--scan",
        type=Path,
        metavar="DIR",
        help="also list the nnU-Net trained-model folders found under DIR (default: "
        "TotalSegmentator's and $nnUNet_results when they exist)",
    )
    add_evaluate_parser(sub, common)
    add_train_parser(sub, common)
    add_roar_parser(sub, common)
    add_web_parser(sub)
    return parser


def run_models(scan: Path | None = None) -> None:
    """Print the registry and the nnU-Net folders under ``scan`` (default: where TotalSegmentator
    and nnU-Net keep them on this computer), without importing torch."""
    from ..models.nnunet import find_nnunet_folders, known_model_roots, nnunet_facts
    from ..models.declarations import DEFAULT_MODEL
    from ..models.registry import list_models

    for entry in list_models():
        mark = "*" if entry["name"] == DEFAULT_MODEL else " "
        state = "" if entry["installed"] else "  [not installed]"
        print(f"{mark} {entry['name']:<14} {entry['description']}{state}")
    roots = [scan] if scan is not None else known_model_roots()
    if scan is not None and not scan.is_dir():
        raise SegGradCAMError(f"--scan {scan}: not a folder.")
    for root in roots:
        folders = find_nnunet_folders(root)
        print(f"\nnnU-Net trained-model folders under {root}: {len(folders)}")
        for folder in folders:
            try:
                facts = nnunet_facts(folder)
                print(f"  {folder}  ({facts.in_channels} input(s); {', '.join(facts.labels)})")
            except SegGradCAMError as error:
                print(f"  {folder}  (unusable: {error})")
    print(
        "\nAlso accepted as --model: an nnU-Net v2 trained-model folder, a MONAI bundle folder, a TorchScript "
        "file (--trust-model), or a JSON spec naming a MONAI architecture and a state_dict file."
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, ending a run the way Ctrl-C does (its folders cleaned up), with exit code 143."""


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated`, once: after the first,
    both are ignored so that the cleanup runs to its end. The handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def stop(number: int, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated() if number == signal.SIGTERM else KeyboardInterrupt()

    before = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _run(args: argparse.Namespace) -> int:
    """Run one long command with its progress output; returns the exit code."""
    mode = "quiet" if args.quiet else args.progress
    start = time.perf_counter()
    with signals_end_the_run(), events_on_stdout() if mode == "json" else contextlib.nullcontext(None) as events:
        reporter = make_reporter(mode, args.command, events)
        if reporter is not None:
            reporter("startup", 0, 1)  # interpreter, torch import and model load, up to the command's 1/1
        try:
            report = COMMANDS[args.command](args, reporter)
        except (SegGradCAMError, KeyboardInterrupt) as error:
            interrupted = isinstance(error, KeyboardInterrupt)  # main() says so and exits 130 (143)
            stopped = "terminated" if isinstance(error, Terminated) else "interrupted"
            message = stopped if interrupted else str(error).splitlines()[0] if str(error) else type(error).__name__
            if not interrupted:
                print(f"seggradcam: error: {message}", file=sys.stderr)
            if events is not None:  # the event readers wait for an end
                events.write(json.dumps({"event": "error", "message": message}) + "\n")
            if interrupted:
                raise
            return 2
        finally:
            if reporter is not None:
                reporter.close()
        if isinstance(report, ExplainReport):
            print_summary(report, Path(args.out))  # on standard error with --progress json
        if events is not None:
            events.write(
                json.dumps({"event": "done", "out": str(args.out), "seconds": round(time.perf_counter() - start, 3)})
                + "\n"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if sys.platform == "darwin":  # operations MPS lacks run on the CPU instead of failing
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            run_models(args.scan)
            return 0
        if args.command == "web":
            web_command(args)
            return 0
        return _run(args)
    except SegGradCAMError as error:
        print(f"seggradcam: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("seggradcam: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("seggradcam: interrupted", file=sys.stderr)
        return 130
