"""Findings of a SegGradCAM run on an MRML scene (``explain --findings`` or ``--point``): the
findings table, one heatmap node per finding, the probability, entropy and fold-disagreement maps,
the slice views' jump to a finding, and the markups point of "Why here?".

Works on any ``vtkMRMLScene`` (3D Slicer's, or one made with the ``slicer-core`` wheel).
:class:`SceneFindings` is the findings' part of :class:`~.runs.SegGradCAMSceneLogic`; its nodes are
placed like the run's other outputs (:class:`~.outputs.SceneOutputs`): in the run's folder, tagged
with the run key (so they are replaced and removed with the run) and the run's provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..reports import ExplainReport, HeatmapEntry
from .outputs import RUN_KEY_ATTRIBUTE, RunOutputs, readVolumeArray

FINDING_ATTRIBUTE = "SegGradCAM.Finding"  # the finding's id, on its heatmap nodes
FINDINGS_TABLE_ATTRIBUTE = "SegGradCAM.FindingsTable"  # "true" on findings tables
MAP_ATTRIBUTE = "SegGradCAM.Map"  # what a probability, entropy or fold-disagreement node shows
CENTROID_COLUMNS = ("centroid R (mm)", "centroid A (mm)", "centroid S (mm)")
SLICER_VIRIDIS_ID = "vtkMRMLColorTableNodeFileViridis.txt"  # Slicer's colours logic: Viridis.txt
# The findings table's numeric columns: (column, finding key, description shown as the column's tooltip).
FINDING_COLUMNS = (
    ("volume (mL)", "volume_ml", "Volume of the finding (connected component of its class)."),
    ("mean probability", "probability_mean", "Mean softmax (or sigmoid) probability of its class over the finding."),
    ("min probability", "probability_min", "Lowest probability of its class over the finding."),
    ("mean entropy", "entropy_mean", "Mean predictive entropy over the finding, 0 (sure) to 1 (uniform)."),
    ("fold disagreement", "fold_disagreement_mean", "Mean fraction of folds whose label differs from the ensemble's."),
)
RELIANCE_MEASURES = {
    "occlusion": "Fraction of the finding's score lost when this channel alone is replaced by its mean.",
    "input_gradient": "Share of |input x gradient| of the finding's score inside its 7 mm neighbourhood.",
}


@dataclass
class FindingOutputs:
    """Nodes :meth:`SceneFindings.addFindings` added: the findings table (None for a run with maps of
    how sure it was but no findings), the findings' heatmaps
    (``(finding id, layer) -> node``), the probability, entropy and fold-disagreement maps (``name
    -> node``), and the point's choice of a "Why here?" run (findings.json's ``point``, else None)."""

    tableNode: object
    heatmapNodes: dict[tuple[int, str], object] = field(default_factory=dict)
    mapNodes: dict[str, object] = field(default_factory=dict)
    point: dict | None = None


@dataclass(frozen=True)
class FindingTarget:
    """What a findings table row points at: the finding's id and class, its centroid (RAS, mm: the
    slice views' jump target) and its heatmap node (its first layer)."""

    id: int
    className: str
    centroid: tuple[float, float, float]
    heatmapNode: object


def _number(value) -> float:
    """A table cell: the value, NaN for a value findings.json leaves out (null)."""
    return math.nan if value is None else float(value)


