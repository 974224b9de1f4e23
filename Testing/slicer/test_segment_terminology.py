"""Segments of a run carry Slicer's terminology entries for their model's DICOM codes (what
Slicer's DICOM SEG export reads), read back by Slicer's own parser; heatmap provenance and the
segments' tags survive a saved scene; a run on a volume of a DICOM study lands in that study.
Real MRML classes of slicer-core, every run through the real worker process."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import slicer
import vtk
from slicer_harness import scene_with_slice_views
from toy_models import blob, threshold_model_file

from SegGradCAMLib import __version__
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.models.cards import SIDECAR_CARD, card_path
from SegGradCAMLib.models.terminology import segment_codes
from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic
from SegGradCAMLib.mrml.terminology import terminologyEntry

SHAPE, CENTRE = (18, 24, 22), (7.0, 13.0, 10.0)  # (K, J, I)
# Slicer's entry: context ~ category ~ type ~ modifier ~ region context ~ region ~ region modifier
CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMY, BRAIN = ("SCT", "91723000", "Anatomical Structure"), ("SCT", "12738006", "Brain")
TISSUE = ("SCT", "85756007", "Tissue")
ABNORMAL = ("SCT", "49755003", "Morphologically Abnormal Structure")
DEMO_CODES = {  # the demo model's card, meanings as the DICOM standard lists them
    "edema": (ABNORMAL, ("SCT", "79654002", "Edema")),
    "enhancing_rim": (ABNORMAL, ("NCIt", "C113842", "Enhancing Lesion")),
    "necrotic_core": (ABNORMAL, ("SCT", "6574001", "Necrosis")),
}


def entry(category: tuple[str, str, str], kind: tuple[str, str, str]) -> str:
    """The entry Slicer writes for a category and type without modifier or region."""
    return f"{CONTEXT}~{'^'.join(category)}~{'^'.join(kind)}~^^~{REGION_CONTEXT}~^^~^^"


def segments(segmentationNode) -> dict[str, dict[str, str]]:
    """Segment name -> its tags of interest."""
    found = {}
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        tags = {}
        for name in (segment.GetTerminologyEntryTagName(), "DICOM.SegmentAlgorithmType", "DICOM.SegmentAlgorithmName"):
            value = vtk.mutable("")
            tags[name] = str(value) if segment.GetTag(name, value) else None
        found[segment.GetName()] = tags
    return found


def parsed(text: str) -> tuple[tuple[str, str, str], tuple[str, str, str], str]:
    """Category, type and context name as Slicer's own parser reads ``text``."""
    parsed = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(text, parsed)
    codes = [
        (code.GetCodingSchemeDesignator(), code.GetCodeValue(), code.GetCodeMeaning())
        for code in (parsed.GetCategoryObject(), parsed.GetTypeObject())
    ]
    return codes[0], codes[1], parsed.GetTerminologyContextName()


@pytest.fixture()
def scene():
    return scene_with_slice_views()


def blob_volume(scene, name="input"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, blob(SHAPE, CENTRE, 5))
    return node


def toy_with_card(folder, card: dict | None, **spec) -> str:
    """The threshold toy as a model file, with ``card`` as its folder's model card."""
    path = threshold_model_file(folder, **spec)
    if card is not None:
        (path.parent / SIDECAR_CARD).write_text(json.dumps(card))
    return str(path)


def explain(scene, volumes, model, **options):
    return SegGradCAMSceneLogic(scene, python=sys.executable).runAndWait(volumes, model, **options)


def hdbet_like(tmp_path) -> str:
    """The toy with HD-BET's labels and HD-BET's own card (its terminology)."""
    card = json.loads(card_path("hdbet").read_text())
    return toy_with_card(tmp_path / "hdbet-like", {"terminology": card["terminology"]}, labels=["background", "brain"])


def test_a_declared_code_becomes_the_segments_slicer_terminology(scene, tmp_path):
    outputs = explain(scene, [blob_volume(scene)], hdbet_like(tmp_path), trust=True, layers=["features"])
    tags = segments(outputs.segmentationNode)
    assert list(tags) == ["brain"]
    assert tags["brain"]["TerminologyEntry"] == entry(ANATOMY, BRAIN)
    assert parsed(tags["brain"]["TerminologyEntry"]) == (ANATOMY, BRAIN, CONTEXT)
    assert tags["brain"]["DICOM.SegmentAlgorithmType"] == "AUTOMATIC"
    assert tags["brain"]["DICOM.SegmentAlgorithmName"] == "threshold"


def test_a_label_without_codes_gets_the_generic_tissue(scene, tmp_path):
    outputs = explain(scene, [blob_volume(scene)], toy_with_card(tmp_path, None), trust=True, layers=["features"])
    tags = segments(outputs.segmentationNode)
    assert tags["blob"]["TerminologyEntry"] == entry(TISSUE, TISSUE)
    assert parsed(tags["blob"]["TerminologyEntry"]) == (TISSUE, TISSUE, CONTEXT)


