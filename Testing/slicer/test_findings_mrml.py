"""Findings in the scene (``explain --findings`` / ``--point``) on slicer-core's real MRML classes,
each run through the real worker process with the 2D demo model on a held-out demo case read by
the MRML storage node: the findings table (one row per finding of findings.json), the finding
heatmaps, the probability and entropy maps, the slice views' jump to a finding, "Why here?", and
the nodes removed on failure and when a run's outputs are replaced."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import slicer
import vtk
from slicer_harness import scene_with_slice_views

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL as DEMO
from SegGradCAMLib.mrml.findings import CENTROID_COLUMNS, FINDING_ATTRIBUTE, MAP_ATTRIBUTE, findingsTableColumns
from SegGradCAMLib.mrml.outputs import OUTPUT_ATTRIBUTE
from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic
from SegGradCAMLib.mrml.slice_views import SliceViews

PROVENANCE = ("SegGradCAM.Model", "SegGradCAM.ModelSHA256", "SegGradCAM.Method", "SegGradCAM.Version")


def load_case(scene, paths):
    """The case's channels read by the MRML volume storage node (their origin and directions kept)."""
    volumes = []
    for path in paths:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.split("/")[-1].split("_")[0])
        reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        reader.SetFileName(path)
        assert reader.ReadData(node)
        volumes.append(node)
    return volumes


def new_scene(small_case):
    """A scene with Slicer's three slice views, its subject hierarchy, the heatmap colours (shared by
    every run, as Slicer's Inferno) and the demo case; its scene logic and volumes."""
    scene = scene_with_slice_views()
    views = SliceViews(scene, size=(32, 32))
    volumes = load_case(scene, small_case)
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    logic.heatmapColorNode()
    return types.SimpleNamespace(scene=scene, views=views, volumes=volumes, logic=logic)


def finished(case, **options):
    """A run of the demo model on the case through the worker, waited for (not yet read)."""
    return case.logic.waitFor(case.logic.startRun(case.volumes, DEMO, threads=1, **options))


def node_names(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def column(tableNode, name: str) -> list:
    array = tableNode.GetTable().GetColumnByName(name)
    assert array is not None, name
    return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]


@pytest.fixture(scope="module")
def findings_run(small_case):
    """One run with findings; its findings.json (read from the worker's folder before it is removed)."""
    case = new_scene(small_case)
    run = finished(case, findings=True)
    case.expected = json.loads((run.outFolder / "findings.json").read_text(encoding="utf-8"))
    case.outputs = case.logic.finishRun(run)
    case.folder = run.folder
    return case