def readMap(path: Path):
    """A probability, entropy or disagreement map the worker wrote: its voxels ``(K, J, I)``, its
    kind and its class ("" for none), from the file's ``SegGradCAM.Map`` and ``SegGradCAM.Class``."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    kind, className = (
        image.GetMetaData(key) if image.HasMetaDataKey(key) else "" for key in (MAP_ATTRIBUTE, "SegGradCAM.Class")
    )
    return sitk.GetArrayFromImage(image), kind or Path(path).name.split(".")[0], className


def findingsTableColumns(findings: list[dict]) -> list[tuple[str, str, list]]:
    """The findings table's columns ``(name, kind, values)``: id, class, the numbers of
    :data:`FINDING_COLUMNS` present in the findings, each channel's reliance, the centroid."""
    columns: list[tuple[str, str, list]] = [
        ("id", "float", [f["id"] for f in findings]),
        ("class", "string", [f["class"] for f in findings]),
    ]
    for name, key, _ in FINDING_COLUMNS:
        if any(key in f for f in findings):
            columns.append((name, "float", [_number(f.get(key)) for f in findings]))
    reliance = [f.get("reliance") or {} for f in findings]
    for measure in RELIANCE_MEASURES:
        channels = list(dict.fromkeys(channel for r in reliance for channel in r.get(measure, {})))
        for channel in channels:
            values = [_number(r.get(measure, {}).get(channel)) for r in reliance]
            columns.append((f"{channel} ({measure.replace('_', ' ')})", "float", values))
    for axis, name in enumerate(CENTROID_COLUMNS):
        columns.append((name, "float", [f["centroid_ras"][axis] for f in findings]))
    return columns


