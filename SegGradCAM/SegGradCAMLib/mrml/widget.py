"""The SegGradCAM module panel's behaviour in 3D Slicer: slots, GUI updates, and starting,
polling and cancelling worker runs.

:class:`SegGradCAMPanel` works on the widgets of ``Resources/UI/SegGradCAM.ui`` (``ui``: the
names ``slicer.util.childWidgetVariables`` gives) and the module's logic; the module file
(``SegGradCAM.py``) creates it in its widget's ``setup``, as SlicerNNUnet keeps its widget in
its Lib package. No computation here, and no torch: the module imports this file at load time.
"""

from __future__ import annotations

import json
import logging

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from ..selection import split_list
from .outputs import OUTPUT_ATTRIBUTE

MODEL_FROM_PATH = "From file or folder"
SELECTORS_LOCKED_WHILE_RUNNING = (
    "modelComboBox",
    "modelPathLineEdit",
    "deviceComboBox",
    "inputVolumeSelector",
    "inputVolume2Selector",
    "inputVolume3Selector",
    "inputVolume4Selector",
    "evaluateButton",
)


class SegGradCAMPanel(VTKObservationMixin):
    """Collects parameters, starts runs, shows results. No computation here.

    ``ui``: the panel's widgets by name; ``logic``: the module's logic (``SegGradCAMLogic``), which
    gives the parameter node, model facts and the scene logic.
    """

    def __init__(self, ui, logic) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._runKind = "explain"
        self._displayed = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollRun)

    def setup(self) -> None:
        """Connect the widgets' signals, then show the parameter node and the model's choices."""
        self.ui.heatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", OUTPUT_ATTRIBUTE, "true")
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateModelChoices)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.regionSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionSegmentationChanged)
        self.ui.regionSegmentSelector.connect("currentSegmentChanged(QString)", self.onRegionSegmentChanged)
        self.ui.layersCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.classesCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.initializeParameterNode()
        self.updateModelChoices()
        self.offerKnownModelFolders()

    def offerKnownModelFolders(self) -> None:
        """The nnU-Net folders TotalSegmentator and SlicerNNUnet keep on this computer, offered in
        the model path's list (SlicerNNUnet's last model path is in its QSettings parameter)."""
        from ..models.nnunet import find_nnunet_folders, known_model_roots

        try:
            slicerNNUnetModel = json.loads(qt.QSettings().value("SlicerNNUNet/Parameter") or "{}").get("modelPath")
        except (TypeError, ValueError, AttributeError):
            slicerNNUnetModel = None
        folders = [
            str(folder)
            for root in known_model_roots(slicer_nnunet_model=slicerNNUnetModel)
            for folder in find_nnunet_folders(root)
        ]
        if folders:
            self.ui.modelPathLineEdit.comboBox().addItems(folders)
            logging.info(f"SegGradCAM: {len(folders)} nnU-Net model folder(s) found on this computer")

    def cleanup(self) -> None:
        """Module closed (or reloaded): stop the timer, end the worker, drop observers."""
        self._timer.stop()
        self.cancelRun()
        self.removeObservers()

    # -- parameter node ----------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and firstVolumeNode.GetAttribute(OUTPUT_ATTRIBUTE) != "true":
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to ``inputParameterNode``, once per node."""
        if inputParameterNode is self._parameterNode:
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.showRegionSegment()
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enable Apply when inputs are set (it cancels while a run goes on, when the inputs that
        would change the run are disabled); apply display settings only when they changed."""
        node = self._parameterNode
        if node is None:
            return
        running = self._run is not None
        self.ui.applyButton.enabled = running or bool(node.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        for name in SELECTORS_LOCKED_WHILE_RUNNING:
            getattr(self.ui, name).enabled = not running
        self.ui.modelPathLineEdit.enabled = not running and node.modelName == MODEL_FROM_PATH
        display = (
            node.displayedHeatmap,
            node.heatmapOpacity,
            node.heatmapThreshold,
            node.heatmapColorMap,
            node.showHeatmap,
        )
        if display != self._displayed:
            self._displayed = display
            self.logic.showHeatmap(node)

    # -- model, layers, classes, region ------------------------------------------

    def onModelPathChanged(self, path) -> None:
        """A model file or folder was chosen: offer what its declaration (JSON spec) lists."""
        self.updateModelChoices(self.ui.modelComboBox.currentIndex, path)

    def updateModelChoices(self, index=None, path=None) -> None:
        """Fill layers, classes and the number of input selectors from the chosen model's declaration.

        ``index``: the model combo box's new index. PythonQt runs slots in connection order, so
        this may run before the parameter node holds the new model: the model is read from the
        combo box, and names the new model lacks are dropped from the parameter node.
        """
        node = self._parameterNode
        if node is None:
            return
        modelName = self.ui.modelComboBox.itemText(index) if index is not None and index >= 0 else node.modelName
        info = self.logic.modelInfo(modelName, path or node.modelPath)
        channels = info.get("in_channels", 1)
        for i in range(2, 5):
            visible = i <= channels
            getattr(self.ui, f"inputVolume{i}Selector").visible = visible
            getattr(self.ui, f"inputVolume{i}Label").visible = visible
        node.layers = self._fillCheckable(self.ui.layersCheckableComboBox, info.get("layers", []), node.layers)
        node.classes = self._fillCheckable(self.ui.classesCheckableComboBox, info.get("labels", []), node.classes)
        self.ui.evaluationClassComboBox.clear()
        self.ui.evaluationClassComboBox.addItems([name for name in info.get("labels", []) if name != "background"])

    @staticmethod
    def _fillCheckable(comboBox, names, checkedText) -> str:
        """Offer ``names``, checking those of ``checkedText``; returns the checked ones that remain."""
        checked = set(split_list(checkedText))
        wasBlocked = comboBox.blockSignals(True)
        comboBox.clear()
        for name in names:
            comboBox.addItem(name)
        model = comboBox.model()
        for row, name in enumerate(names):
            comboBox.setCheckState(model.index(row, 0), qt.Qt.Checked if name in checked else qt.Qt.Unchecked)
        comboBox.blockSignals(wasBlocked)
        return ",".join(name for name in names if name in checked)

    def onCheckedNamesChanged(self) -> None:
        if self._parameterNode is None:
            return
        self._parameterNode.layers = ",".join(self._checkedNames(self.ui.layersCheckableComboBox))
        self._parameterNode.classes = ",".join(self._checkedNames(self.ui.classesCheckableComboBox))

    @staticmethod
    def _checkedNames(comboBox) -> list:
        return [comboBox.itemText(index.row()) for index in comboBox.checkedIndexes()]

    def onRegionSegmentationChanged(self, segmentationNode) -> None:
        if self._parameterNode is not None:
            self._parameterNode.regionSegmentation = segmentationNode

    def onRegionSegmentChanged(self, segmentId) -> None:
        if self._parameterNode is not None:
            self._parameterNode.regionSegmentID = segmentId or ""

    def showRegionSegment(self) -> None:
        """The parameter node's segmentation and segment in the segment selector."""
        node = self._parameterNode
        wasBlocked = self.ui.regionSegmentSelector.blockSignals(True)
        self.ui.regionSegmentSelector.setCurrentNode(node.regionSegmentation)
        self.ui.regionSegmentSelector.setCurrentSegmentID(node.regionSegmentID)
        self.ui.regionSegmentSelector.blockSignals(wasBlocked)

    # -- worker runs ---------------------------------------------------------------

    def onApplyButton(self) -> None:
        """Apply starts a run in the worker process; while it runs, the button cancels it."""
        if self._run is not None:
            self.cancelRun()
            return
        self.startWorkerRun("explain", lambda: self.logic.startRun(self._parameterNode))

    def onEvaluateButton(self) -> None:
        """Deletion/Insertion of the chosen class on the current input, in the worker process;
        shown as plot and table when it ends. Apply cancels it meanwhile."""
        if self._run is not None:
            return
        className = self.ui.evaluationClassComboBox.currentText
        self.startWorkerRun("evaluate", lambda: self.logic.startEvaluation(self._parameterNode, className))

    def startWorkerRun(self, kind: str, start) -> None:
        """Start a worker run (``start()`` returns it) and poll it with the timer."""
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM could not start."), waitCursor=True):
            self._run, self._runKind = start(), kind
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker process...")
            self._timer.start()
        self.onParameterNodeModified()

    def onPollRun(self) -> None:
        """Timer on the main thread: the worker's progress while it runs, the outputs when it ends."""
        if self._run is None:
            self._timer.stop()
            return
        self.logic.sceneLogic().pollRun(self._run)
        if self._run.progress is not None:
            self.showProgress(self._run.progress)
        if not self._run.finished:
            return
        self._timer.stop()
        run, self._run = self._run, None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = ""
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM failed."), waitCursor=True):
            self.showFinishedRun(run)
        self.onParameterNodeModified()

    def showProgress(self, event: dict) -> None:
        """A worker progress event in the progress bar and the status line."""
        self.ui.progressBar.maximum = max(event["total"], 1)
        self.ui.progressBar.value = event["done"]
        left = "" if event["eta_s"] is None else _(", {seconds:.0f} s left").format(seconds=event["eta_s"])
        stage = _("starting (loading the model)") if event["stage"] == "startup" else event["stage"]
        self.ui.statusLabel.text = _("{stage} {done}/{total}{left}").format(
            stage=stage, done=event["done"], total=event["total"], left=left
        )

    def showFinishedRun(self, run) -> None:
        """The ended run's outputs in the scene (an evaluation's in a plot and table layout)."""
        if self._runKind == "evaluate":
            self.showEvaluation(self.logic.sceneLogic().finishEvaluation(run))
            self.ui.statusLabel.text = _("Evaluated in {seconds:.1f} s").format(
                seconds=run.worker.finalEvent["seconds"]
            )
            return
        outputs = self.logic.finishRun(run, self._parameterNode)
        self.ui.statusLabel.text = _("{count} heatmap(s) in {seconds:.1f} s").format(
            count=len(outputs.heatmapNodes), seconds=run.worker.finalEvent["seconds"]
        )
        if outputs.faithfulnessChartNode is not None:
            slicer.modules.plots.logic().ShowChartInLayout(outputs.faithfulnessChartNode)

    def showEvaluation(self, nodes) -> None:
        """The curves in a plot view and the AUCs in a table view of one layout."""
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        slicer.modules.plots.logic().ShowChartInLayout(nodes.chartNode)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(nodes.aucTableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def cancelRun(self) -> None:
        """Kill the worker process (tree); the scene is left as it was. A status, not an error."""
        if self._run is not None:
            self._timer.stop()
            run, self._run = self._run, None
            self.logic.sceneLogic().cancelRun(run)
            self.ui.progressBar.visible = False
            self.ui.statusLabel.text = _("Cancelled")
            self.onParameterNodeModified()
