"""Scene logic on the real MRML classes of slicer-core, every run through the real worker
process (the command line, loading model files): geometry, storage round trips, re-runs,
cancel, failures, region targets and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import COLIN27, COLIN27_BRAIN
from slicer_harness import scene_with_slice_views
from toy_models import blob, centre_of_mass, threshold_model_file

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.mrml.inputs import ijkToWorld
from SegGradCAMLib.mrml.outputs import OUTPUT_ATTRIBUTE
from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic

SHAPE, CENTRE = (18, 24, 22), (7.0, 13.0, 10.0)  # (K, J, I)


def oblique_matrix() -> vtk.vtkMatrix4x4:
    """IJK-to-RAS: rotated about an oblique axis, anisotropic spacing 0.8 x 1.1 x 2.5 mm, shifted origin."""
    rotation, _ = np.linalg.qr(np.array([[0.9, -0.3, 0.2], [0.3, 0.95, 0.0], [-0.2, 0.1, 0.97]]))
    spacing = np.array([0.8, 1.1, 2.5])
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, rotation[r, c] * spacing[c])
        matrix.SetElement(r, 3, (12.0, -20.0, 5.0)[r])
    return matrix


def matrix_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_array(matrix)


@pytest.fixture()
def scene():
    return scene_with_slice_views()


def add_volume(scene, array, name="input", matrix=None):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(matrix if matrix is not None else oblique_matrix())
    return node


def node_names(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


# A one-level launcher like PythonSlicer: it starts the real interpreter as its child.
LAUNCHER = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"]


@pytest.fixture()
def toy(tmp_path):
    """``toy(**spec)``: the threshold network saved as a model file (TorchScript + JSON sidecar)."""
    count = iter(range(100))
    return lambda **spec: str(threshold_model_file(tmp_path / f"toy{next(count)}", **spec))


def explain(scene, volumes, model, **options):
    """One run through the worker process: the toy (a trusted TorchScript file) at its layer."""
    options.setdefault("layers", ["features"])
    return SegGradCAMSceneLogic(scene, python=sys.executable).runAndWait(volumes, model, trust=True, **options)


def worker_processes(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [
        line for line in listing.splitlines() if marker in line and "SegGradCAMLib" in line and "ps -ww" not in line
    ]


def test_outputs_keep_the_oblique_anisotropic_geometry(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = explain(scene, [volume], toy())
    heatmap = outputs.heatmapNodes[("blob", "features")]
    for node in (outputs.labelmapNode, heatmap):
        assert np.allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-9)
        assert slicer.util.arrayFromVolume(node).shape == SHAPE
    labels = slicer.util.arrayFromVolume(outputs.labelmapNode)
    assert np.array_equal(labels == 1, slicer.util.arrayFromVolume(volume) > 0)
    assert np.abs(centre_of_mass(slicer.util.arrayFromVolume(heatmap)) - CENTRE).max() < 0.5
    segments = outputs.segmentationNode.GetSegmentation()
    assert segments.GetNumberOfSegments() == 1 and segments.GetNthSegment(0).GetName() == "blob"


def test_model_orientation_is_read_from_the_world_direction(scene, toy):
    """A model with a declared orientation and spacing sees the same anatomy for any storage order."""
    model = toy(spacing=(2.0, 2.0, 2.0), orientation=((-1.0, 0, 0), (0, -1.0, 0), (0, 0, 1.0)))
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = explain(scene, [volume], model)
    heat = slicer.util.arrayFromVolume(outputs.heatmapNodes[("blob", "features")])
    assert np.abs(centre_of_mass(heat) - CENTRE).max() < 1.0
    truth = slicer.util.arrayFromVolume(volume) > 0
    labels = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
    assert 2 * (labels & truth).sum() / (labels.sum() + truth.sum()) > 0.85


def test_outputs_follow_the_input_parent_transform(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    (
        matrix.SetElement(0, 0, 0.0),
        matrix.SetElement(0, 1, -1.0),
        matrix.SetElement(1, 0, 1.0),
        matrix.SetElement(1, 1, 0.0),
    )
    matrix.SetElement(2, 3, 30.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    outputs = explain(scene, [volume], toy())
    for node in (outputs.labelmapNode, outputs.segmentationNode, *outputs.heatmapNodes.values()):
        assert node.GetTransformNodeID() == transform.GetID()
    for node in (outputs.labelmapNode, *outputs.heatmapNodes.values()):
        assert np.allclose(ijkToWorld(node), ijkToWorld(volume), atol=1e-9)
    assert not np.allclose(ijkToWorld(volume), ijk_to_ras(volume))


def test_non_linear_parent_transform_is_refused(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(SegGradCAMError, match="non-linear transform"):
        explain(scene, [volume], toy())


def test_storage_round_trip_nrrd_and_seg_nrrd(scene, tmp_path, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = explain(scene, [volume], toy())
    heatmap = outputs.heatmapNodes[("blob", "features")]

    writer = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    writer.SetFileName(str(tmp_path / "heatmap.nrrd"))
    assert writer.WriteData(heatmap)
    reread = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reread")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(tmp_path / "heatmap.nrrd"))
    assert reader.ReadData(reread)
    assert np.array_equal(slicer.util.arrayFromVolume(reread), slicer.util.arrayFromVolume(heatmap))
    assert np.allclose(ijk_to_ras(reread), ijk_to_ras(volume), atol=1e-6)

    image = sitk.ReadImage(str(tmp_path / "heatmap.nrrd"))
    lps = np.diag([-1.0, -1.0, 1.0])
    matrix = ijk_to_ras(volume)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    assert np.allclose(image.GetSpacing(), spacing, atol=1e-6)
    assert np.allclose(image.GetOrigin(), lps @ matrix[:3, 3], atol=1e-6)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), lps @ (matrix[:3, :3] / spacing), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(heatmap))

    seg_writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    seg_writer.SetFileName(str(tmp_path / "segments.seg.nrrd"))
    assert seg_writer.WriteData(outputs.segmentationNode)
    segments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reread segments")
    seg_reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    seg_reader.SetFileName(str(tmp_path / "segments.seg.nrrd"))
    assert seg_reader.ReadData(segments)
    segment_id = segments.GetSegmentation().GetNthSegmentID(0)
    assert segments.GetSegmentation().GetSegment(segment_id).GetName() == "blob"
    mask = SegGradCAMSceneLogic(scene).regionMask(volume, segments, segment_id)
    assert np.array_equal(mask, slicer.util.arrayFromVolume(outputs.labelmapNode) == 1)


def test_rerun_replaces_only_its_own_outputs(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    model = toy()
    first = explain(scene, [volume], model)
    user_copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", first.heatmapNodes[("blob", "features")].GetName())
    names = node_names(scene)
    count = scene.GetNumberOfNodes()
    second = explain(scene, [volume], model)
    assert scene.GetNumberOfNodes() == count and node_names(scene) == names
    assert scene.IsNodePresent(user_copy) and not scene.IsNodePresent(first.labelmapNode)
    assert scene.IsNodePresent(second.labelmapNode)
    other_method = explain(scene, [volume], model, method="hirescam")
    assert scene.IsNodePresent(second.labelmapNode) and scene.IsNodePresent(other_method.labelmapNode)


def test_outputs_carry_provenance_and_sit_in_one_folder(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = explain(scene, [volume], toy())
    heatmap = outputs.heatmapNodes[("blob", "features")]
    assert heatmap.GetAttribute("SegGradCAM.Model") == "threshold"
    assert heatmap.GetAttribute("SegGradCAM.Method") == "hirescam"  # auto, no card: HiResCAM
    assert heatmap.GetAttribute("SegGradCAM.Layer") == "features"
    assert heatmap.GetAttribute("SegGradCAM.Class") == "blob"
    assert heatmap.GetAttribute("SegGradCAM.Time") and heatmap.GetAttribute(OUTPUT_ATTRIBUTE) == "true"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in (outputs.labelmapNode, outputs.segmentationNode, heatmap):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == outputs.folderItemID
    assert sh.GetItemName(outputs.folderItemID).startswith("SegGradCAM: input threshold")


def test_heatmap_display_in_slice_views(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    outputs = explain(scene, [volume], toy())
    heatmap = outputs.heatmapNodes[("blob", "features")]
    logic.showHeatmap(heatmap, volume, opacity=0.4, threshold=0.3)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    display = heatmap.GetDisplayNode()
    assert display.GetColorNodeID() == logic.heatmapColorNode().GetID()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.3)
    colors = logic.heatmapColorNode()
    assert colors.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    colors.GetColor(0, rgba)
    dark = sum(rgba[:3])
    colors.GetColor(255, rgba)
    assert dark < 0.1 < 2.5 < sum(rgba[:3])
    logic.showHeatmap(heatmap, volume, visible=False)
    assert composites.GetItemAsObject(0).GetForegroundVolumeID() is None


@pytest.fixture(scope="module")
def long_demo_case():
    """A held-out demo case (t1c, flair) repeated 8 times along its slices: a run of seconds."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return np.tile(case.image, (1, 8, 1, 1)).astype(np.float32)


