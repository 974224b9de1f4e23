"""Scene logic on the real MRML classes of slicer-core: geometry, storage round trips,
re-runs, cancel, region targets and bad inputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import COLIN27, COLIN27_BRAIN
from toy_models import blob, centre_of_mass, threshold_model

from SegGradCAMLib.errors import CancelledError, SegGradCAMError
from SegGradCAMLib.mrml.scene_logic import OUTPUT_ATTRIBUTE, SegGradCAMSceneLogic, ijkToWorld

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
    scene = slicer.vtkMRMLScene()
    for name in ("Red", "Yellow", "Green"):
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", f"SliceComposite{name}")
    return scene


def add_volume(scene, array, name="input", matrix=None):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(matrix if matrix is not None else oblique_matrix())
    return node


def node_names(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def test_outputs_keep_the_oblique_anisotropic_geometry(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = SegGradCAMSceneLogic(scene).run([volume], threshold_model(), layers=["features"])
    heatmap = outputs.heatmapNodes[("blob", "features")]
    for node in (outputs.labelmapNode, heatmap):
        assert np.allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-9)
        assert slicer.util.arrayFromVolume(node).shape == SHAPE
    labels = slicer.util.arrayFromVolume(outputs.labelmapNode)
    assert np.array_equal(labels == 1, slicer.util.arrayFromVolume(volume) > 0)
    assert np.abs(centre_of_mass(slicer.util.arrayFromVolume(heatmap)) - CENTRE).max() < 0.5
    segments = outputs.segmentationNode.GetSegmentation()
    assert segments.GetNumberOfSegments() == 1 and segments.GetNthSegment(0).GetName() == "blob"


def test_model_orientation_is_read_from_the_world_direction(scene):
    """A model with a declared orientation and spacing sees the same anatomy for any storage order."""
    model = threshold_model(spacing=(2.0, 2.0, 2.0), orientation=((-1.0, 0, 0), (0, -1.0, 0), (0, 0, 1.0)))
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = SegGradCAMSceneLogic(scene).run([volume], model, layers=["features"])
    heat = slicer.util.arrayFromVolume(outputs.heatmapNodes[("blob", "features")])
    assert np.abs(centre_of_mass(heat) - CENTRE).max() < 1.0
    truth = slicer.util.arrayFromVolume(volume) > 0
    labels = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
    assert 2 * (labels & truth).sum() / (labels.sum() + truth.sum()) > 0.85


def test_outputs_follow_the_input_parent_transform(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 0, 0.0), matrix.SetElement(0, 1, -1.0), matrix.SetElement(1, 0, 1.0), matrix.SetElement(1, 1, 0.0)
    matrix.SetElement(2, 3, 30.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    outputs = SegGradCAMSceneLogic(scene).run([volume], threshold_model(), layers=["features"])
    for node in (outputs.labelmapNode, outputs.segmentationNode, *outputs.heatmapNodes.values()):
        assert node.GetTransformNodeID() == transform.GetID()
    for node in (outputs.labelmapNode, *outputs.heatmapNodes.values()):
        assert np.allclose(ijkToWorld(node), ijkToWorld(volume), atol=1e-9)
    assert not np.allclose(ijkToWorld(volume), ijk_to_ras(volume))


def test_non_linear_parent_transform_is_refused(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(SegGradCAMError, match="non-linear transform"):
        SegGradCAMSceneLogic(scene).run([volume], threshold_model(), layers=["features"])


def test_storage_round_trip_nrrd_and_seg_nrrd(scene, tmp_path):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = SegGradCAMSceneLogic(scene).run([volume], threshold_model(), layers=["features"])
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


def test_rerun_replaces_only_its_own_outputs(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    first = logic.run([volume], threshold_model(), layers=["features"])
    user_copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", first.heatmapNodes[("blob", "features")].GetName())
    names = node_names(scene)
    count = scene.GetNumberOfNodes()
    second = logic.run([volume], threshold_model(), layers=["features"])
    assert scene.GetNumberOfNodes() == count and node_names(scene) == names
    assert scene.IsNodePresent(user_copy) and not scene.IsNodePresent(first.labelmapNode)
    assert scene.IsNodePresent(second.labelmapNode)
    other_method = logic.run([volume], threshold_model(), layers=["features"], method="hirescam")
    assert scene.IsNodePresent(second.labelmapNode) and scene.IsNodePresent(other_method.labelmapNode)


def test_outputs_carry_provenance_and_sit_in_one_folder(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    outputs = SegGradCAMSceneLogic(scene).run([volume], threshold_model(), layers=["features"])
    heatmap = outputs.heatmapNodes[("blob", "features")]
    assert heatmap.GetAttribute("SegGradCAM.Model") == "threshold"
    assert heatmap.GetAttribute("SegGradCAM.Method") == "gradcam"
    assert heatmap.GetAttribute("SegGradCAM.Layer") == "features"
    assert heatmap.GetAttribute("SegGradCAM.Class") == "blob"
    assert heatmap.GetAttribute("SegGradCAM.Time") and heatmap.GetAttribute(OUTPUT_ATTRIBUTE) == "true"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in (outputs.labelmapNode, outputs.segmentationNode, heatmap):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == outputs.folderItemID
    assert sh.GetItemName(outputs.folderItemID).startswith("SegGradCAM: input threshold")


def test_heatmap_display_in_slice_views(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    outputs = logic.run([volume], threshold_model(), layers=["features"])
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


def test_cancel_leaves_the_scene_unchanged(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    before = node_names(scene)
    job = logic.prepareRun([volume], threshold_model(), layers=["features"])
    job.cancel()
    thread = logic.runInThread(job)
    thread.join(timeout=60)
    assert isinstance(job.error, CancelledError)
    with pytest.raises(CancelledError):
        logic.writeRun(job)
    assert node_names(scene) == before


def test_scene_closed_during_the_run(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    job = logic.prepareRun([volume], threshold_model(), layers=["features"])
    job.run()
    scene.Clear(0)
    before = node_names(scene)
    with pytest.raises(SegGradCAMError, match="removed"):
        logic.writeRun(job)
    assert node_names(scene) == before


def test_region_from_a_segment(scene):
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
    full = logic.run([volume], threshold_model(), layers=["features"])
    full_raw = float(full.heatmapNodes[("blob", "features")].GetAttribute("SegGradCAM.RawMax"))
    regional = logic.run([volume], threshold_model(), layers=["features"], method="gradcam",
                         regionSegmentationNode=segmentation, regionSegmentId=segment_id)
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
def test_bad_inputs_give_a_message_and_leave_the_scene_unchanged(scene, problem):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    other = add_volume(scene, blob((10, 10, 10), (5, 5, 5), 3), "other")
    logic = SegGradCAMSceneLogic(scene)
    before = node_names(scene)
    if problem == "empty roi":
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far")
        roi.SetCenter(1000.0, 1000.0, 1000.0)
        before = node_names(scene)
    cases = {
        "no volume": (lambda: dict(inputVolumeNodes=[None], model=threshold_model()), "Select an input volume"),
        "channels": (lambda: dict(inputVolumeNodes=[volume, volume], model=threshold_model()), "takes 1 input volume"),
        "geometry": (lambda: dict(inputVolumeNodes=[volume, other], model=threshold_model(in_channels=2)), "same grid"),
        "class": (lambda: dict(inputVolumeNodes=[volume], model=threshold_model(), classes="tumour"), "valid classes"),
        "empty roi": (lambda: dict(inputVolumeNodes=[volume], model=threshold_model(), regionROINode=roi), "no voxel"),
    }
    make_kwargs, message = cases[problem]
    kwargs = make_kwargs()
    with pytest.raises(SegGradCAMError, match=message):
        logic.run(**kwargs, layers=["features"])
    assert node_names(scene) == before


def test_model_load_failure_is_a_clear_message(scene, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(SegGradCAMError, match="JSON spec|corrupt"):
        SegGradCAMSceneLogic(scene).loadModel(str(tmp_path / "broken.pt"))


def test_progress_is_reported_from_the_worker_thread(scene):
    volume = add_volume(scene, blob(SHAPE, CENTRE, 5))
    logic = SegGradCAMSceneLogic(scene)
    job = logic.prepareRun([volume], threshold_model(), layers=["features"])
    seen = []
    thread = threading.Thread(target=job.run, args=(lambda done, total: seen.append((done, total)),))
    thread.start()
    thread.join(timeout=60)
    assert seen and seen[-1][0] == seen[-1][1] and job.progress == seen[-1]
    assert logic.writeRun(job).labelmapNode is not None


def test_hdbet_on_colin27_loaded_by_the_mrml_storage_node(scene):
    """Real data, real reader, real network: the MRML direction reaches the model correctly."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Colin27")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(COLIN27))
    assert reader.ReadData(volume)
    logic = SegGradCAMSceneLogic(scene)
    outputs = logic.run([volume], logic.loadModel("hdbet"))
    brain = slicer.util.arrayFromVolume(outputs.labelmapNode) == 1
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN27_BRAIN))) > 0
    dice = 2 * (brain & reference).sum() / (brain.sum() + reference.sum())
    print(f"HD-BET through MRML on Colin27: Dice {dice:.4f}")
    assert dice >= 0.90
    heatmap = outputs.heatmapNodes[("brain", "end_conv_2_bn")]
    assert np.allclose(ijk_to_ras(heatmap), ijk_to_ras(volume))


