"""SegGradCAM on an MRML scene: volume nodes in, segmentation and heatmap nodes out.

Works on any ``vtkMRMLScene`` (3D Slicer's, or one made with the ``slicer-core``
wheel). Slicer conventions: camelCase methods, node attributes for provenance.

A run goes through the worker process (:mod:`.worker`: the command line,
``python -m SegGradCAMLib explain ... --progress json``), never a thread of this process:

1. :meth:`SegGradCAMSceneLogic.startRun` (main thread) checks the input nodes, writes
   them (and a target region) as NRRD with their world geometry to a fresh temporary
   folder and starts the worker: an :class:`ExplainRun`;
2. :meth:`SegGradCAMSceneLogic.pollRun` (from a timer) reads its progress events;
   :meth:`SegGradCAMSceneLogic.cancelRun` kills its process tree;
3. :meth:`SegGradCAMSceneLogic.finishRun` (main thread) reads its outputs into nodes
   with the input's geometry, after checking that the inputs are still in the scene.

The temporary folder is removed in every outcome. :meth:`SegGradCAMSceneLogic.runAndWait`
chains the three (scripts, tests).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import SegGradCAMError
from ..models.spec import ModelSpec
from ..options import EvaluateOptions, ExplainOptions
from ..reports import EvaluationReport, ExplainReport
from ..selection import class_indices
from .worker import WorkerProcess

OUTPUT_ATTRIBUTE = "SegGradCAM.Output"
RUN_KEY_ATTRIBUTE = "SegGradCAM.RunKey"
HEATMAP_COLOR_NODE_NAME = "SegGradCAM Heatmap"

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
    palette = np.array([
        (0.0, 0.0, 0.0), (0.95, 0.8, 0.2), (0.9, 0.3, 0.25), (0.3, 0.7, 0.95),
        (0.4, 0.85, 0.4), (0.8, 0.45, 0.9), (1.0, 0.6, 0.2), (0.5, 0.9, 0.9),
    ])
    return np.array([palette[i % len(palette)] if i else palette[0] for i in range(count)])


def _matrixToArray(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijkToWorld(volumeNode) -> np.ndarray:
    """4x4 IJK -> world RAS of a volume node, its linear parent transforms included."""
    import vtk

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = _matrixToArray(ijkToRas)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise SegGradCAMError(
                f"Volume '{volumeNode.GetName()}' is under a non-linear transform; harden it first "
                "(Data module: right-click the transform, 'Harden transform')."
            )
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        matrix = _matrixToArray(toWorld) @ matrix
    return matrix


def geometryOfVolume(volumeNode) -> tuple[tuple[float, float, float], np.ndarray]:
    """Spacing in array order ``(k, j, i)`` and ITK (LPS) direction of the node in world space."""
    matrix = ijkToWorld(volumeNode)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    directionRas = matrix / spacing
    directionLps = np.diag([-1.0, -1.0, 1.0]) @ directionRas
    return tuple(float(s) for s in spacing[::-1]), directionLps


def sameGrid(a, b, tolerance: float = 1e-4) -> bool:
    """True when two volume nodes share dimensions and IJK-to-world matrix."""
    dimsA = a.GetImageData().GetDimensions() if a.GetImageData() else None
    dimsB = b.GetImageData().GetDimensions() if b.GetImageData() else None
    return dimsA == dimsB and np.allclose(ijkToWorld(a), ijkToWorld(b), atol=tolerance)


def checkedInputVolumes(scene, inputVolumeNodes: Sequence, spec) -> list:
    """The selected volumes (``None`` entries dropped) after checking that they are in ``scene``
    with image data, as many as the model ``spec`` takes (when given), and on one grid."""
    volumes = [node for node in inputVolumeNodes if node is not None]
    if not volumes:
        raise SegGradCAMError("Select an input volume.")
    for node in volumes:
        if node.GetImageData() is None or scene.GetNodeByID(node.GetID()) is not node:
            raise SegGradCAMError(f"Volume '{node.GetName()}' has no image data or is not in the scene.")
    if spec is not None:
        spec.check_input_count(len(volumes))
    for other in volumes[1:]:
        if not sameGrid(volumes[0], other):
            raise SegGradCAMError(
                f"'{other.GetName()}' is not on the same grid as '{volumes[0].GetName()}'; "
                "resample it first (Resample Image (BRAINS) or Crop Volume)."
            )
    return volumes


def writeVolumeArray(array: np.ndarray, volumeNode, path: Path) -> None:
    """Write ``array`` ``(K, J, I)`` as a volume file with ``volumeNode``'s world geometry (its
    IJK-to-RAS and linear parent transforms, in the file's LPS convention)."""
    import SimpleITK as sitk

    matrix = ijkToWorld(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    toLps = np.diag([-1.0, -1.0, 1.0])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (toLps @ (matrix[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(v) for v in toLps @ matrix[:3, 3]])
    sitk.WriteImage(image, str(path))


def readVolumeArray(path: Path) -> np.ndarray:
    """The voxel array ``(K, J, I)`` of a volume file the worker wrote."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def roiMask(roiNode, volumeNode) -> np.ndarray:
    """Boolean ``(K, J, I)`` mask of the volume's voxels whose centres lie inside a markups ROI."""
    import vtk

    worldToObject = np.linalg.inv(_matrixToArray(roiNode.GetObjectToWorldMatrix()))
    ijkToObject = worldToObject @ ijkToWorld(volumeNode)
    half = np.asarray(roiNode.GetSize()) / 2.0
    dims = volumeNode.GetImageData().GetDimensions()  # (I, J, K)
    i, j = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), indexing="xy")  # (J, I)
    mask = np.zeros(dims[::-1], dtype=bool)
    for k in range(dims[2]):
        ijk = np.stack([i.ravel(), j.ravel(), np.full(i.size, k), np.ones(i.size)])
        inside = np.all(np.abs((ijkToObject @ ijk)[:3]) <= half[:, None] + 1e-6, axis=0)
        mask[k] = inside.reshape(dims[1], dims[0])
    return mask


