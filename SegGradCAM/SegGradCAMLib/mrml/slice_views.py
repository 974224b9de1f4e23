"""Slice view images of an MRML scene, made by Slicer's own ``vtkMRMLSliceLogic``.

The same reslicing and layer blending that 3D Slicer's slice views show (background,
foreground with opacity and colour table, label layer as outline), without a window:
used for screenshots and for front ends without Slicer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
GREY_COLOR_NODE_NAME = "SegGradCAM Grey"


def greyColorNode(scene):
    """A grey ramp colour table (Slicer's file-based defaults may be absent)."""
    node = scene.GetFirstNodeByName(GREY_COLOR_NODE_NAME)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", GREY_COLOR_NODE_NAME)
        node.SetTypeToGrey()
    return node


def ensureDisplay(volumeNode) -> None:
    """Give a scalar volume without a usable display node a grey, auto window/level one."""
    display = volumeNode.GetDisplayNode()
    if display is None:
        volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
    if not display.GetColorNodeID() or volumeNode.GetScene().GetNodeByID(display.GetColorNodeID()) is None:
        display.SetAndObserveColorNodeID(greyColorNode(volumeNode.GetScene()).GetID())
        display.SetAutoWindowLevel(True)


class SliceViews:
    """Red/Yellow/Green slice logics on a scene; their composite nodes are real scene nodes."""

    def __init__(self, scene, size: Sequence[int] = (360, 360)) -> None:
        import slicer

        self.scene = scene
        self.logics = {}
        if scene.GetDefaultNodeByClass("vtkMRMLSliceNode") is None:  # Slicer's app does this at start-up
            slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        for name, orientation in ORIENTATIONS.items():
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            sliceNode = logic.AddSliceNode(name)
            getattr(sliceNode, f"SetOrientationTo{orientation}")()
            sliceNode.SetDimensions(int(size[0]), int(size[1]), 1)
            self.logics[name] = logic

    def setLabelOutline(self, labelmapNode) -> None:
        """Show a label map as outlines in every view (Slicer's label layer)."""
        for logic in self.logics.values():
            logic.GetSliceCompositeNode().SetLabelVolumeID(labelmapNode.GetID() if labelmapNode else None)
            logic.GetSliceNode().SetUseLabelOutline(True)

    def centreOn(self, rasPoint: Sequence[float]) -> None:
        """Fit every view to its volumes, then move each slice through ``rasPoint``."""
        for logic in self.logics.values():
            logic.FitSliceToAll()
            sliceNode = logic.GetSliceNode()
            sliceNode.JumpSliceByOffsetting(*[float(v) for v in rasPoint])

    def render(self, name: str) -> np.ndarray:
        """RGBA image ``(H, W, 4)`` uint8 of one view, top row first."""
        from vtk.util.numpy_support import vtk_to_numpy

        for composite in (self.logics[name].GetSliceCompositeNode(),):
            for volumeID in (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()):
                if volumeID:
                    ensureDisplay(self.scene.GetNodeByID(volumeID))
        producer = self.logics[name].GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1])

    def renderAll(self) -> np.ndarray:
        """The three views side by side, ``(H, 3W, 4)``."""
        return np.concatenate([self.render(name) for name in ORIENTATIONS], axis=1)