def test_slice_views_show_the_heatmap_on_the_anatomy(scene):
    """Slicer's own slice logic blends the heatmap over the input where the blob is, nowhere else."""
    from SegGradCAMLib.mrml.slice_views import SliceViews

    matrix = vtk.vtkMatrix4x4()  # identity: RAS = IJK
    volume = add_volume(scene, blob((40, 40, 40), (20, 20, 12), 6), matrix=matrix)
    views = SliceViews(scene, size=(80, 80))
    logic = SegGradCAMSceneLogic(scene)
    outputs = logic.run([volume], threshold_model(), layers=["features"])
    heatmap = outputs.heatmapNodes[("blob", "features")]
    logic.showHeatmap(heatmap, volume, opacity=1.0, threshold=0.05)
    views.setLabelOutline(outputs.labelmapNode)
    views.centreOn((12.0, 20.0, 20.0))
    image = views.render("Red").astype(int)
    coloured = (np.abs(image[..., 0] - image[..., 2]) > 30)  # Inferno is never grey; the background is
    assert coloured.any()
    rows, cols = np.nonzero(coloured)
    # the blob lies 8 mm to the patient's left (R = 12 < 20): radiological display puts it on the right
    assert 0.3 < rows.mean() / image.shape[0] < 0.7 and cols.mean() / image.shape[1] > 0.55
    logic.showHeatmap(heatmap, volume, opacity=1.0, threshold=0.05, visible=False)
    hidden = views.render("Red").astype(int)
    label_outline = np.abs(hidden[..., 0] - hidden[..., 2]) > 30
    assert label_outline.sum() < coloured.sum()  # only the outline remains coloured