def test_the_demo_models_classes_carry_their_card_codes(scene):
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    centre = int(np.argwhere(case.labels > 0)[:, 0].mean())
    image = case.image[:, centre - 3 : centre + 3]
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, axis, demo_data.SPACING_MM)
    volumes = []
    for channel, name in zip(image, demo_data.CHANNELS):
        volumes.append(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name))
        slicer.util.updateVolumeFromArray(volumes[-1], channel.astype(np.float32))
        volumes[-1].SetIJKToRASMatrix(matrix)
    outputs = explain(scene, volumes, DEFAULT_MULTICLASS_MODEL, method="hirescam", threads=1)
    tags = segments(outputs.segmentationNode)
    assert set(tags) == set(DEMO_CODES)  # every lesion class is found in these slices
    for label, (category, kind) in DEMO_CODES.items():
        assert tags[label]["TerminologyEntry"] == entry(category, kind)
        assert parsed(tags[label]["TerminologyEntry"]) == (category, kind, CONTEXT)
        assert tags[label]["DICOM.SegmentAlgorithmName"] == DEFAULT_MULTICLASS_MODEL


def test_a_code_meaning_holding_slicers_separators_still_gives_a_parsable_entry():
    """The standard writes superscripts with ``^`` (SCT 422855001 "ATSM Cu^64^"), Slicer's entry
    separates fields with ``~`` and a code's parts with ``^``: the codes stay exact, the meaning
    loses the separators."""
    codes = segment_codes("uptake", {"uptake": ["SCT:49755003", "SCT:422855001"]})
    assert codes.type.meaning == "ATSM Cu^64^"
    assert parsed(terminologyEntry(codes)) == (ABNORMAL, ("SCT", "422855001", "ATSM Cu 64"), CONTEXT)


def test_a_card_with_a_wrong_code_is_refused_before_the_worker_starts(scene, tmp_path):
    card = {"terminology": {"blob": ["SCT:12738006", "SCT:12738006"]}}  # Brain is no category
    model = toy_with_card(tmp_path, card)
    volume = blob_volume(scene)
    count = scene.GetNumberOfNodes()
    with pytest.raises(SegGradCAMError, match="not a segmentation category"):
        SegGradCAMSceneLogic(scene, python=sys.executable).startRun([volume], model, trust=True)
    assert scene.GetNumberOfNodes() == count


def test_heatmap_provenance_and_segment_terminology_survive_a_saved_scene(scene, tmp_path):
    outputs = explain(scene, [blob_volume(scene)], hdbet_like(tmp_path), trust=True, layers=["features"])
    heatmap = outputs.heatmapNodes[("brain", "features")]
    folder = tmp_path / "scene"
    folder.mkdir()
    for node, name in ((heatmap, "heatmap.nrrd"), (outputs.segmentationNode, "segments.seg.nrrd")):
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(folder / name))
        assert node.GetStorageNode().WriteData(node)
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()

    reloaded = slicer.vtkMRMLScene()
    reloaded.SetRootDirectory(str(folder))
    reloaded.SetURL(str(folder / "scene.mrml"))
    assert reloaded.Import()
    node = reloaded.GetNodeByID(heatmap.GetID())
    attributes = {name: node.GetAttribute(f"SegGradCAM.{name}") for name in ("Model", "Class", "Layer", "Method")}
    assert attributes == {"Model": "threshold", "Class": "brain", "Layer": "features", "Method": "hirescam"}
    assert node.GetAttribute("SegGradCAM.ModelSHA256") == heatmap.GetAttribute("SegGradCAM.ModelSHA256")
    assert len(node.GetAttribute("SegGradCAM.ModelSHA256")) == 64
    assert node.GetAttribute("SegGradCAM.Version") == __version__
    assert float(node.GetAttribute("SegGradCAM.RawMax")) > 0
    assert np.array_equal(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(heatmap))
    tags = segments(reloaded.GetNodeByID(outputs.segmentationNode.GetID()))
    assert tags == segments(outputs.segmentationNode)
    assert tags["brain"]["TerminologyEntry"] == entry(ANATOMY, BRAIN)


def test_a_run_on_a_volume_of_a_dicom_study_puts_its_outputs_in_that_study(scene, tmp_path):
    """Slicer's "Export to DICOM" takes the patient and study from an item's place in the
    subject hierarchy: the outputs sit in the study of the volume they explain."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    volume = blob_volume(scene)
    sh.CreateItem(study, volume)  # as Slicer's DICOM module places a loaded series
    outputs = explain(scene, [volume], toy_with_card(tmp_path, None), trust=True, layers=["features"])
    assert sh.GetItemParent(outputs.folderItemID) == study
    for node in (outputs.segmentationNode, *outputs.heatmapNodes.values()):
        assert sh.GetItemAncestorAtLevel(sh.GetItemByDataNode(node), "Study") == study
    elsewhere = explain(scene, [blob_volume(scene, "not in a study")], toy_with_card(tmp_path / "b", None), trust=True)
    assert sh.GetItemParent(elsewhere.folderItemID) == sh.GetSceneItemID()
