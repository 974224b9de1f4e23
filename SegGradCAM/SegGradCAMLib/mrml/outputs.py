"""Outputs of a SegGradCAM run on an MRML scene: the worker's label map, segmentation and
heatmaps as nodes with the input's geometry, tagged with their run and provenance; the
faithfulness table and chart; colours, slice-view display, and removal of a run's outputs.

Works on any ``vtkMRMLScene`` (3D Slicer's, or one made with the ``slicer-core`` wheel).
:class:`SceneOutputs` is the outputs' part of :class:`~.runs.SegGradCAMSceneLogic`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..reports import ExplainReport

OUTPUT_ATTRIBUTE = "SegGradCAM.Output"
RUN_KEY_ATTRIBUTE = "SegGradCAM.RunKey"
HEATMAP_COLOR_NODE_NAME = "SegGradCAM Heatmap"

SLICER_INFERNO_ID = "vtkMRMLColorTableNodeFileInferno.txt"  # Slicer's colours logic: Inferno.txt
# Inferno-like colour map: control points (position, r, g, b), linearly interpolated.
INFERNO_POINTS = (
    (0.00, 0.001, 0.000, 0.014),
    (0.13, 0.090, 0.044, 0.232),
    (0.25, 0.258, 0.039, 0.406),
    (0.38, 0.416, 0.093, 0.433),
    (0.50, 0.578, 0.148, 0.404),
    (0.63, 0.735, 0.216, 0.330),
    (0.75, 0.865, 0.317, 0.226),
    (0.88, 0.968, 0.493, 0.058),
    (1.00, 0.988, 0.998, 0.645),
)


def inferno_colors(count: int = 256) -> np.ndarray:
    """``(count, 3)`` RGB in 0..1 sampled from :data:`INFERNO_POINTS`."""
    points = np.asarray(INFERNO_POINTS)
    x = np.linspace(0.0, 1.0, count)
    return np.stack([np.interp(x, points[:, 0], points[:, c]) for c in (1, 2, 3)], axis=1)


def label_colors(count: int) -> np.ndarray:
    """Distinct colours ``(count, 3)`` for label values 1..count-1 (row 0 is background)."""
    palette = np.array(
        [
            (0.0, 0.0, 0.0),
            (0.95, 0.8, 0.2),
            (0.9, 0.3, 0.25),
            (0.3, 0.7, 0.95),
            (0.4, 0.85, 0.4),
            (0.8, 0.45, 0.9),
            (1.0, 0.6, 0.2),
            (0.5, 0.9, 0.9),
        ]
    )
    return np.array([palette[i % len(palette)] if i else palette[0] for i in range(count)])


def readVolumeArray(path: Path) -> np.ndarray:
    """The voxel array ``(K, J, I)`` of a volume file the worker wrote."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def removeWithDisplayAndStorage(scene, node) -> None:
    """Remove ``node`` from ``scene`` with its display and storage nodes."""
    helpers = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


@dataclass
class RunOutputs:
    """Nodes one run added: labelmap, segmentation, heatmaps (``(class, layer) -> node``), folder
    item, the faithfulness table (one row per heatmap) with its bar chart (None when the run did
    not score them), and its findings' nodes (a :class:`~.findings.FindingOutputs`; None without)."""

    labelmapNode: object
    segmentationNode: object
    heatmapNodes: dict[tuple[str, str], object]
    folderItemID: int
    faithfulnessTableNode: object = None
    faithfulnessChartNode: object = None
    findings: Any = None