def demo_volumes(scene, image):
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, axis, demo_data.SPACING_MM)
    return [add_volume(scene, channel, name, matrix) for channel, name in zip(image, demo_data.CHANNELS)]


def test_cancel_kills_the_worker_tree_and_leaves_no_trace(scene, long_demo_case):
    volumes = demo_volumes(scene, long_demo_case)
    logic = SegGradCAMSceneLogic(scene, python=sys.executable, launcher=LAUNCHER)
    before = node_names(scene)
    run = logic.startRun(volumes, DEFAULT_MULTICLASS_MODEL, threads=1)
    marker = str(run.folder)
    while not (run.progress and run.progress["stage"] in ("windows", "slices", "backward")):
        assert not run.finished, run.worker.errorMessage()
        logic.pollRun(run)
        time.sleep(0.02)
    assert len(worker_processes(marker)) == 2  # the launcher and the worker it started
    start = time.monotonic()
    logic.cancelRun(run)
    while worker_processes(marker) and time.monotonic() - start < 2:
        time.sleep(0.05)
    assert worker_processes(marker) == [] and time.monotonic() - start < 2
    assert not run.folder.exists() and node_names(scene) == before


def test_flow_with_progress_on_the_demo_model(scene):
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    volumes = demo_volumes(scene, case.image)
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    run = logic.startRun(volumes, DEFAULT_MULTICLASS_MODEL, method="hirescam")
    assert {str(p.relative_to(run.folder)) for p in run.folder.glob("input*/*")} == {
        "input0/t1c.nrrd",
        "input1/flair.nrrd",
    }
    while not run.finished:
        logic.pollRun(run)
        time.sleep(0.05)
    outputs = logic.finishRun(run)
    stages = [e["stage"] for e in run.worker.events if e["event"] == "progress"]
    assert stages[:2] == ["startup", "read"] and {"preprocess", "slices", "backward", "write"} <= set(stages)
    assert run.progress["stage"] == "write" and run.progress["done"] == run.progress["total"]
    assert not run.folder.exists()
    assert set(outputs.heatmapNodes) == {(name, "model.1.submodule.2") for name in demo_data.LABELS[1:]}
    labels = slicer.util.arrayFromVolume(outputs.labelmapNode)
    assert 2 * ((labels > 0) & (case.labels > 0)).sum() / ((labels > 0).sum() + (case.labels > 0).sum()) > 0.8
    for node in (outputs.labelmapNode, *outputs.heatmapNodes.values()):
        assert np.allclose(ijk_to_ras(node), ijk_to_ras(volumes[0]))


