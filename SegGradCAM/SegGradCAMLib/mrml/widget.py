"""The SegGradCAM module panel's behaviour in 3D Slicer: slots, GUI updates, and starting,
polling and cancelling worker runs.

:class:`SegGradCAMPanel` works on the widgets of ``Resources/UI/SegGradCAM.ui`` (``ui``: the
names ``slicer.util.childWidgetVariables`` gives) and the module's logic; the module file
(``SegGradCAM.py``) creates it in its widget's ``setup``, as SlicerNNUnet keeps its widget in
its Lib package. No computation here, and no torch: the module imports this file at load time.
"""

from __future__ import annotations

import logging
import pathlib

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from ..errors import SegGradCAMError
from ..selection import split_list
from .findings_panel import FindingsPanel
from .outputs import OUTPUT_ATTRIBUTE

MODEL_FROM_PATH = "From file or folder"
SELECTORS_LOCKED_WHILE_RUNNING = (
    "modelComboBox",
    "deviceComboBox",
    "inputVolumeSelector",
    "inputVolume2Selector",
    "inputVolume3Selector",
    "inputVolume4Selector",
    "evaluateButton",
    "whyHereButton",
)


def _mrmlNode(parameterNode):
    """The vtkMRMLScriptedModuleNode under a parameter node wrapper (None for None)."""
    return getattr(parameterNode, "parameterNode", None)