class SceneFindings:
    """The findings' nodes of :class:`~.runs.SegGradCAMSceneLogic` on ``scene``: added after a
    run's other outputs (:meth:`addFindings`), looked up from a table row (:meth:`findingAt`) and
    shown (:meth:`jumpToFinding`); the "Why here?" point (:meth:`pointOf`, :meth:`startPlacingPoint`)."""

    scene: object

    def addFindings(self, report: ExplainReport, outFolder: Path, outputs: RunOutputs, reference) -> FindingOutputs:
        """A run's findings (``report.findings``: its findings.json) and the maps of how sure it was
        (``report.uncertainty``), files in ``outFolder``, as nodes beside its ``outputs`` (their
        folder, run key and provenance, as its label map carries them) with the geometry of
        ``reference``: the findings table, each finding's heatmaps (its class and layer, and its id
        in :data:`FINDING_ATTRIBUTE`) and the probability, entropy and fold-disagreement maps."""
        labelmap = outputs.labelmapNode
        attributes = {name: labelmap.GetAttribute(name) for name in labelmap.GetAttributeNames()}
        runKey = attributes.pop(RUN_KEY_ATTRIBUTE)
        place = (reference, outputs.folderItemID, runKey, attributes)
        findings = report.findings or {"findings": [], "point": None}
        baseName = labelmap.GetName().removesuffix(" segmentation")
        if findings["point"] is not None:
            baseName += " why here"
            self._nameWhyHereFolder(outputs.folderItemID)
        result = FindingOutputs(None, point=findings["point"])
        if report.findings is not None:
            result.tableNode = self._findingsTable(findings["findings"], f"{baseName} findings", place)
        for finding in findings["findings"]:
            several = len(finding["layers"]) > 1
            for layer, info in finding["layers"].items():
                name = f"{baseName} heatmap {finding['class']} f{finding['id']}" + (f" {layer}" if several else "")
                heat = readVolumeArray(Path(outFolder) / info["file"])
                node = self._addHeatmap(heat, HeatmapEntry(**info), finding["class"], layer, name, place)
                node.SetAttribute(FINDING_ATTRIBUTE, str(finding["id"]))
                result.heatmapNodes[(finding["id"], layer)] = node
        for file in report.uncertainty or []:
            values, kind, className = readMap(Path(outFolder) / file)
            mapName = " ".join(part for part in (kind.replace("_", " "), className) if part)
            tags = {MAP_ATTRIBUTE: kind, **({"SegGradCAM.Class": className} if className else {})}
            result.mapNodes[mapName] = self._addMap(values, tags, f"{baseName} {mapName}", place)
        return result

    def _nameWhyHereFolder(self, folderItemID: int) -> None:
        """A "Why here?" run's folder named as such (its run key is its own)."""
        import slicer

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        name = shNode.GetItemName(folderItemID)
        if not name.endswith(" why here"):
            shNode.SetItemName(folderItemID, f"{name} why here")

    def _findingsTable(self, findings: list[dict], name: str, place: tuple):
        """One row per finding (:func:`findingsTableColumns`), read-only, with column tooltips."""
        from .evaluation_plots import addTableColumn

        node = self._newOutputNode("vtkMRMLTableNode", name, *place)
        node.SetAttribute(FINDINGS_TABLE_ATTRIBUTE, "true")
        for column, kind, values in findingsTableColumns(findings):
            addTableColumn(node.GetTable(), column, values, kind=kind)
        descriptions = {column: text for column, _, text in FINDING_COLUMNS}
        for column, _, _ in findingsTableColumns(findings):
            measure = next((m for m in RELIANCE_MEASURES if column.endswith(f"({m.replace('_', ' ')})")), None)
            text = descriptions.get(column) or (RELIANCE_MEASURES[measure] if measure else "")
            if text:
                node.SetColumnDescription(column, text)
        node.SetLocked(True)
        node.Modified()
        return node

    def _addMap(self, values, tags: dict[str, str], name: str, place: tuple):
        """A probability, entropy or fold-disagreement map ``(K, J, I)`` in 0..1 as a scalar volume
        node (with the attributes ``tags`` besides the run's) shown 0..1 with Slicer's Viridis
        colours (the heatmap colours where Slicer's colour files are absent)."""
        import numpy as np
        import slicer

        reference, folderItemID, runKey, provenance = place
        attributes = {**provenance, **tags}
        node = self._newOutputNode("vtkMRMLScalarVolumeNode", name, reference, folderItemID, runKey, attributes)
        slicer.util.updateVolumeFromArray(node, values.astype(np.float32))
        colorNode = self.scene.GetNodeByID(SLICER_VIRIDIS_ID) or self.heatmapColorNode()
        display = self._addDisplayNode(node, "vtkMRMLScalarVolumeDisplayNode", colorNode)
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        return node

    # -- a finding of the table, shown ----------------------------------------------

    def findingAt(self, tableNode, row: int) -> FindingTarget | None:
        """The finding in ``row`` of a findings table (None for no row): its id, class, centroid
        (the table's centroid columns) and its first heatmap node of the same run."""
        if tableNode is None or not 0 <= row < tableNode.GetNumberOfRows():
            return None
        table = tableNode.GetTable()
        findingId = int(table.GetValueByName(row, "id").ToDouble())
        centroid = tuple(table.GetValueByName(row, column).ToDouble() for column in CENTROID_COLUMNS)
        runKey = tableNode.GetAttribute(RUN_KEY_ATTRIBUTE)
        heatmaps = [
            node for node in self.outputNodesOfRun(runKey) if node.GetAttribute(FINDING_ATTRIBUTE) == str(findingId)
        ]
        className = table.GetValueByName(row, "class").ToString()
        return FindingTarget(findingId, className, centroid, heatmaps[0] if heatmaps else None)

    def jumpToFinding(self, target: FindingTarget) -> None:
        """Centre every slice view on the finding's centroid: what the markups logic's
        ``JumpSlicesToLocation(r, a, s, centered=True)`` does, on this logic's scene."""
        import slicer

        r, a, s = target.centroid
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    # -- the "Why here?" point --------------------------------------------------------

    @staticmethod
    def pointOf(markupsNode) -> tuple[float, float, float] | None:
        """The last placed control point of a markups point list, in world RAS (mm); None when it
        has none."""
        if markupsNode is None:
            return None
        for index in reversed(range(markupsNode.GetNumberOfControlPoints())):
            if markupsNode.GetNthControlPointPositionStatus(index) == markupsNode.PositionDefined:
                position = [0.0, 0.0, 0.0]
                markupsNode.GetNthControlPointPositionWorld(index, position)
                return (position[0], position[1], position[2])
        return None

    def startPlacingPoint(self, markupsNode, selectionNode, interactionNode) -> None:
        """Let the user click one more point of ``markupsNode`` in a view: it becomes the active place
        node and the interaction mode Place (one point, not persistent), as the markups logic's
        ``SetActiveList`` and ``StartPlaceMode(False)`` do. Its earlier points are kept."""
        selectionNode.SetReferenceActivePlaceNodeClassName(markupsNode.GetClassName())
        selectionNode.SetActivePlaceNodeID(markupsNode.GetID())
        interactionNode.SetPlaceModePersistence(0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)