@dataclass
class ExplainRun:
    """One explain run in the worker process: its inputs written to ``folder`` (a fresh
    temporary folder, removed when the run ends in any way), its outputs in ``folder/out``.
    ``progress``: the worker's last progress event."""

    worker: WorkerProcess
    folder: Path
    inputNodeIDs: list[str]
    runKey: str
    started: float = field(default_factory=time.perf_counter)
    progress: dict | None = None

    @property
    def outFolder(self) -> Path:
        return self.folder / "out"

    @property
    def finished(self) -> bool:
        return not self.worker.running


@dataclass
class RunOutputs:
    """Nodes one run added: labelmap, segmentation, heatmaps (``(class, layer) -> node``), folder
    item, and the faithfulness table (one row per heatmap) with its bar chart (None when the run
    did not score them)."""

    labelmapNode: object
    segmentationNode: object
    heatmapNodes: dict[tuple[str, str], object]
    folderItemID: int
    faithfulnessTableNode: object = None
    faithfulnessChartNode: object = None


class SegGradCAMSceneLogic:
    """SegGradCAM's logic on the given MRML scene."""

    def __init__(self, scene, python: str | None = None, launcher: Sequence[str] = ()) -> None:
        """``python``: the worker's interpreter (default: ``PythonSlicer`` in 3D Slicer, else this
        one); ``launcher``: a command put before it (tests)."""
        self.scene = scene
        self.python = python
        self.launcher = list(launcher)

    # -- model ---------------------------------------------------------------

    # -- step 1: inputs to the worker ------------------------------------------

    def startRun(
        self,
        inputVolumeNodes: Sequence,
        model: str,
        classes: str = "all",
        layers="auto",
        method: str = "auto",
        regionSegmentationNode=None,
        regionSegmentId: str = "",
        regionROINode=None,
        device: str = "auto",
        trust: bool = False,
        threads: int = 0,
        faithfulness: bool = False,
    ) -> ExplainRun:
        """Check the inputs, write them as NRRD to a fresh temporary folder and start the
        worker (``python -m SegGradCAMLib explain ...``) on them. ``model``: a registered name
        or a model file/folder. What the model declares (labels, channels) is checked here when
        it can be read without torch; everything else the worker checks and reports.
        ``faithfulness``: score each heatmap (``explain --faithfulness``; its verdict lands in each
        heatmap node's ``SegGradCAM.Faithfulness`` attribute)."""
        volumes = self._checkedInputs(inputVolumeNodes, model, classes)
        region = self.regionMask(volumes[0], regionSegmentationNode, regionSegmentId, regionROINode)

        def arguments(folder: Path, paths: list[str]) -> list[str]:
            regionPath = None
            if region is not None:
                regionPath = folder / "region.nrrd"
                writeVolumeArray(region.astype(np.uint8), volumes[0], regionPath)
            options = ExplainOptions(inputs=tuple(paths), model=model, out=folder / "out", layers=layers,
                                     classes=classes, method=method, region=regionPath, device=device,
                                     trust_model=trust, threads=threads, faithfulness=faithfulness)
            return ["explain", *options.to_argv()]

        return self._startWorker(volumes, model, arguments, f"{method}")

    def startEvaluation(self, inputVolumeNodes: Sequence, model: str, className: str, method: str = "auto",
                        layers="auto", device: str = "auto", trust: bool = False, threads: int = 0,
                        step: float = 0.05, maxSlices: int = 10) -> ExplainRun:
        """Start ``seggradcam evaluate`` in the worker on the inputs: Deletion and Insertion of
        ``className`` for ``method`` against the random and mask baselines (3D models: the
        volume; 2D models: up to ``maxSlices`` slices where the class is predicted)."""
        volumes = self._checkedInputs(inputVolumeNodes, model, className)

        def arguments(folder: Path, paths: list[str]) -> list[str]:
            (folder / "cases.txt").write_text(",".join(paths) + "\n", encoding="utf-8")
            options = EvaluateOptions(model=model, data=str(folder / "cases.txt"), out=folder / "out",
                                      metrics=("deletion", "insertion"), methods=(method,),
                                      baselines=("random", "mask"), layers=layers, classes=className, step=step,
                                      max_slices=maxSlices, device=device, threads=threads, trust_model=trust)
            return ["evaluate", *options.to_argv()]

        return self._startWorker(volumes, model, arguments, f"evaluate {className} {method}")

    def _checkedInputs(self, inputVolumeNodes: Sequence, model: str, classes) -> list:
        """The input volumes, checked against what the model declares (when readable without torch)."""
        from ..models.registry import declared_facts

        facts = declared_facts(model)
        spec = ModelSpec(name=model, labels=list(facts.labels), in_channels=facts.in_channels) if facts else None
        volumes = checkedInputVolumes(self.scene, inputVolumeNodes, spec)
        if facts is not None:
            class_indices(classes, facts.labels)  # an unknown class fails here, with the valid ones
        return volumes

    def _startWorker(self, volumes: list, model: str, arguments: Callable[[Path, list[str]], list[str]],
                     what: str) -> ExplainRun:
        """Write the volumes to a fresh temporary folder and start the worker on the command
        ``arguments(folder, input paths)`` (built by the options' ``to_argv``)."""
        import slicer

        folder = Path(tempfile.mkdtemp(prefix="SegGradCAM-"))
        try:
            paths = []
            for index, node in enumerate(volumes):
                paths.append(str(folder / f"input{index}.nrrd"))
                writeVolumeArray(slicer.util.arrayFromVolume(node), node, Path(paths[-1]))
            worker = WorkerProcess(arguments(folder, paths), folder, python=self.python, launcher=self.launcher)
            worker.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        reference = volumes[0]
        logging.info(f"SegGradCAM: {model} {what} on {reference.GetName()} in a worker process")
        return ExplainRun(worker, folder, [node.GetID() for node in volumes], f"{reference.GetID()}|{model}|{what}")

    def pollRun(self, run: ExplainRun) -> list[dict]:
        """The worker's new events (progress kept in ``run.progress``); call from a timer."""
        events = run.worker.poll()
        for event in events:
            if event["event"] == "progress":
                run.progress = event
        return events

    def cancelRun(self, run: ExplainRun) -> None:
        """Kill the worker (its whole process tree) and remove the run's temporary folder."""
        run.worker.kill()
        shutil.rmtree(run.folder, ignore_errors=True)
        logging.info("SegGradCAM: run cancelled")

    def runAndWait(self, inputVolumeNodes, model: str, poll: float = 0.1, **options) -> RunOutputs:
        """Start a run, wait for the worker and add its outputs (blocking; scripts and tests)."""
        return self.finishRun(self.waitFor(self.startRun(inputVolumeNodes, model, **options), poll))

    def evaluateAndWait(self, inputVolumeNodes, model: str, className: str, poll: float = 0.1, **options):
        """Start an evaluation, wait for the worker and show its curves (blocking; scripts and tests)."""
        return self.finishEvaluation(self.waitFor(self.startEvaluation(inputVolumeNodes, model, className, **options),
                                                  poll))

    def waitFor(self, run: ExplainRun, poll: float = 0.1) -> ExplainRun:
        """Poll ``run`` until its worker ends (cancelled on an interrupt)."""
        try:
            while not run.finished:
                self.pollRun(run)
                time.sleep(poll)
        except BaseException:
            self.cancelRun(run)
            raise
        return run

    def regionMask(self, referenceVolumeNode, segmentationNode=None, segmentId: str = "", roiNode=None):
        """Target region ``(K, J, I)`` on the reference grid from a segment or a markups ROI, or None."""
        if segmentationNode is not None and segmentId:
            return self._segmentMask(referenceVolumeNode, segmentationNode, segmentId)
        if roiNode is not None:
            mask = roiMask(roiNode, referenceVolumeNode)
            if not mask.any():
                raise SegGradCAMError(f"ROI '{roiNode.GetName()}' contains no voxel of the input volume.")
            return mask
        return None

    def _segmentMask(self, referenceVolumeNode, segmentationNode, segmentId: str) -> np.ndarray:
        import slicer
        import vtk

        if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise SegGradCAMError(f"The target segment '{segmentId}' is no longer in '{segmentationNode.GetName()}'; "
                                  "choose another segment, or none.")
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegGradCAM region (temporary)")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentationNode, ids, labelmap, referenceVolumeNode):
                raise SegGradCAMError(f"Could not map segment '{segmentId}' onto the input volume's grid.")
            mask = slicer.util.arrayFromVolume(labelmap) > 0
        finally:
            # the export adds a display node and a colour table: remove them with the labelmap,
            # as slicer.util.arrayFromSegmentBinaryLabelmap does
            display = labelmap.GetDisplayNode()
            colorNode = display.GetColorNode() if display is not None else None
            self._removeWithDisplayAndStorage(labelmap)
            if colorNode is not None and self.scene.IsNodePresent(colorNode):
                self.scene.RemoveNode(colorNode)
        if not mask.any():
            raise SegGradCAMError("The target segment is empty on the input volume's grid.")
        return mask

    # -- step 3: outputs -------------------------------------------------------

    def _checkFinished(self, run: ExplainRun) -> None:
        """Raise the worker's one-line message unless it ended well and its inputs are still in the scene."""
        self.pollRun(run)
        final = run.worker.finalEvent
        if final is None or final["event"] != "done":
            raise SegGradCAMError(run.worker.errorMessage())
        if any(self.scene.GetNodeByID(nodeID) is None for nodeID in run.inputNodeIDs):
            raise SegGradCAMError("The input volume was removed (or the scene closed) during the run; nothing was added.")

    def finishEvaluation(self, run: ExplainRun):
        """The finished evaluation's curves and AUCs as plot, chart and table nodes (main
        thread); the run's temporary folder is removed in every case."""
        from .evaluation_plots import showEvaluation

        try:
            self._checkFinished(run)
            report = EvaluationReport.read(run.outFolder)
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)
        reference = self.scene.GetNodeByID(run.inputNodeIDs[0])
        names = ", ".join(report.explained_classes)
        return showEvaluation(self.scene, report, f"{reference.GetName()} {report.model['name']} {names}")

    def finishRun(self, run: ExplainRun) -> RunOutputs:
        """Read the finished worker's outputs into nodes (main thread), as :meth:`addOutputs`.
        Raises the worker's one-line message if it failed. The run's temporary folder is
        removed in every case."""
        try:
            self._checkFinished(run)
            report = ExplainReport.read(run.outFolder)
            outputs = self.addOutputs(report, run.outFolder, self.scene.GetNodeByID(run.inputNodeIDs[0]), run.runKey)
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)
        logging.info(f"SegGradCAM: {report.model.name} {report.method}: {len(outputs.heatmapNodes)} "
                     f"heatmap(s) in {time.perf_counter() - run.started:.1f} s")
        return outputs

    def addOutputs(self, report: ExplainReport, outFolder: Path, reference, runKey: str) -> RunOutputs:
        """An explain run's outputs (``report`` = its explain.json, files in ``outFolder``) as
        nodes: label map, segmentation and one heatmap per class and layer, with the geometry of
        ``reference``; replaces only ``runKey``'s previous outputs."""
        import slicer

        labels = readVolumeArray(Path(outFolder) / report.segmentation)
        heatmaps = {(entry.name, layer): (readVolumeArray(Path(outFolder) / info.file), info)
                    for entry, layer, info in report.heatmaps()}
        model, method = report.model, report.method
        self.removeRunOutputs(runKey)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        provenance = {
            "SegGradCAM.Model": model.name, "SegGradCAM.ModelSHA256": model.sha256,
            "SegGradCAM.Method": method, "SegGradCAM.Time": stamp, "SegGradCAM.Input": reference.GetID(),
        }
        baseName = f"{reference.GetName()} {model.name}"
        folderItemID = self._runFolder(f"SegGradCAM: {baseName} {method}", runKey)

        colorNode = self._labelColorNode(f"{model.name} labels", model.labels, runKey)
        labelmapNode = self._newOutputNode("vtkMRMLLabelMapVolumeNode", f"{baseName} segmentation", reference,
                                           folderItemID, runKey, provenance)
        slicer.util.updateVolumeFromArray(labelmapNode, labels.astype(np.int16))
        self._addDisplayNode(labelmapNode, "vtkMRMLLabelMapVolumeDisplayNode", colorNode)

        segmentationNode = self._newOutputNode("vtkMRMLSegmentationNode", f"{baseName} segments", reference,
                                               folderItemID, runKey, provenance)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode)
        segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
        display.SetName(f"{segmentationNode.GetName()} display")
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)

        heatmapNodes = {}
        heatColor = self.heatmapColorNode()
        several = len(report.layers) > 1
        for (label, layer), (heat, info) in heatmaps.items():
            name = f"{baseName} heatmap {label}" + (f" {layer}" if several else "")
            score = info.faithfulness
            verdict = {"SegGradCAM.Faithfulness": f"{score['verdict']} ({score['basis']})"} if score else {}
            node = self._newOutputNode("vtkMRMLScalarVolumeNode", name, reference, folderItemID, runKey,
                                       {**provenance, "SegGradCAM.Class": label, "SegGradCAM.Layer": layer,
                                        "SegGradCAM.RawMax": f"{info.max_raw:.6g}", **verdict})
            slicer.util.updateVolumeFromArray(node, heat.astype(np.float32))
            nodeDisplay = self._addDisplayNode(node, "vtkMRMLScalarVolumeDisplayNode", heatColor)
            nodeDisplay.SetAutoWindowLevel(False)
            nodeDisplay.SetWindowLevelMinMax(0.0, 1.0)
            heatmapNodes[(label, layer)] = node
        scores = [(label, layer, info.faithfulness) for (label, layer), (_, info) in heatmaps.items()
                  if info.faithfulness is not None]
        table = self._faithfulnessTable(scores, f"{baseName} faithfulness", reference, folderItemID, runKey,
                                        provenance) if scores else None
        chart = self._faithfulnessChart(table, reference, folderItemID, runKey, provenance) if scores else None
        return RunOutputs(labelmapNode, segmentationNode, heatmapNodes, folderItemID, table, chart)

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
        chart = self._newOutputNode("vtkMRMLPlotChartNode", f"{name} chart", reference, folderItemID, runKey, provenance)
        chart.SetTitle(f"{name}: this volume only")
        chart.SetYAxisTitle("AUC (Deletion: lower is better; Insertion: higher)")
        columns = ("Deletion AUC", "random Deletion AUC (mean)", "mask Deletion AUC", "Insertion AUC",
                   "random Insertion AUC (mean)", "mask Insertion AUC")
        for index, column in enumerate(columns):
            series = self._newOutputNode("vtkMRMLPlotSeriesNode", f"{name} {column}", reference, folderItemID, runKey,
                                         provenance)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetYColumnName(column)
            series.SetLabelColumnName("heatmap")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
            series.SetColor(*SERIES_COLORS[index % 3])  # map, random, mask: one colour each
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    # -- display ---------------------------------------------------------------

    def showHeatmap(self, heatmapNode, backgroundNode=None, opacity: float = 0.5, threshold: float = 0.2,
                    visible: bool = True) -> None:
        """Show ``heatmapNode`` as the foreground of every slice view over ``backgroundNode``.

        Voxels below ``threshold`` (0..1) are transparent.
        """
        if heatmapNode is not None and heatmapNode.GetDisplayNode() is not None:
            display = heatmapNode.GetDisplayNode()
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(float(threshold))
            display.SetUpperThreshold(1e6)
        for composite in self._nodesOfClass("vtkMRMLSliceCompositeNode"):
            if backgroundNode is not None:
                composite.SetBackgroundVolumeID(backgroundNode.GetID())
            composite.SetForegroundVolumeID(heatmapNode.GetID() if heatmapNode is not None and visible else None)
            composite.SetForegroundOpacity(float(opacity) if visible else 0.0)

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
        """The shared Inferno-like heatmap colour table (created once per scene)."""
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
            self._removeWithDisplayAndStorage(node)
        for itemID in self._folderItems(shNode, runKey):
            if shNode.GetNumberOfItemChildren(itemID) == 0:
                shNode.RemoveItem(itemID)

    def _removeWithDisplayAndStorage(self, node) -> None:
        helpers = []
        if node.IsA("vtkMRMLDisplayableNode"):
            helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        self.scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and self.scene.IsNodePresent(helper):
                self.scene.RemoveNode(helper)

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
        return [ids.GetId(i) for i in range(ids.GetNumberOfIds())
                if shNode.GetItemAttribute(ids.GetId(i), RUN_KEY_ATTRIBUTE) == runKey]

    def _runFolder(self, name: str, runKey: str) -> int:
        import slicer

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        existing = self._folderItems(shNode, runKey)
        if existing:
            return existing[0]
        folder = shNode.CreateFolderItem(shNode.GetSceneItemID(), name)
        shNode.SetItemAttribute(folder, RUN_KEY_ATTRIBUTE, runKey)
        return folder

    def _newOutputNode(self, className: str, name: str, reference, folderItemID: int, runKey: str,
                       attributes: dict[str, str]):
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
    "ExplainRun", "RunOutputs", "SegGradCAMSceneLogic", "checkedInputVolumes", "geometryOfVolume",
    "ijkToWorld", "inferno_colors", "label_colors", "readVolumeArray", "roiMask", "sameGrid", "writeVolumeArray",
]
