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
            print(f"    faithfulness: {faithfulness_text(info.faithfulness)}")
        if entry.reliance is not None and layer == report.layers[0]:
            print(f"    relies on: {reliance_text(entry.reliance)}")
    if report.findings is not None:
        print_findings(report.findings, out)
    if report.uncertainty:
        print(f"Probabilities and entropy: {', '.join(report.uncertainty)}")
    if report.dicom:
        store = report.dicom.get("store")
        stored = f"; stored on {store['server']}" if store and store["stored"] else ""
        maps = len(report.dicom["files"]) - 1
        print(f"DICOM: {out / 'dicom'} (a SEG and {maps} Parametric Map{'s' if maps != 1 else ''}{stored})")
    print(f"Wrote {out / 'explain.json'} ({report.timings['total_s']:.1f} s in all)")
    print(f"See it in the browser viewer: seggradcam web {out}   (3D Slicer: load the .nrrd files)")


def faithfulness_text(score: dict) -> str:
    """One line: the verdict, then the Deletion AUC against the random orderings' and the mask's."""
    return (
        f"{score['verdict']} (Deletion AUC {score['deletion_auc']:.3f}, random "
        f"{score['random']['deletion_mean']:.3f} ± {score['random']['deletion_sd']:.3f}, mask "
        f"{score['mask']['deletion_auc']:.3f}; Insertion {score['insertion_auc']:.3f}; {score['basis']})"
    )


def reliance_text(reliance: dict[str, dict[str, float]]) -> str:
    """One line: ``probability without t1c -12%, without flair -80% (all -95%); |input x gradient|
    within 7 mm t1c 30%, flair 70%``."""
    occlusion = reliance.get("occlusion", {})
    lost = ", ".join(f"without {name} {-value:+.0%}" for name, value in occlusion.items() if name != "all")
    shares = ", ".join(f"{name} {value:.0%}" for name, value in reliance.get("input_gradient", {}).items())
    return f"probability {lost} (all {-occlusion.get('all', 0.0):+.0%}); |input x gradient| within 7 mm {shares}"


def print_findings(findings: dict, out: Path) -> None:
    """One line per finding: class, volume, probability, where its map's energy lies, its file."""
    left = f", {findings['left_out']} smaller left out (--max-findings)" if findings["left_out"] else ""
    point = findings.get("point")
    chosen = f"; at the point: finding {point['finding']} ({point['distance_mm']:.1f} mm away)" if point else ""
    print(f"Findings: {findings['found']} of at least {findings['min_finding_mm3']:g} mm³{left}{chosen}")
    for finding in findings["findings"]:
        layer = next(iter(finding["layers"].values()))
        probability = finding.get("probability_mean")
        sure = "" if probability is None else f", mean probability {probability:.2f}"
        print(
            f"  f{finding['id']} {finding['class']}: {finding['volume_ml']:.2f} mL at RAS "
            f"({', '.join(f'{v:.1f}' for v in finding['centroid_ras'])}){sure}, heatmap energy inside "
            f"{layer['energy_inside']:.0%}, within 7 mm {layer['energy_inside'] + layer['energy_shell']:.0%} "
            f"-> {out / layer['file']}"
        )
        if "faithfulness" in layer:
            print(f"    faithfulness: {faithfulness_text(layer['faithfulness'])}")
        if "reliance" in finding:
            print(f"    relies on: {reliance_text(finding['reliance'])}")
