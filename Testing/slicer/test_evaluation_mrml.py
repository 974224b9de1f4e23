"""Deletion/Insertion curves and AUCs as plot chart and table nodes, on slicer-core's real MRML scene,
computed by ``seggradcam evaluate`` in the worker process."""

from __future__ import annotations

import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from toy_models import blob, threshold_model_file  # noqa: E402

from SegGradCAMLib.errors import SegGradCAMError  # noqa: E402
from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic  # noqa: E402


def _volume(scene, array: np.ndarray, name: str = "blob"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(1.0, 1.0, 2.0)
    return node


def _column(table, name: str) -> list:
    array = table.GetTable().GetColumnByName(name)
    assert array is not None, name
    return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]


def test_curves_become_a_plot_chart_over_a_table_and_aucs_a_table(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = _volume(scene, blob((12, 16, 16), (6, 8, 8), 4))
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    run = logic.startEvaluation(
        [node],
        str(threshold_model_file(tmp_path, divisible_by=4)),
        "blob",
        trust=True,
        method="gradcam",
        layers=["features"],
        step=0.1,
        threads=1,
    )
    nodes = logic.finishEvaluation(logic.waitFor(run))
    assert "cases" in {e.get("stage") for e in run.worker.events} and not run.folder.exists()

    chart, table, auc = nodes.chartNode, nodes.curveTableNode, nodes.aucTableNode
    assert chart.IsA("vtkMRMLPlotChartNode") and scene.GetNodeByID(chart.GetID()) is chart
    assert chart.GetNumberOfPlotSeriesNodes() == 6  # 3 explanations x deletion, insertion
    names = [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(6)]
    explanations = ("gradcam @ features", "random", "mask")
    assert set(names) == {f"{e} {k}" for e in explanations for k in ("deletion", "insertion")}
    for i in range(6):
        series = chart.GetNthPlotSeriesNode(i)
        assert series.GetTableNode() is table and series.GetXColumnName() == "fraction"
    assert np.allclose(_column(table, "fraction"), np.linspace(0, 1, 11))
    deletion = _column(table, "gradcam @ features deletion")
    insertion = _column(table, "gradcam @ features insertion")
    assert deletion[0] > 0.9 and deletion[-1] < deletion[0] and insertion[-1] == pytest.approx(deletion[0], abs=1e-6)

    assert auc.IsA("vtkMRMLTableNode") and auc.GetTable().GetNumberOfRows() == 3
    explanations = _column(auc, "explanation")
    assert explanations == ["gradcam @ features", "random", "mask"]
    deletion_auc = dict(zip(explanations, _column(auc, "Deletion AUC")))
    assert all(0 <= v <= 1 for v in deletion_auc.values())
    assert "[" in _column(auc, "Deletion AUC 95% CI")[0]


def test_wrong_number_of_volumes_is_refused(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = _volume(scene, blob((8, 8, 8), (4, 4, 4), 2))
    with pytest.raises(SegGradCAMError, match="takes 1 input volume"):
        SegGradCAMSceneLogic(scene).startEvaluation([node, node], str(threshold_model_file(tmp_path)), "blob")
