"""Deletion/Insertion in a 3D Slicer scene: curves as a plot chart, AUCs in a table.

Works on any ``vtkMRMLScene`` (Slicer's or one made with the ``slicer-core`` wheel).
The evaluation itself is ``seggradcam evaluate`` in the worker process (see
:meth:`SegGradCAMLib.mrml.runs.SegGradCAMSceneLogic.startEvaluation`);
:func:`showEvaluation` turns its ``metrics.json`` into nodes: a ``vtkMRMLTableNode`` of
mean curves (one column per explanation and curve), one ``vtkMRMLPlotSeriesNode`` per
column in a ``vtkMRMLPlotChartNode``, and a table node of AUCs with confidence intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import SegGradCAMError

CURVE_KINDS = ("deletion", "insertion")
# Matplotlib's default cycle: the same colour per explanation as in report.html.
SERIES_COLORS = (
    (0.12, 0.47, 0.71),
    (1.0, 0.5, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29),
)
AUC_COLUMNS = (
    ("deletion_auc", "Deletion AUC"),
    ("deletion_auc_normalised", "Deletion AUC / step 0"),
    ("insertion_auc", "Insertion AUC"),
    ("insertion_auc_normalised", "Insertion AUC / full input"),
    ("deletion_dice_auc", "Deletion Dice AUC"),
    ("insertion_dice_auc", "Insertion Dice AUC"),
)


@dataclass
class EvaluationNodes:
    """Nodes :func:`showEvaluation` added."""

    chartNode: object
    curveTableNode: object
    seriesNodes: list
    aucTableNode: object


def addTableColumn(table, name: str, values: Sequence, kind: str = "float") -> None:
    import vtk

    array = vtk.vtkFloatArray() if kind == "float" else vtk.vtkStringArray()
    array.SetName(name)
    for value in values:
        array.InsertNextValue(float(value) if kind == "float" else str(value))
    table.AddColumn(array)


def showEvaluation(scene, report: dict, baseName: str) -> EvaluationNodes:
    """Add the mean Deletion/Insertion curves and the AUC table of an evaluation to ``scene``.

    ``report``: the :class:`~SegGradCAMLib.reports.EvaluationReport` (metrics.json) ``seggradcam
    evaluate`` writes (its ``curves`` and ``summary``). Deletion series are solid, Insertion
    series dashed; each explanation keeps one colour.
    """
    import slicer

    from ..evaluation.statistics import explanation_name

    curves = [c for c in report.curves if c["curve"] in CURVE_KINDS]
    if not curves:
        raise SegGradCAMError("The evaluation holds no Deletion/Insertion curve to show.")
    several = len({c["class"] for c in curves}) > 1
    curveTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{baseName} curves")
    addTableColumn(curveTable.GetTable(), "fraction", curves[0]["fractions"])
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{baseName} Deletion-Insertion")
    chart.SetTitle(f"{baseName}: Deletion (solid) and Insertion (dashed)")
    chart.SetXAxisTitle("fraction of voxels removed / restored")
    chart.SetYAxisTitle("mean class probability in the predicted mask")
    explanations = list(dict.fromkeys((c["class"], c["method"], c["layer"]) for c in curves))
    seriesNodes = []
    for curve in curves:
        key = (curve["class"], curve["method"], curve["layer"])
        label = (f"{curve['class']} " if several else "") + explanation_name(curve["method"], curve["layer"])
        column = f"{label} {curve['curve']}"
        addTableColumn(curveTable.GetTable(), column, curve["mean"])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{baseName} {column}")
        series.SetAndObserveTableNodeID(curveTable.GetID())
        series.SetXColumnName("fraction")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineStyle(
            slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
            if curve["curve"] == "deletion"
            else slicer.vtkMRMLPlotSeriesNode.LineStyleDash
        )
        series.SetColor(*SERIES_COLORS[explanations.index(key) % len(SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        seriesNodes.append(series)
    curveTable.Modified()

    aucTable = addAucTable(scene, report, baseName, several)
    return EvaluationNodes(chart, curveTable, seriesNodes, aucTable)


def addAucTable(scene, report, baseName: str, several: bool):
    """A table node of the evaluation's AUCs per explanation (means and 95% CIs, classes apart)."""
    from ..evaluation.statistics import POOLED, explanation_name, format_stat

    aucTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{baseName} AUC")
    summary = [s for s in report.summary if s["class"] != POOLED]
    addTableColumn(
        aucTable.GetTable(),
        "explanation",
        [(f"{s['class']} " if several else "") + explanation_name(s["method"], s["layer"]) for s in summary],
        kind="string",
    )
    for column, title in AUC_COLUMNS:
        addTableColumn(aucTable.GetTable(), title, [s[column]["mean"] if column in s else np.nan for s in summary])
        addTableColumn(
            aucTable.GetTable(), f"{title} 95% CI", [format_stat(s.get(column)) for s in summary], kind="string"
        )
    addTableColumn(aucTable.GetTable(), "cases", [s["n"] for s in summary])
    aucTable.Modified()
    return aucTable