def test_findings_table_has_a_row_per_finding_with_the_runs_provenance(findings_run):
    case, expected = findings_run, findings_run.expected["findings"]
    table = case.outputs.findings.tableNode
    assert len(expected) >= 2 and table.GetNumberOfRows() == len(expected)
    assert column(table, "id") == [f["id"] for f in expected]
    assert column(table, "class") == [f["class"] for f in expected]
    for name, key in (("volume (mL)", "volume_ml"), ("mean probability", "probability_mean")):
        assert column(table, name) == pytest.approx([f[key] for f in expected], rel=1e-6)
    assert column(table, "mean entropy") == pytest.approx([f["entropy_mean"] for f in expected], rel=1e-5)
    assert findings_run.expected["channels"] == ["t1c", "flair"]  # the input nodes' names
    for channel in ("t1c", "flair"):  # the reliance per channel
        assert column(table, f"{channel} (occlusion)") == pytest.approx(
            [f["reliance"]["occlusion"][channel] for f in expected], rel=1e-5
        )
        assert table.GetColumnDescription(f"{channel} (occlusion)").startswith("Fraction of the finding's score")
    labelmap = case.outputs.labelmapNode
    for name in (*PROVENANCE, "SegGradCAM.Time", "SegGradCAM.Input", OUTPUT_ATTRIBUTE, "SegGradCAM.RunKey"):
        assert table.GetAttribute(name) == labelmap.GetAttribute(name) is not None, name
    assert table.GetAttribute("SegGradCAM.Input") == case.volumes[0].GetID() and table.GetLocked()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(case.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == case.outputs.folderItemID
    assert not case.folder.exists()


def test_jump_target_is_the_findings_centroid_and_shows_its_heatmap(findings_run):
    case, expected = findings_run, findings_run.expected["findings"]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(case.scene)
    reference = vtk.vtkMatrix4x4()
    case.volumes[0].GetIJKToRASMatrix(reference)
    for row, finding in enumerate(expected):
        target = case.logic.findingAt(case.outputs.findings.tableNode, row)
        assert (target.id, target.className) == (finding["id"], finding["class"])
        assert target.centroid == pytest.approx(finding["centroid_ras"], abs=1e-4)
        heatmap = target.heatmapNode
        assert heatmap is case.outputs.findings.heatmapNodes[(finding["id"], "model.1.submodule.2")]
        assert heatmap.GetAttribute(FINDING_ATTRIBUTE) == str(finding["id"])
        assert heatmap.GetAttribute("SegGradCAM.Class") == finding["class"]
        assert float(heatmap.GetAttribute("SegGradCAM.RawMax")) == pytest.approx(
            finding["layers"]["model.1.submodule.2"]["max_raw"], rel=1e-5
        )
        assert sh.GetItemParent(sh.GetItemByDataNode(heatmap)) == case.outputs.folderItemID
        heat = slicer.util.arrayFromVolume(heatmap)
        assert heat.max() == pytest.approx(1.0) and heat.shape == slicer.util.arrayFromVolume(case.volumes[0]).shape
        matrix = vtk.vtkMatrix4x4()
        heatmap.GetIJKToRASMatrix(matrix)
        assert all(matrix.GetElement(r, c) == reference.GetElement(r, c) for r in range(4) for c in range(4))
        case.logic.jumpToFinding(target)
        for logic in case.views.logics.values():  # each slice view now passes through the centroid
            sliceToRas = logic.GetSliceNode().GetSliceToRAS()
            assert [sliceToRas.GetElement(i, 3) for i in range(3)] == pytest.approx(finding["centroid_ras"], abs=1e-4)
    assert case.logic.findingAt(case.outputs.findings.tableNode, len(expected)) is None
    table = case.outputs.findings.tableNode.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())][-3:] == list(CENTROID_COLUMNS)


def test_probability_and_entropy_maps_are_volumes_shown_zero_to_one(findings_run):
    case = findings_run
    maps = case.outputs.findings.mapNodes
    labels = ("background", "edema", "enhancing_rim", "necrotic_core")
    assert set(maps) == {f"probability {name}" for name in labels} | {"entropy"}
    probabilities = np.stack([slicer.util.arrayFromVolume(maps[f"probability {name}"]) for name in labels])
    segmentation = slicer.util.arrayFromVolume(case.outputs.labelmapNode)
    assert np.abs(probabilities.sum(axis=0) - 1).max() < 1e-4  # softmax: each voxel's sum is 1
    assert (probabilities.argmax(axis=0) == segmentation).mean() >= 0.999
    entropy = slicer.util.arrayFromVolume(maps["entropy"])
    assert entropy.min() >= 0 and entropy.max() <= 1 and entropy[segmentation > 0].mean() > 0
    for name, node in maps.items():
        display = node.GetDisplayNode()
        assert not display.GetAutoWindowLevel() and (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
        assert display.GetColorNodeID() == case.logic.heatmapColorNode().GetID()  # no Viridis in slicer-core
        assert node.GetAttribute(MAP_ATTRIBUTE) == name.split(" ")[0]
        assert all(node.GetAttribute(key) == case.outputs.labelmapNode.GetAttribute(key) for key in PROVENANCE)
    assert maps["probability edema"].GetAttribute("SegGradCAM.Class") == "edema"


def test_why_here_explains_the_finding_at_the_point_in_its_own_folder(findings_run):
    case = findings_run
    core = next(f for f in case.expected["findings"] if f["class"] == "necrotic_core")
    point = case.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "asked")
    point.AddControlPointWorld(vtk.vtkVector3d(*core["centroid_ras"]))
    outputs = case.logic.finishRun(finished(case, point=case.logic.pointOf(point)))
    why = outputs.findings
    assert why.point["finding"] == core["id"] and why.point["distance_mm"] <= 1.0
    assert why.tableNode.GetNumberOfRows() == 1 and why.tableNode.GetName().endswith("why here findings")
    target = case.logic.findingAt(why.tableNode, 0)
    assert target.id == core["id"] and target.centroid == pytest.approx(core["centroid_ras"], abs=1e-4)
    assert target.heatmapNode is why.heatmapNodes[(core["id"], "model.1.submodule.2")]
    assert outputs.folderItemID != case.outputs.folderItemID  # the findings run's nodes are kept
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(case.scene)
    assert sh.GetItemName(outputs.folderItemID).endswith(" why here")
    assert not sh.GetItemName(case.outputs.folderItemID).endswith(" why here")
    assert case.scene.IsNodePresent(case.outputs.findings.tableNode) and case.scene.IsNodePresent(point)


