"""The SegGradCAM module's logic in 3D Slicer: :class:`SegGradCAMLogic`, the adapter from the
module's parameter node to the scene logic (:class:`~.runs.SegGradCAMSceneLogic`), which runs the
command line in a worker process.

The module file (``SegGradCAM.py``) imports it and exposes it as ``SegGradCAMLogic``, as
SlicerNNUnet keeps its logic classes in its Lib package. No torch here: the module imports this
file at load time; the scene logic, the install logic and the model loaders are imported when used.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from ..errors import SegGradCAMError
from ..models.registry import REGISTRY
from .widget import MODEL_FROM_PATH

MINIMUM_SLICER = (5, 10)
SLICER_NNUNET_SETTINGS_KEY = "SlicerNNUNet/Parameter"


class SegGradCAMModuleLogic(ScriptedLoadableModuleLogic):
    """Adapter from the module's parameter node to SegGradCAMLib's scene logic, which runs the
    command line in a worker process (``PythonSlicer -m SegGradCAMLib explain ...``).

    The module file subclasses it as ``SegGradCAMLogic`` (Slicer's name ``<ModuleName>Logic``,
    after which ``ScriptedLoadableModuleLogic`` names the module's parameter node) and wraps that
    node in its ``parameterNodeWrapper`` class. ``installLogic`` (what installs missing packages)
    and ``python`` (the worker's interpreter) are injected by tests.
    """

    def __init__(self, installLogic=None, python=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._sceneLogic = None
        self._installLogic = installLogic
        self._python = python

    def sceneLogic(self, scene=None):
        from .runs import SegGradCAMSceneLogic

        scene = scene or slicer.mrmlScene
        if self._sceneLogic is None or self._sceneLogic.scene is not scene:
            self._sceneLogic = SegGradCAMSceneLogic(scene, python=self._python)
        return self._sceneLogic

    def installLogic(self):
        if self._installLogic is None:
            from .install import InstallLogic

            self._installLogic = InstallLogic()
        return self._installLogic

    @staticmethod
    def modelNames() -> list:
        return list(REGISTRY)

    @staticmethod
    def modelInfo(name: str, path=None) -> dict:
        """Labels, channels and layers a model declares (a registered name, or for
        MODEL_FROM_PATH the JSON spec at ``path``), without loading torch."""
        from ..models.registry import declared_facts

        if name == MODEL_FROM_PATH and str(path or "") in ("", "."):
            return {}
        source = str(path) if name == MODEL_FROM_PATH else name
        try:
            facts = declared_facts(source)
        except Exception as error:  # a model the panel cannot read offers no choices; Apply says why
            logging.warning(f"SegGradCAM: {source}: {error}")
            return {}
        if facts is None:
            return {}
        return {"labels": list(facts.labels), "in_channels": facts.in_channels, "layers": list(facts.layers)}

    @staticmethod
    def slicerNNUnetModelPath() -> str | None:
        """SlicerNNUnet's last model path from its QSettings parameter (JSON, where a path is
        ``{"_path": ...}``); None when unset, unreadable or relative (its default is ``"."``)."""
        try:
            value = json.loads(qt.QSettings().value(SLICER_NNUNET_SETTINGS_KEY) or "{}").get("modelPath")
        except (TypeError, ValueError, AttributeError):
            return None
        if isinstance(value, dict):
            value = value.get("_path")
        if not isinstance(value, str) or not value or not pathlib.Path(value).is_absolute():
            return None  # its default "." (or any relative path) is Slicer's working folder: never searched
        return value

    @classmethod
    def knownModelFolders(cls) -> list[str]:
        """The nnU-Net folders of TotalSegmentator, SlicerNNUnet's last model and ``$nnUNet_results``."""
        from ..models.nnunet import find_nnunet_folders, known_model_roots

        try:
            roots = known_model_roots(slicer_nnunet_model=cls.slicerNNUnetModelPath())
            return [str(folder) for root in roots for folder in find_nnunet_folders(root)]
        except (OSError, ValueError) as error:
            logging.warning(f"SegGradCAM: could not look for nnU-Net model folders: {error}")
            return []

    @staticmethod
    def modelSource(parameterNode) -> str:
        """The registered model name, or the chosen model file or folder."""
        if parameterNode.modelName != MODEL_FROM_PATH:
            return parameterNode.modelName
        source = str(parameterNode.modelPath or "")
        if source in ("", ".") or not pathlib.Path(source).exists():
            raise SegGradCAMError(_("Choose an existing model file or folder."))
        return source

    @staticmethod
    def requirementsKey(parameterNode, source: str) -> str:
        """What decides the packages to install: the registered name, or ``nnunet`` for an nnU-Net folder."""
        from ..models.nnunet import looks_like_nnunet_folder

        if parameterNode.modelName == MODEL_FROM_PATH and looks_like_nnunet_folder(pathlib.Path(source)):
            return "nnunet"
        return parameterNode.modelName

    @staticmethod
    def workerThreads() -> int:
        """CPU threads for the worker: all cores but one, left to Slicer's user interface."""
        return max(1, (os.cpu_count() or 2) - 1)

    @staticmethod
    def inputVolumes(parameterNode, channels: int) -> list:
        """The selected input volumes, as many as the model has channels."""
        return [
            parameterNode.inputVolume,
            parameterNode.inputVolume2,
            parameterNode.inputVolume3,
            parameterNode.inputVolume4,
        ][:channels]

    @staticmethod
    def checkSlicerVersion() -> None:
        """SegGradCAM runs in 3D Slicer 5.10 and later (Python 3.12)."""
        version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
        if version < MINIMUM_SLICER:
            raise SegGradCAMError(
                _("SegGradCAM needs 3D Slicer {needed} or later; this is {this}.").format(
                    needed=".".join(map(str, MINIMUM_SLICER)), this=".".join(map(str, version))
                )
            )

    def describeInstall(self, parameterNode):
        """What :meth:`installRequirements` would install, in words; None when nothing is missing."""
        source = self.modelSource(parameterNode)
        return self.installLogic().describeInstall(self.requirementsKey(parameterNode, source))

    def installRequirements(self, parameterNode, confirmed=None) -> None:
        """Install the packages the node's model needs (after asking); nothing if all is there.
        ``confirmed()``: called once the user accepted, before anything is installed."""
        self.checkSlicerVersion()
        source = self.modelSource(parameterNode)
        self.installLogic().ensureRequirements(self.requirementsKey(parameterNode, source), confirmed=confirmed)

    def startRun(self, parameterNode, point=None):
        """Install what is missing (after asking), then start the worker on the inputs (main thread).
        ``point``: world RAS (mm) of a "Why here?" point: explain only the finding there."""
        self.installRequirements(parameterNode)
        source = self.modelSource(parameterNode)
        channels = self.modelInfo(parameterNode.modelName, parameterNode.modelPath).get("in_channels", 1)
        segmentId = parameterNode.regionSegmentID if parameterNode.regionSegmentation else ""
        return self.sceneLogic().startRun(
            self.inputVolumes(parameterNode, channels),
            source,
            classes=parameterNode.classes or "all",
            layers=parameterNode.layers or "auto",
            method=parameterNode.method,
            regionSegmentationNode=parameterNode.regionSegmentation,
            regionSegmentId=segmentId,
            regionROINode=parameterNode.regionROI,
            device=parameterNode.device,
            trust=parameterNode.trustModel,
            threads=self.workerThreads(),
            faithfulness=parameterNode.faithfulness,
            findings=parameterNode.findings,
            point=point,
        )

    def startEvaluation(self, parameterNode, className: str):
        """Install what is missing (after asking), then start ``seggradcam evaluate`` for
        ``className`` in the worker on the inputs (main thread)."""
        self.installRequirements(parameterNode)
        source = self.modelSource(parameterNode)
        channels = self.modelInfo(parameterNode.modelName, parameterNode.modelPath).get("in_channels", 1)
        return self.sceneLogic().startEvaluation(
            self.inputVolumes(parameterNode, channels),
            source,
            className,
            method=parameterNode.method,
            layers=parameterNode.layers or "auto",
            device=parameterNode.device,
            trust=parameterNode.trustModel,
            threads=self.workerThreads(),
        )

    def finishRun(self, run, parameterNode):
        """Read the worker's outputs into nodes and show the first heatmap (main thread); a run with
        findings shows its findings table, a "Why here?" run also its finding."""
        outputs = self.sceneLogic().finishRun(run)
        if not parameterNode.heatmapColorMap:
            parameterNode.heatmapColorMap = self.sceneLogic().heatmapColorNode()
        parameterNode.displayedHeatmap = next(iter(outputs.heatmapNodes.values()), None)
        if outputs.findings is not None:
            parameterNode.findingsTable = outputs.findings.tableNode
            if outputs.findings.point is not None:
                self.showFinding(parameterNode, 0)
        return outputs

    def showFinding(self, parameterNode, row: int):
        """The finding in ``row`` of the node's findings table: the slice views centred on it and its
        heatmap shown; returns it (a :class:`~.findings.FindingTarget`; None for no row)."""
        target = self.sceneLogic().findingAt(parameterNode.findingsTable, row)
        if target is not None:
            self.sceneLogic().jumpToFinding(target)
            if target.heatmapNode is not None:
                parameterNode.displayedHeatmap = target.heatmapNode
        return target

    def whyHerePoint(self, parameterNode):
        """The node's "Why here?" point (world RAS, mm); None when it has none placed."""
        return self.sceneLogic().pointOf(parameterNode.whyHerePoint)

    def startPlacingWhyHerePoint(self, parameterNode):
        """Let the user click the "Why here?" point in a view (a point list "Why here?" made when the
        node has none); returns the point list."""
        if parameterNode.whyHerePoint is None:
            parameterNode.whyHerePoint = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLMarkupsFiducialNode", _("Why here?")
            )
        application = slicer.app.applicationLogic()
        self.sceneLogic().startPlacingPoint(
            parameterNode.whyHerePoint, application.GetSelectionNode(), application.GetInteractionNode()
        )
        return parameterNode.whyHerePoint

    def showHeatmap(self, parameterNode) -> None:
        """The node's heatmap over its input in every slice view; "None" hides the overlay."""
        heatmap = parameterNode.displayedHeatmap
        if heatmap is not None and heatmap.GetDisplayNode() is not None and parameterNode.heatmapColorMap:
            heatmap.GetDisplayNode().SetAndObserveColorNodeID(parameterNode.heatmapColorMap.GetID())
        self.sceneLogic().showHeatmap(
            heatmap,
            parameterNode.inputVolume,
            parameterNode.heatmapOpacity,
            parameterNode.heatmapThreshold,
            parameterNode.showHeatmap,
        )