class SceneOutputs:
    """The outputs, display and bookkeeping of :class:`~.runs.SegGradCAMSceneLogic` on ``scene``."""

    scene: object

    def addOutputs(self, report: ExplainReport, outFolder: Path, reference, runKey: str) -> RunOutputs:
        """An explain run's outputs (``report`` = its explain.json, files in ``outFolder``) as
        nodes: label map, segmentation and one heatmap per class and layer, with the geometry of
        ``reference``; replaces only ``runKey``'s previous outputs."""
        labels = readVolumeArray(Path(outFolder) / report.segmentation)
        heatmaps = {
            (entry.name, layer): (readVolumeArray(Path(outFolder) / info.file), info)
            for entry, layer, info in report.heatmaps()
        }
        model, method = report.model, report.method
        self.removeRunOutputs(runKey)
        provenance = {
            "SegGradCAM.Model": model.name,
            "SegGradCAM.ModelSHA256": model.sha256,
            "SegGradCAM.Method": method,
            "SegGradCAM.Version": __version__,
            "SegGradCAM.Time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "SegGradCAM.Input": reference.GetID(),
        }
        baseName = f"{reference.GetName()} {model.name}"
        folderItemID = self._runFolder(f"SegGradCAM: {baseName} {method}", runKey, reference)

        place = (reference, folderItemID, runKey, provenance)
        colorNode = self._labelColorNode(f"{model.name} labels", model.labels, runKey)
        labelmapNode, segmentationNode = self._addSegmentation(labels, baseName, colorNode, place)
        several = len(report.layers) > 1
        heatmapNodes = {
            (label, layer): self._addHeatmap(
                heat, info, label, layer, f"{baseName} heatmap {label}" + (f" {layer}" if several else ""), place
            )
            for (label, layer), (heat, info) in heatmaps.items()
        }
        scores = [
            (label, layer, info.faithfulness)
            for (label, layer), (_, info) in heatmaps.items()
            if info.faithfulness is not None
        ]
        table = self._faithfulnessTable(scores, f"{baseName} faithfulness", *place) if scores else None
        chart = self._faithfulnessChart(table, *place) if scores else None
        return RunOutputs(labelmapNode, segmentationNode, heatmapNodes, folderItemID, table, chart)

    def _addSegmentation(self, labels: np.ndarray, baseName: str, colorNode, place: tuple):
        """The label map ``(K, J, I)`` as a label map node and a segmentation node (outlines in 2D);
        ``place``: (reference volume, folder item, run key, provenance)."""
        import slicer

        reference = place[0]
        labelmapNode = self._newOutputNode("vtkMRMLLabelMapVolumeNode", f"{baseName} segmentation", *place)
        slicer.util.updateVolumeFromArray(labelmapNode, labels.astype(np.int16))
        self._addDisplayNode(labelmapNode, "vtkMRMLLabelMapVolumeDisplayNode", colorNode)
        segmentationNode = self._newOutputNode("vtkMRMLSegmentationNode", f"{baseName} segments", *place)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode)
        segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
        display.SetName(f"{segmentationNode.GetName()} display")
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)
        return labelmapNode, segmentationNode

    def _addHeatmap(self, heat: np.ndarray, info, label: str, layer: str, name: str, place: tuple):
        """One heatmap ``(K, J, I)`` (its report entry ``info``) as a scalar volume node shown 0..1
        with the heatmap colours; its class, layer, raw maximum and faithfulness verdict as attributes."""
        import slicer

        reference, folderItemID, runKey, provenance = place
        score = info.faithfulness
        verdict = {"SegGradCAM.Faithfulness": f"{score['verdict']} ({score['basis']})"} if score else {}
        attributes = {
            **provenance,
            "SegGradCAM.Class": label,
            "SegGradCAM.Layer": layer,
            "SegGradCAM.RawMax": f"{info.max_raw:.6g}",
            **verdict,
        }
        node = self._newOutputNode("vtkMRMLScalarVolumeNode", name, reference, folderItemID, runKey, attributes)
        slicer.util.updateVolumeFromArray(node, heat.astype(np.float32))
        nodeDisplay = self._addDisplayNode(node, "vtkMRMLScalarVolumeDisplayNode", self.heatmapColorNode())
        nodeDisplay.SetAutoWindowLevel(False)
        nodeDisplay.SetWindowLevelMinMax(0.0, 1.0)
        return node

    def _faithfulnessTable(self, scores: list, name: str, reference, folderItemID: int, runKey: str, provenance: dict):
        """One row per heatmap: its Deletion/Insertion AUCs, the baselines', the verdict and its basis."""
        from .evaluation_plots import addTableColumn

        node = self._newOutputNode("vtkMRMLTableNode", name, reference, folderItemID, runKey, provenance)
        table = node.GetTable()
        addTableColumn(table, "heatmap", [f"{label} {layer}" for label, layer, _ in scores], kind="string")
        addTableColumn(table, "class", [label for label, _, _ in scores], kind="string")
        addTableColumn(table, "layer", [layer for _, layer, _ in scores], kind="string")
        addTableColumn(table, "verdict", [s["verdict"] for _, _, s in scores], kind="string")
        addTableColumn(table, "Deletion AUC", [s["deletion_auc"] for _, _, s in scores])
        addTableColumn(table, "random Deletion AUC (mean)", [s["random"]["deletion_mean"] for _, _, s in scores])
        addTableColumn(table, "random Deletion AUC (SD)", [s["random"]["deletion_sd"] for _, _, s in scores])
        addTableColumn(table, "mask Deletion AUC", [s["mask"]["deletion_auc"] for _, _, s in scores])
        addTableColumn(table, "Insertion AUC", [s["insertion_auc"] for _, _, s in scores])
        addTableColumn(table, "random Insertion AUC (mean)", [s["random"]["insertion_mean"] for _, _, s in scores])
        addTableColumn(table, "mask Insertion AUC", [s["mask"]["insertion_auc"] for _, _, s in scores])
        addTableColumn(table, "basis", [s["basis"] for _, _, s in scores], kind="string")
        node.Modified()
        return node

    def _faithfulnessChart(self, tableNode, reference, folderItemID: int, runKey: str, provenance: dict):
        """Bars per heatmap: Deletion and Insertion AUC of the map beside the random orderings' mean
        and the mask's (Deletion: lower is more faithful; Insertion: higher)."""
        import slicer

        from .evaluation_plots import SERIES_COLORS

        name = tableNode.GetName()
        chart = self._newOutputNode(
            "vtkMRMLPlotChartNode", f"{name} chart", reference, folderItemID, runKey, provenance
        )
        chart.SetTitle(f"{name}: this volume only")
        chart.SetYAxisTitle("AUC (Deletion: lower is better; Insertion: higher)")
        columns = (
            "Deletion AUC",
            "random Deletion AUC (mean)",
            "mask Deletion AUC",
            "Insertion AUC",
            "random Insertion AUC (mean)",
            "mask Insertion AUC",
        )
        for index, column in enumerate(columns):
            series = self._newOutputNode(
                "vtkMRMLPlotSeriesNode", f"{name} {column}", reference, folderItemID, runKey, provenance
            )
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetYColumnName(column)
            series.SetLabelColumnName("heatmap")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
            series.SetColor(*SERIES_COLORS[index % 3])  # map, random, mask: one colour each
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    # -- display ---------------------------------------------------------------

    def showHeatmap(
        self, heatmapNode, backgroundNode=None, opacity: float = 0.5, threshold: float = 0.2, visible: bool = True
    ) -> None:
        """Show ``heatmapNode`` as the foreground of every slice view over ``backgroundNode``.

        Voxels below ``threshold`` (0..1) are transparent.
        """
        if heatmapNode is not None and heatmapNode.GetDisplayNode() is not None:
            display = heatmapNode.GetDisplayNode()
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(float(threshold))
            display.SetUpperThreshold(1e6)
        for composite in self._nodesOfClass("vtkMRMLSliceCompositeNode"):
            if heatmapNode is None or not visible:
                foreground = self.scene.GetNodeByID(composite.GetForegroundVolumeID() or "")
                if foreground is not None and foreground.GetAttribute(OUTPUT_ATTRIBUTE) == "true":
                    composite.SetForegroundVolumeID(None)  # only a SegGradCAM map is hidden
                continue
            if backgroundNode is not None:
                composite.SetBackgroundVolumeID(backgroundNode.GetID())
            composite.SetForegroundVolumeID(heatmapNode.GetID())
            composite.SetForegroundOpacity(float(opacity))

    def showLabels(self, labelmapNode, outline: bool = True, visible: bool = True) -> None:
        """Show a label map in every slice view's label layer, as outlines or filled."""
        for composite in self._nodesOfClass("vtkMRMLSliceCompositeNode"):
            composite.SetLabelVolumeID(labelmapNode.GetID() if labelmapNode is not None and visible else None)
        for sliceNode in self._nodesOfClass("vtkMRMLSliceNode"):
            sliceNode.SetUseLabelOutline(bool(outline))

    def _nodesOfClass(self, className: str) -> list:
        collection = self.scene.GetNodesByClass(className)
        collection.UnRegister(None)  # the caller owns the new collection (as slicer.util.getNodesByClass does)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]

    def heatmapColorNode(self):
        """Slicer's own Inferno colour table (loaded by its colours logic at startup); in a scene
        without Slicer's colour files (``slicer-core`` outside Slicer), an Inferno-like table made
        once per scene."""
        node = self.scene.GetNodeByID(SLICER_INFERNO_ID)
        if node is not None:
            return node
        node = self.scene.GetFirstNodeByName(HEATMAP_COLOR_NODE_NAME)
        if node is not None and node.IsA("vtkMRMLColorTableNode"):
            return node
        node = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEATMAP_COLOR_NODE_NAME)
        node.SetTypeToUser()
        colors = inferno_colors(256)
        node.SetNumberOfColors(len(colors))
        node.GetLookupTable().SetTableRange(0, 1)
        for index, (r, g, b) in enumerate(colors):
            node.SetColor(index, f"{index / 255:.3f}", r, g, b, 1.0)
        node.SetAttribute("Category", "SegGradCAM")
        return node

    # -- bookkeeping -----------------------------------------------------------

    def outputNodesOfRun(self, runKey: str) -> list:
        """Nodes this logic created for ``runKey`` (tagged with :data:`OUTPUT_ATTRIBUTE`)."""
        nodes = []
        collection = self.scene.GetNodes()
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node.GetAttribute(OUTPUT_ATTRIBUTE) == "true" and node.GetAttribute(RUN_KEY_ATTRIBUTE) == runKey:
                nodes.append(node)
        return nodes

    def removeRunOutputs(self, runKey: str) -> None:
        """Remove the previous outputs of the same run key (never untagged, user nodes)."""
        import slicer

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        for node in self.outputNodesOfRun(runKey):
            removeWithDisplayAndStorage(self.scene, node)
        for itemID in self._folderItems(shNode, runKey):
            if shNode.GetNumberOfItemChildren(itemID) == 0:
                shNode.RemoveItem(itemID)

    def _addDisplayNode(self, node, className: str, colorNode):
        display = self.scene.AddNewNodeByClass(className, f"{node.GetName()} display")
        display.SetAndObserveColorNodeID(colorNode.GetID())
        node.SetAndObserveDisplayNodeID(display.GetID())
        return display

    @staticmethod
    def _folderItems(shNode, runKey: str) -> list[int]:
        import vtk

        ids = vtk.vtkIdList()
        shNode.GetItemChildren(shNode.GetSceneItemID(), ids, True)
        return [
            ids.GetId(i)
            for i in range(ids.GetNumberOfIds())
            if shNode.GetItemAttribute(ids.GetId(i), RUN_KEY_ATTRIBUTE) == runKey
        ]

    def _runFolder(self, name: str, runKey: str, reference) -> int:
        """The run key's folder, in the reference's DICOM study if any (where Slicer's DICOM export looks)."""
        import slicer

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        existing = self._folderItems(shNode, runKey)
        if existing:
            return existing[0]
        item = shNode.GetItemByDataNode(reference)
        study = shNode.GetItemAncestorAtLevel(item, "Study") if item else 0
        folder = shNode.CreateFolderItem(study or shNode.GetSceneItemID(), name)
        shNode.SetItemAttribute(folder, RUN_KEY_ATTRIBUTE, runKey)
        return folder

    def _newOutputNode(
        self, className: str, name: str, reference, folderItemID: int, runKey: str, attributes: dict[str, str]
    ):
        """A new tagged node in the run folder, under the reference's parent transform;
        volume nodes also copy the reference's IJK-to-RAS matrix."""
        import slicer
        import vtk

        node = self.scene.AddNewNodeByClass(className, name)
        if node.IsA("vtkMRMLVolumeNode"):
            ijkToRas = vtk.vtkMatrix4x4()
            reference.GetIJKToRASMatrix(ijkToRas)
            node.SetIJKToRASMatrix(ijkToRas)
        if reference.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        node.SetAttribute(OUTPUT_ATTRIBUTE, "true")
        node.SetAttribute(RUN_KEY_ATTRIBUTE, runKey)
        for key, value in attributes.items():
            node.SetAttribute(key, str(value))
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        itemID = shNode.GetItemByDataNode(node)
        if itemID:
            shNode.SetItemParent(itemID, folderItemID)
        else:
            shNode.CreateItem(folderItemID, node)
        return node

    def _labelColorNode(self, name: str, labels: Sequence[str], runKey: str):
        node = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
        node.SetTypeToUser()
        node.SetNumberOfColors(len(labels))
        for index, (label, (r, g, b)) in enumerate(zip(labels, label_colors(len(labels)))):
            node.SetColor(index, label, r, g, b, 0.0 if index == 0 else 1.0)
        node.SetAttribute(OUTPUT_ATTRIBUTE, "true")
        node.SetAttribute(RUN_KEY_ATTRIBUTE, runKey)
        return node


__all__ = [
    "HEATMAP_COLOR_NODE_NAME",
    "OUTPUT_ATTRIBUTE",
    "RUN_KEY_ATTRIBUTE",
    "RunOutputs",
    "SceneOutputs",
    "inferno_colors",
    "label_colors",
    "readVolumeArray",
    "removeWithDisplayAndStorage",
]