def test_a_point_far_from_every_finding_says_so_and_adds_nothing(small_case):
    case = new_scene(small_case)
    before = node_names(case.scene)
    far = np.asarray(case.volumes[0].GetOrigin()) - 200.0
    run = finished(case, point=tuple(far))
    with pytest.raises(SegGradCAMError, match="no finding within 10 mm") as error:
        case.logic.finishRun(run)
    assert "\n" not in str(error.value)
    assert node_names(case.scene) == before and not run.folder.exists()


def test_a_run_without_findings_removes_the_findings_nodes_but_no_users_node(small_case):
    case = new_scene(small_case)
    first = case.logic.finishRun(finished(case, findings=True))
    user = case.scene.AddNewNodeByClass("vtkMRMLTableNode", first.findings.tableNode.GetName())
    findingsNodes = [first.findings.tableNode, *first.findings.heatmapNodes.values(), *first.findings.mapNodes.values()]
    second = case.logic.finishRun(finished(case))
    assert second.findings is None
    assert not any(case.scene.IsNodePresent(node) for node in findingsNodes)
    assert case.scene.IsNodePresent(user) and case.scene.IsNodePresent(second.labelmapNode)
    runKey = second.labelmapNode.GetAttribute("SegGradCAM.RunKey")
    kept = case.logic.outputNodesOfRun(runKey)
    assert not [node for node in kept if node.GetAttribute(FINDING_ATTRIBUTE) or node.GetAttribute(MAP_ATTRIBUTE)]


def test_a_failure_while_adding_findings_removes_the_whole_run_and_cancel_adds_nothing(small_case):
    case = new_scene(small_case)
    before = node_names(case.scene)
    cancelled = case.logic.startRun(case.volumes, DEMO, findings=True, threads=1)
    case.logic.cancelRun(cancelled)
    assert node_names(case.scene) == before and not cancelled.folder.exists()
    run = finished(case, findings=True)
    (run.outFolder / "heatmap_edema_f1.nrrd").write_bytes(b"NRRD0004\nnot a volume\n")
    with pytest.raises(Exception, match="heatmap_edema_f1"):
        case.logic.finishRun(run)
    assert node_names(case.scene) == before and not run.folder.exists()


def test_table_columns_follow_what_the_findings_hold():
    """A one-channel nnU-Net run with several folds and no probabilities: a fold-disagreement column,
    NaN where findings.json has null, no reliance columns."""
    findings = [
        {"id": 1, "class": "brain", "volume_ml": 1.5, "centroid_ras": [1.0, 2.0, 3.0], "probability_mean": None},
        {"id": 2, "class": "brain", "volume_ml": 0.5, "centroid_ras": [4.0, 5.0, 6.0], "probability_mean": None},
    ]
    findings[0]["fold_disagreement_mean"] = 0.25
    columns = {name: values for name, _, values in findingsTableColumns(findings)}
    assert columns["fold disagreement"][0] == 0.25 and math.isnan(columns["fold disagreement"][1])
    assert all(math.isnan(v) for v in columns["mean probability"]) and "mean entropy" not in columns
    assert [columns[name] for name in CENTROID_COLUMNS] == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert not [name for name in columns if "(occlusion)" in name or "(input gradient)" in name]