@pytest.mark.parametrize("problem", ["unknown model", "corrupt checkpoint"])
def test_a_failing_worker_gives_its_message_and_leaves_the_scene_unchanged(scene, toy, problem):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    model, message = "no-such-model", "Unknown model 'no-such-model'"
    if problem == "corrupt checkpoint":
        folder = Path(toy()).parent
        (folder / "model.pt").write_bytes(b"\x00" * 100)
        (folder / "unet.json").write_text(
            json.dumps(
                {
                    "architecture": "UNet",
                    "weights": "model.pt",
                    "labels": ["background", "blob"],
                    "args": {
                        "spatial_dims": 3,
                        "in_channels": 1,
                        "out_channels": 2,
                        "channels": [4, 8],
                        "strides": [2],
                    },
                }
            )
        )
        model, message = str(folder / "unet.json"), "Cannot read model file model.pt: it is corrupt"
    before = scene.GetNumberOfNodes()
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    run = logic.startRun([volume], model, trust=True)
    while not run.finished:
        time.sleep(0.05)
    with pytest.raises(SegGradCAMError, match=message) as error:
        logic.finishRun(run)
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)
    assert scene.GetNumberOfNodes() == before and not run.folder.exists()


def test_scene_closed_during_the_run(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    run = logic.startRun([volume], toy(), layers=["features"], trust=True)
    scene.Clear(0)
    while not run.finished:
        time.sleep(0.05)
    before = node_names(scene)
    with pytest.raises(SegGradCAMError, match="removed"):
        logic.finishRun(run)
    assert node_names(scene) == before and not run.folder.exists()


def test_region_from_a_segment(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    mask = slicer.util.arrayFromVolume(volume) > 0
    half = mask.copy()
    half[: int(CENTRE[0])] = False
    labelmap = add_volume(scene, half.astype(np.uint8), "half", oblique_matrix())
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "half labelmap")
    slicer.util.updateVolumeFromArray(labelmap_node, half.astype(np.uint8))
    labelmap_node.SetIJKToRASMatrix(oblique_matrix())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segments")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    scene.RemoveNode(labelmap)
    scene.RemoveNode(labelmap_node)
    model = toy()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # the scene's singleton, made once
    count = scene.GetNumberOfNodes()
    assert logic.regionMask(volume, segmentation, segment_id).sum() == half.sum()
    assert scene.GetNumberOfNodes() == count  # exporting the segment leaves no node behind
    full = explain(scene, [volume], model, method="gradcam")
    full_raw = float(full.heatmapNodes[("blob", "features")].GetAttribute("SegGradCAM.RawMax"))
    regional = explain(
        scene, [volume], model, method="gradcam", regionSegmentationNode=segmentation, regionSegmentId=segment_id
    )
    regional_raw = float(regional.heatmapNodes[("blob", "features")].GetAttribute("SegGradCAM.RawMax"))
    assert regional_raw / full_raw == pytest.approx(half.sum() / mask.sum(), rel=1e-4)
    assert scene.IsNodePresent(segmentation)


def test_region_from_a_markups_roi(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5), matrix=vtk.vtkMatrix4x4())
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "why here?")
    roi.SetCenter(10.0, 13.0, 9.0)  # RAS = IJK for an identity matrix: i 8..12, j 11..15, k 7..11
    roi.SetSize(4.0, 4.0, 4.0)
    mask = SegGradCAMSceneLogic(scene).regionMask(volume, roiNode=roi)
    expected = np.zeros(SHAPE, dtype=bool)
    expected[7:12, 11:16, 8:13] = True
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("problem", ["no volume", "channels", "geometry", "class", "empty roi"])
def test_bad_inputs_give_a_message_and_leave_the_scene_unchanged(scene, toy, problem):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    other = add_volume(scene, blob((10, 10, 10), (5, 5, 5), 3), "other")
    logic = SegGradCAMSceneLogic(scene)
    before = node_names(scene)
    if problem == "empty roi":
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far")
        roi.SetCenter(1000.0, 1000.0, 1000.0)
        before = node_names(scene)
    cases = {
        "no volume": (lambda: dict(inputVolumeNodes=[None], model=toy()), "Select an input volume"),
        "channels": (lambda: dict(inputVolumeNodes=[volume, volume], model=toy()), "takes 1 input volume"),
        "geometry": (lambda: dict(inputVolumeNodes=[volume, other], model=toy(in_channels=2)), "same grid"),
        "class": (lambda: dict(inputVolumeNodes=[volume], model=toy(), classes="tumour"), "valid classes"),
        "empty roi": (lambda: dict(inputVolumeNodes=[volume], model=toy(), regionROINode=roi), "no voxel"),
    }
    make_kwargs, message = cases[problem]
    kwargs = make_kwargs()
    with pytest.raises(SegGradCAMError, match=message):
        logic.startRun(**kwargs, layers=["features"], trust=True)
    assert node_names(scene) == before


