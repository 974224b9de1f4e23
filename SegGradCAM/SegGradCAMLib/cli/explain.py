"""``seggradcam explain``: segment a volume and write one heatmap per class and layer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import ExplainOptions

if TYPE_CHECKING:  # torch stays out of the import of the command line
    from ..inference import ProgressCallback
    from ..reports import ExplainReport


def add_explain_parser(sub, parents: list) -> None:
    """The ``explain`` subcommand: the arguments :class:`ExplainOptions` declares."""
    explain = sub.add_parser("explain", parents=parents, help="segment a volume and write one heatmap per class")
    ExplainOptions.add_arguments(explain)


def explain_command(args: argparse.Namespace, progress: ProgressCallback | None = None):
    """The options of ``args``, explained (see :func:`SegGradCAMLib.api.explain`)."""
    from ..api import explain

    return explain(ExplainOptions.from_namespace(args), progress)


def print_summary(report: ExplainReport, out: Path) -> None:
    """The method and why, then one line per class and layer: voxels, heatmap energy inside the mask, file."""
    card = report.method_card
    print(f"Method {report.method}" + (f" (auto: {card['basis']})" if card else ""))
    for entry, layer, info in report.heatmaps():
        print(
            f"{entry.name} [{layer}]: {entry.voxels} voxels, "
            f"heatmap energy inside mask {info.energy_inside:.1%}, "
            f"within 3 mm {info.energy_inside + info.energy_shell:.1%} -> {out / info.file}"
        )
        if info.faithfulness is not None:
            score = info.faithfulness
            print(
                f"    faithfulness: {score['verdict']} (Deletion AUC {score['deletion_auc']:.3f}, random "
                f"{score['random']['deletion_mean']:.3f} ± {score['random']['deletion_sd']:.3f}, mask "
                f"{score['mask']['deletion_auc']:.3f}; Insertion {score['insertion_auc']:.3f}; {score['basis']})"
            )
    if report.dicom:
        store = report.dicom.get("store")
        stored = f"; stored on {store['server']}" if store and store["stored"] else ""
        maps = len(report.dicom["files"]) - 1
        print(f"DICOM: {out / 'dicom'} (a SEG and {maps} Parametric Map{'s' if maps != 1 else ''}{stored})")
    print(f"Wrote {out / 'explain.json'} ({report.timings['total_s']:.1f} s in all)")
    print(f"See it in the browser viewer: seggradcam web {out}   (3D Slicer: load the .nrrd files)")
