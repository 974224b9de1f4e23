"""Screenshot for the README: HD-BET on Colin27 run through the scene logic on a real MRML
scene (slicer-core), shown by Slicer's own slice logic in three views.

    .venv/bin/python scripts/render_slicer_screenshot.py docs/images/slicer_scene_colin27.png
"""

from __future__ import annotations

import sys

import slicer
from PIL import Image

from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic
from SegGradCAMLib.mrml.slice_views import SliceViews

COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"


def main(path: str) -> None:
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Colin27")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(COLIN27)
    if not reader.ReadData(volume):
        raise SystemExit(f"cannot read {COLIN27} (apt-get install mricron-data)")
    views = SliceViews(scene, size=(360, 420))
    logic = SegGradCAMSceneLogic(scene)
    outputs = logic.runAndWait([volume], "hdbet", layers=["loc3"], method="gradcam")
    heatmap = outputs.heatmapNodes[("brain", "loc3")]
    logic.showHeatmap(heatmap, volume, opacity=0.65, threshold=0.1)
    views.setLabelOutline(outputs.labelmapNode)
    views.centreOn((0.0, -10.0, 10.0))
    Image.fromarray(views.renderAll()[..., :3]).save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "slicer_scene.png")
