"""Inputs of a SegGradCAM run on an MRML scene: the geometry of volume nodes, the input checks,
the inputs written as volume files with their world geometry, and the target region mask.

Works on any ``vtkMRMLScene`` (3D Slicer's, or one made with the ``slicer-core`` wheel).
:class:`SceneInputs` is the inputs' part of :class:`~.runs.SegGradCAMSceneLogic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SegGradCAMError
from ..models.spec import ModelSpec
from ..selection import class_indices
from .outputs import removeWithDisplayAndStorage


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


def roiMask(roiNode, volumeNode) -> np.ndarray:
    """Boolean ``(K, J, I)`` mask of the volume's voxels whose centres lie inside a markups ROI."""
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


class SceneInputs:
    """The input checks and the target region of :class:`~.runs.SegGradCAMSceneLogic` on ``scene``."""

    scene: object

    def _checkedInputs(self, inputVolumeNodes: Sequence, model: str, classes) -> list:
        """The input volumes, checked against what the model declares (when readable without torch),
        its card's codes of its classes included."""
        from ..models.cards import model_terminology
        from ..models.registry import declared_facts

        facts = declared_facts(model)
        spec = ModelSpec(name=model, labels=list(facts.labels), in_channels=facts.in_channels) if facts else None
        volumes = checkedInputVolumes(self.scene, inputVolumeNodes, spec)
        if facts is not None:
            class_indices(classes, facts.labels)  # an unknown class fails here, with the valid ones
            model_terminology(model, facts.labels)  # so does a wrong code, before the run
        return volumes

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
            raise SegGradCAMError(
                f"The target segment '{segmentId}' is no longer in '{segmentationNode.GetName()}'; "
                "choose another segment, or none."
            )
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegGradCAM region (temporary)")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, referenceVolumeNode
            ):
                raise SegGradCAMError(f"Could not map segment '{segmentId}' onto the input volume's grid.")
            mask = slicer.util.arrayFromVolume(labelmap) > 0
        finally:
            # the export adds a display node and a colour table: remove them with the labelmap,
            # as slicer.util.arrayFromSegmentBinaryLabelmap does
            display = labelmap.GetDisplayNode()
            colorNode = display.GetColorNode() if display is not None else None
            removeWithDisplayAndStorage(self.scene, labelmap)
            if colorNode is not None and self.scene.IsNodePresent(colorNode):
                self.scene.RemoveNode(colorNode)
        if not mask.any():
            raise SegGradCAMError("The target segment is empty on the input volume's grid.")
        return mask


__all__ = [
    "SceneInputs",
    "checkedInputVolumes",
    "geometryOfVolume",
    "ijkToWorld",
    "roiMask",
    "sameGrid",
    "writeVolumeArray",
]