def test_model_load_failure_is_a_clear_message(scene, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene, python=sys.executable)
    run = logic.waitFor(logic.startRun([volume], str(tmp_path / "broken.pt")))
    with pytest.raises(SegGradCAMError, match="JSON spec|corrupt"):
        logic.finishRun(run)


def test_hdbet_on_colin27_loaded_by_the_mrml_storage_node(scene):
    """Real data, real reader, real network: the MRML direction reaches the model correctly."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Colin27")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(COLIN27))
    assert reader.ReadData(volume)
    outputs = SegGradCAMSceneLogic(scene, python=sys.executable).runAndWait([volume], "hdbet")
    brain = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN27_BRAIN))) > 0
    dice = 2 * (brain & reference).sum() / (brain.sum() + reference.sum())
    print(f"HD-BET through MRML on Colin27: Dice {dice:.4f}")
    assert dice >= 0.90
    heatmap = outputs.heatmapNodes[("brain", "end_conv_2_bn")]
    assert np.allclose(ijk_to_ras(heatmap), ijk_to_ras(volume))
    segment, entry = outputs.segmentationNode.GetSegmentation().GetNthSegment(0), vtk.mutable("")
    assert segment.GetName() == "brain" and segment.GetTag(segment.GetTerminologyEntryTagName(), entry)
    assert str(entry).split("~")[1:3] == ["SCT^91723000^Anatomical Structure", "SCT^12738006^Brain"]  # its card


def test_slice_views_show_the_heatmap_on_the_anatomy(scene, toy):
    """Slicer's own slice logic blends the heatmap over the input where the blob is, nowhere else."""
    from SegGradCAMLib.mrml.slice_views import SliceViews

    matrix = vtk.vtkMatrix4x4()  # identity: RAS = IJK
    volume = add_volume(scene, blob((40, 40, 40), (20, 20, 12), 6), matrix=matrix)
    views = SliceViews(scene, size=(80, 80))
    logic = SegGradCAMSceneLogic(scene)
    outputs = explain(scene, [volume], toy())
    heatmap = outputs.heatmapNodes[("blob", "features")]
    logic.showHeatmap(heatmap, volume, opacity=1.0, threshold=0.05)
    views.setLabelOutline(outputs.labelmapNode)
    views.centreOn((12.0, 20.0, 20.0))
    image = views.render("Red").astype(int)
    coloured = np.abs(image[..., 0] - image[..., 2]) > 30  # Inferno is never grey; the background is
    assert coloured.any()
    rows, cols = np.nonzero(coloured)
    # the blob lies 8 mm to the patient's left (R = 12 < 20): radiological display puts it on the right
    assert 0.3 < rows.mean() / image.shape[0] < 0.7 and cols.mean() / image.shape[1] > 0.55
    logic.showHeatmap(heatmap, volume, opacity=1.0, threshold=0.05, visible=False)
    hidden = views.render("Red").astype(int)
    label_outline = np.abs(hidden[..., 0] - hidden[..., 2]) > 30
    assert label_outline.sum() < coloured.sum()  # only the outline remains coloured