class SegGradCAMPanel(FindingsPanel, VTKObservationMixin):
    """Collects parameters, starts runs, shows results. No computation here.

    ``ui``: the panel's widgets by name; ``logic``: the module's logic (``SegGradCAMLogic``), which
    gives the parameter node, model facts and the scene logic. The Findings section's slots are
    :class:`~.findings_panel.FindingsPanel`'s.
    """

    def __init__(self, ui, logic) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._runKind = "explain"
        self._installing = False
        self._displayed = None
        self._shownChoices = None
        self._modelFoldersOffered = False
        self._failureLog = ""
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollRun)

    def setup(self) -> None:
        """Connect the widgets' signals, then show the parameter node and the model's choices.

        Nothing listens to the model's combo box or path: the parameter node's GUI connection
        writes them into the node, and :meth:`onParameterNodeModified` follows the node.
        """
        self.ui.heatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", OUTPUT_ATTRIBUTE, "true")
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelFolderButton.connect("clicked(bool)", self.onModelFolderButton)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLogButton)
        self.ui.regionSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionSegmentationChanged)
        self.ui.regionSegmentSelector.connect("currentSegmentChanged(QString)", self.onRegionSegmentChanged)
        self.ui.layersCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.classesCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.showLogButton.visible = False
        self.setupFindings()
        self.initializeParameterNode()

    def offerKnownModelFolders(self) -> None:
        """The nnU-Net folders TotalSegmentator and SlicerNNUnet keep on this computer, offered in
        the model path's list; looked for once, when "From file or folder" is first chosen."""
        self._modelFoldersOffered = True
        folders = self.logic.knownModelFolders()
        if folders:
            self.ui.modelPathLineEdit.comboBox().addItems(folders)
            logging.info(f"SegGradCAM: {len(folders)} nnU-Net model folder(s) found on this computer")

    def onModelFolderButton(self) -> None:
        """Choose a model folder (nnU-Net, MONAI bundle): the path's browse button picks files."""
        node = self._parameterNode
        start = str(node.modelPath) if node is not None and str(node.modelPath) not in ("", ".") else ""
        folder = qt.QFileDialog.getExistingDirectory(None, _("Model folder (nnU-Net or MONAI bundle)"), start)
        if folder and node is not None:
            node.modelPath = pathlib.Path(folder)

    def cleanup(self) -> None:
        """Module closed (or reloaded): stop the timer, end the worker, drop observers."""
        self._timer.stop()
        self.cancelRun()
        self.setParameterNode(None)
        self.removeObservers()

    # -- parameter node ----------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", slicer.mrmlScene)
            inputs = [node for node in volumes if node.GetAttribute(OUTPUT_ATTRIBUTE) != "true"]
            if inputs:
                self._parameterNode.inputVolume = inputs[0]

    def refreshFromParameterNode(self) -> None:
        """Show the parameter node again, every widget (after a scene import filled it)."""
        if self._parameterNode is not None:
            self._shownChoices = None
            self._parameterNode.Modified()  # the GUI connection writes every widget from the node

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to ``inputParameterNode``, once per MRML node: the logic wraps the same
        node in a new wrapper object at each call, so wrappers are compared by their node."""
        if _mrmlNode(inputParameterNode) is _mrmlNode(self._parameterNode):
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._shownChoices = None
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
        if self._choicesOf(node) != self._shownChoices:
            self.updateModelChoices()
        self.showRegionSegment()
        self.showFindingsTable()
        running, busy = self._run is not None, self._run is not None or self._installing
        self.ui.applyButton.enabled = not self._installing and (running or bool(node.inputVolume))
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        for name in SELECTORS_LOCKED_WHILE_RUNNING:
            getattr(self.ui, name).enabled = not busy
        for name in ("modelPathLineEdit", "modelFolderButton"):
            getattr(self.ui, name).enabled = not busy and node.modelName == MODEL_FROM_PATH
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

    @staticmethod
    def _choicesOf(node) -> tuple:
        return (node.modelName, str(node.modelPath), node.layers, node.classes)

    def updateModelChoices(self) -> None:
        """Layers, classes, evaluation classes and the number of input selectors from the parameter
        node's model; names the model lacks are dropped from the node (kept while the model's
        declaration cannot be read, e.g. a saved scene's model file missing on this computer)."""
        node = self._parameterNode
        if node.modelName == MODEL_FROM_PATH and not self._modelFoldersOffered:
            self.offerKnownModelFolders()
        info = self.logic.modelInfo(node.modelName, node.modelPath)
        channels = info.get("in_channels", 1)
        for i in range(2, 5):
            visible = i <= channels
            getattr(self.ui, f"inputVolume{i}Selector").visible = visible
            getattr(self.ui, f"inputVolume{i}Label").visible = visible
        layers = self._fillCheckable(self.ui.layersCheckableComboBox, info.get("layers", []), node.layers)
        classes = self._fillCheckable(self.ui.classesCheckableComboBox, info.get("labels", []), node.classes)
        self.ui.evaluationClassComboBox.clear()
        self.ui.evaluationClassComboBox.addItems([name for name in info.get("labels", []) if name != "background"])
        if not info:
            layers, classes = node.layers, node.classes
        with slicer.util.NodeModify(node):  # its one ModifiedEvent comes after the choices are marked shown
            node.layers, node.classes = layers, classes
            self._shownChoices = self._choicesOf(node)

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
        """The user checked a name: into the node, without refilling the lists being edited."""
        node = self._parameterNode
        if node is None:
            return
        layers = ",".join(self._checkedNames(self.ui.layersCheckableComboBox))
        classes = ",".join(self._checkedNames(self.ui.classesCheckableComboBox))
        with slicer.util.NodeModify(node):  # its one ModifiedEvent comes after the choices are marked shown
            node.layers, node.classes = layers, classes
            self._shownChoices = self._choicesOf(node)

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
        """Install what is missing (saying what), then start a worker run (``start()`` returns
        it) and poll it with the timer. Ignored while an installation goes on."""
        if self._installing:
            return
        self.showFailure(None)
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM could not start."), waitCursor=True):
            self.installRequirements()
            self._run, self._runKind = start(), kind
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker process...")
            self._timer.start()
        self.onParameterNodeModified()

    def installRequirements(self) -> None:
        """Install the model's missing packages (after asking) with Apply and the inputs disabled
        and the status saying what is installed; a second click meanwhile does nothing."""
        description = self.logic.describeInstall(self._parameterNode)
        if description is None:
            return
        self._installing = True
        self.onParameterNodeModified()

        def confirmed():  # the user accepted: say what is being installed
            self.ui.statusLabel.text = description
            slicer.app.processEvents()

        try:
            self.logic.installRequirements(self._parameterNode, confirmed=confirmed)
        finally:
            self._installing = False
            self.ui.statusLabel.text = ""
            self.onParameterNodeModified()

    def onPollRun(self) -> None:
        """Timer on the main thread: the worker's progress while it runs, the outputs when it
        ends. The panel is back to Apply afterwards, whatever happened."""
        run = self._run
        if run is None:
            self._timer.stop()
            return
        try:
            self.logic.sceneLogic().pollRun(run)
            if run.progress is not None:
                self.showProgress(run.progress)
            finished = run.finished
        except Exception as error:  # the run's folder or event file became unreadable: it is over
            logging.exception("SegGradCAM: polling the worker failed")
            self.logic.sceneLogic().cancelRun(self.endRun())
            self.showFailure(str(error))
            self.onParameterNodeModified()
            return
        if not finished:
            return
        self.endRun()
        try:
            with slicer.util.tryWithErrorDisplay(_("SegGradCAM failed."), waitCursor=True):
                try:
                    self.showFinishedRun(run)
                except SegGradCAMError as error:
                    self.showFailure(str(error), run.log)
        finally:
            self.onParameterNodeModified()

    def endRun(self):
        """The run ended (or failed): timer stopped, progress hidden; returns the run."""
        self._timer.stop()
        run, self._run = self._run, None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = ""
        return run

    def showFailure(self, message, log: str = "") -> None:
        """A failed run's one-line message in the status and a dialog, its worker log behind
        "Show details" (and in the dialog's details); ``message`` None clears it."""
        self._failureLog = log or ""
        self.ui.showLogButton.visible = bool(message) and bool(log)
        if message is None:
            return
        self.ui.statusLabel.text = _("Failed: {message}").format(message=message)
        slicer.util.errorDisplay(
            _("SegGradCAM failed: {message}").format(message=message), windowTitle="SegGradCAM", detailedText=log
        )

    def onShowLogButton(self) -> None:
        """The last lines of the failed run's worker log, in a dialog."""
        slicer.util.errorDisplay(self.ui.statusLabel.text, windowTitle="SegGradCAM", detailedText=self._failureLog)

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
        self.ui.statusLabel.text = _("{count} heatmap(s){findings} in {seconds:.1f} s").format(
            count=len(outputs.heatmapNodes),
            findings=self.findingsStatus(outputs),
            seconds=run.worker.finalEvent["seconds"],
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
            self.logic.sceneLogic().cancelRun(self.endRun())
            self.ui.statusLabel.text = _("Cancelled")
            self.onParameterNodeModified()
