"""``seggradcam web``: the browser viewer (the ``[web]`` extra, trame-slicer)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import SegGradCAMError

WEB_EXTRA_HINT = (
    'the browser viewer needs the web extra (trame-slicer): pip install -e ".[web]" in the '
    'SegGradCAM checkout, or pip install "SegGradCAMLib[web]"'
)


def add_web_parser(sub) -> None:
    """The ``web`` subcommand."""
    web = sub.add_parser("web", help="browser viewer: open volumes, run, toggle heatmaps (trame-slicer)")
    web.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="volume files (one per channel) or a folder 'seggradcam explain' wrote, opened at start",
    )
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    web.add_argument("--port", type=int, default=8080, help="port (0: any free port; the address is printed)")
    web.add_argument(
        "--models",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="offer the nnU-Net trained-model folders under DIR (repeatable)",
    )
    web.add_argument(
        "--trust-model",
        action="store_true",
        help="let the page run models whose format is code (TorchScript, bundle expressions)",
    )
    web.add_argument("--max-upload-mb", type=float, default=512, help="largest upload accepted (default 512 MB)")
    web.add_argument(
        "--max-disk-mb",
        type=float,
        help="disk quota for all uploads held at once, unpacked zips included (default 4096 MB)",
    )
    web.add_argument(
        "--max-voxels",
        type=int,
        help="refuse, unread, an uploaded volume declaring more voxels (default 512³ = 134,217,728)",
    )
    web.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="URL",
        help="also accept pages served from URL (e.g. https://viewer.example.org behind a proxy); by default "
        "only the server's own address is accepted (repeatable)",
    )


def web_command(args: argparse.Namespace) -> None:
    """Start the viewer; uploads and outputs are deleted when it stops."""
    for folder in args.models:
        if not folder.is_dir():
            raise SegGradCAMError(f"--models {folder}: not a folder.")
    for name, value in (("--max-upload-mb", args.max_upload_mb), ("--max-disk-mb", args.max_disk_mb)):
        if value is not None and not value > 0:
            raise SegGradCAMError(f"{name} must be more than 0; got {value}.")
    if args.max_voxels is not None and args.max_voxels < 1:
        raise SegGradCAMError(f"--max-voxels must be >= 1; got {args.max_voxels}.")
    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise SegGradCAMError(f"Not found: {', '.join(missing)}.")
    if len(inputs) > 1 and any(p.is_dir() for p in inputs):
        raise SegGradCAMError("Give either one output folder or volume files (one per channel), not both.")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X display needed
    os.environ["TRAME_ARGS"] = "--server"  # trame must not parse this command line itself
    try:
        from ..web.app import SegGradCAMWeb
    except ImportError as error:
        raise SegGradCAMError(f"{WEB_EXTRA_HINT} ({error}).") from None

    limits = {"max_disk_mb": args.max_disk_mb, "max_voxels": args.max_voxels}  # None: the viewer's defaults
    viewer = SegGradCAMWeb(
        model_dirs=args.models,
        trust=args.trust_model,
        max_upload_mb=args.max_upload_mb,
        host=args.host,
        allowed_origins=args.allowed_origin,
        **{name: value for name, value in limits.items() if value is not None},
    )
    try:
        if inputs and inputs[0].is_dir():
            if not (inputs[0] / "explain.json").is_file():
                raise SegGradCAMError(f"{inputs[0]} has no explain.json: give a folder 'seggradcam explain' wrote.")
            viewer.open_output_folder(inputs[0])
        elif inputs:
            viewer.load_case(inputs, ", ".join(p.name for p in inputs))

        def ready(**_) -> None:
            print(
                f"SegGradCAM web viewer: open http://{args.host}:{viewer.server.port}/ in a browser "
                "(Ctrl-C stops it and deletes uploads and outputs)",
                flush=True,
            )

        viewer.ctrl.on_server_ready.add(ready)
        viewer.server.start(host=args.host, port=args.port, open_browser=False, timeout=0, show_connection_info=False)
    finally:
        viewer.close()
    print("SegGradCAM web viewer stopped.", file=sys.stderr)