def test_faithfulness_lands_in_a_table_and_on_each_heatmap(scene, toy):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = explain(scene, [volume], toy(), faithfulness=True)
    table = outputs.faithfulnessTableNode.GetTable()
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns[:5] == ["heatmap", "class", "layer", "verdict", "Deletion AUC"] and table.GetNumberOfRows() == 1
    chart = outputs.faithfulnessChartNode  # bars: the map's AUCs beside the random orderings' and the mask's
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series][:3] == [
        "Deletion AUC",
        "random Deletion AUC (mean)",
        "mask Deletion AUC",
    ] and len(series) == 6
    assert all(s.GetTableNode() is outputs.faithfulnessTableNode and s.GetPlotType() == s.PlotTypeBar for s in series)
    verdict = table.GetValueByName(0, "verdict").ToString()
    assert verdict.startswith(("better than random", "not better than random", "mixed"))
    heatmap = outputs.heatmapNodes[("blob", "features")]
    assert heatmap.GetAttribute("SegGradCAM.Faithfulness").startswith(verdict)
    assert "this volume only" in table.GetValueByName(0, "basis").ToString()
    unscored = explain(scene, [volume], toy())
    assert unscored.faithfulnessTableNode is None and unscored.faithfulnessChartNode is None  # only when asked
