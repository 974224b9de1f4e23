"""``explain --dicom``: the SEG and Parametric Maps written for a real DICOM MR series, checked by
the DICOM validator (dciodvfy), read back by highdicom and compared voxel for voxel with the NRRD
outputs; geometry of an oblique, anisotropic series; references and UIDs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID

from SegGradCAMLib.api import explain
from SegGradCAMLib.demo import data as demo_data
from dicom_series import DEMO, demo_series

from SegGradCAMLib.demo.dicom_series import write_mr_series
from SegGradCAMLib.dicom_options import DicomOptions
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models.cards import model_terminology
from SegGradCAMLib.options import ExplainOptions


def run_dicom(inputs: list[Path], out: Path):
    return explain(
        ExplainOptions(inputs=[str(p) for p in inputs], model=DEMO, out=out, dicom=DicomOptions(write_dicom=True))
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo model explained on the two-series DICOM demo case with --dicom (one run for the module)."""
    folder = tmp_path_factory.mktemp("dicom_demo")
    sources = demo_series(folder)
    out = folder / "out"
    report = run_dicom(sources, out)
    return sources, out, report


def instances(folder: Path) -> list:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def frames_in_source_order(dataset, source: list) -> np.ndarray:
    """A multi-frame object's frames ``(Z, Y, X)``, frame ``k`` the one derived from ``source[k]``."""
    rank = {d.SOPInstanceUID: k for k, d in enumerate(source)}
    referenced = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in dataset.PerFrameFunctionalGroupsSequence
    ]
    return dataset.pixel_array[np.argsort([rank[uid] for uid in referenced])]


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines of the DICOM validator (dicom3tools) on ``path``."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_every_object_written_is_valid_dicom(demo_run):
    _, out, report = demo_run
    files = report.dicom["files"]
    assert sorted(files) == sorted(
        ["dicom/segmentation.dcm"] + [f"dicom/{Path(info.file).stem}.dcm" for _, _, info in report.heatmaps()]
    )
    for name in files:
        assert dciodvfy_errors(out / name) == [], name
    on_disk = json.loads((out / "explain.json").read_text())["dicom"]["files"]
    assert on_disk == files


def test_segmentation_frames_equal_the_nrrd_segmentation_slice_by_slice(demo_run):
    sources, out, report = demo_run
    seg = hd.seg.segread(out / "dicom" / "segmentation.dcm")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    source = sorted(instances(sources[0]), key=lambda d: float(np.dot(d.ImagePositionPatient, [0, 0, 1])))
    # read back per source instance: slice k of the SEG is source slice k, each at its position
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source], combine_segments=True, skip_overlap_checks=True
    )
    expected = np.zeros_like(labels)
    for number, entry in enumerate(report.classes, start=1):
        expected[labels == entry.index] = number
    assert pixels.shape == labels.shape and np.array_equal(pixels, expected)
    assert (pixels > 0).sum() > 1000  # the demo case has lesions
    positions = {d.SOPInstanceUID: [float(v) for v in d.ImagePositionPatient] for d in source}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, positions[reference], atol=1e-4)


def test_segments_carry_the_models_codes_and_the_algorithm(demo_run):
    _, out, report = demo_run
    seg = pydicom.dcmread(out / "dicom" / "segmentation.dcm")
    codes = model_terminology(DEMO, list(demo_data.LABELS))
    for item, entry in zip(seg.SegmentSequence, report.classes):
        assert item.SegmentLabel == entry.name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        declared = codes[entry.name]
        assert (category.CodingSchemeDesignator, category.CodeValue) == (
            declared.category.scheme,
            declared.category.value,
        )
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
            declared.type.scheme,
            declared.type.value,
            declared.type.meaning,
        )
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == DEMO and algorithm.AlgorithmVersion == report.model.sha256
        assert algorithm.AlgorithmSource == "SegGradCAM"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["edema", "enhancing_rim", "necrotic_core"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["79654002", "C113842", "6574001"]


def test_parametric_maps_hold_the_nrrd_heatmaps_and_map_back_to_raw_units(demo_run):
    sources, out, report = demo_run
    source = sorted(instances(sources[0]), key=lambda d: float(d.ImagePositionPatient[2]))
    for entry, _, info in report.heatmaps():
        pm = pydicom.dcmread(out / "dicom" / f"{Path(info.file).stem}.dcm")
        assert hd.pm.ParametricMap.from_dataset(pm).number_of_frames == len(source)  # highdicom reads it back
        heatmap = sitk.GetArrayFromImage(sitk.ReadImage(str(out / info.file)))
        frames = frames_in_source_order(pm, source)
        assert frames.shape == heatmap.shape
        assert np.abs(frames.astype(np.float64) - heatmap).max() <= 1e-6
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        raw = frames * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
        assert np.allclose(raw, heatmap * info.max_raw, rtol=1e-6, atol=1e-12)
        assert entry.name in pm.SeriesDescription and report.method in pm.SeriesDescription


def test_objects_reference_the_source_series_with_new_unique_uids(demo_run):
    sources, out, report = demo_run
    source = instances(sources[0])
    source_uids = {d.SOPInstanceUID for d in source} | {d.SeriesInstanceUID for d in source}
    first = source[0]
    written = [pydicom.dcmread(out / name) for name in report.dicom["files"]]
    new = [uid for d in written for uid in (d.SOPInstanceUID, d.SeriesInstanceUID)]
    assert len(set(new)) == len(new) and not set(new) & source_uids
    assert all(UID(uid).is_valid for uid in new)
    for d in written:
        assert (d.StudyInstanceUID, d.FrameOfReferenceUID) == (first.StudyInstanceUID, first.FrameOfReferenceUID)
        assert (d.PatientName, d.PatientID) == (first.PatientName, first.PatientID)
        referenced = {r.SeriesInstanceUID: r for r in d.ReferencedSeriesSequence}  # every channel's series
        for channel in map(instances, sources):
            listed = referenced[channel[0].SeriesInstanceUID].ReferencedInstanceSequence
            assert {i.ReferencedSOPInstanceUID for i in listed} <= {s.SOPInstanceUID for s in channel}
        assert set(referenced) == {instances(p)[0].SeriesInstanceUID for p in sources}
    assert report.dicom["source_series"] == [instances(p)[0].SeriesInstanceUID for p in sources]


def oblique_anisotropic(image):
    """``image`` resampled onto a grid rotated 20 degrees about two axes with 1.9 x 2.3 x 3.1 mm voxels."""
    rotation = sitk.VersorTransform((1, 0, 0), np.deg2rad(20))
    second = sitk.VersorTransform((0, 0, 1), np.deg2rad(20))
    direction = np.asarray(second.GetMatrix()).reshape(3, 3) @ np.asarray(rotation.GetMatrix()).reshape(3, 3)
    spacing = (1.9, 2.3, 3.1)
    size = [int(s * sp / n) for s, sp, n in zip(image.GetSize(), image.GetSpacing(), spacing)]
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    origin = np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing, direction.flatten().tolist(), 0.0
    )


def test_an_oblique_anisotropic_series_keeps_its_geometry(tmp_path):
    sources = demo_series(tmp_path, oblique_anisotropic)
    report = run_dicom(sources, tmp_path / "out")
    first = instances(sources[0])[0]
    for name in report.dicom["files"]:
        written = pydicom.dcmread(tmp_path / "out" / name)
        shared = written.SharedFunctionalGroupsSequence[0]
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        assert np.allclose(orientation, [float(v) for v in first.ImageOrientationPatient], atol=1e-6)
        measures = shared.PixelMeasuresSequence[0]
        assert np.allclose([float(v) for v in measures.PixelSpacing], [float(v) for v in first.PixelSpacing])
        assert abs(float(measures.SliceThickness) - float(first.SliceThickness)) < 1e-6
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "segmentation.nrrd"))
    assert np.allclose(segmentation.GetSpacing(), (1.9, 2.3, 3.1), atol=1e-4)
    assert not np.allclose(np.asarray(segmentation.GetDirection()), np.eye(3).flatten(), atol=1e-3)


def test_dicom_output_of_a_file_input_is_one_line_and_writes_nothing(tmp_path, small_case):
    with pytest.raises(SegGradCAMError, match="DICOM output needs a DICOM input series") as error:
        run_dicom([Path(p) for p in small_case], tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_channels_of_two_studies_are_refused(tmp_path):
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, tmp_path / "nrrd")
    folders = []
    for channel in demo_data.CHANNELS:  # each series a study of its own
        write_mr_series(sitk.ReadImage(str(paths[channel])), tmp_path / channel)
        folders.append(tmp_path / channel)
    with pytest.raises(SegGradCAMError, match="another study or frame of reference"):
        run_dicom(folders, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_without_dicom_removes_the_earlier_runs_dicom_objects_only(demo_run, tmp_path):
    sources, _, _ = demo_run
    out = tmp_path / "out"
    run_dicom(sources, out)
    (out / "dicom" / "notes.txt").write_text("the user's own file")
    explain(ExplainOptions(inputs=[str(p) for p in sources], model=DEMO, out=out))
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["notes.txt"]
    assert "dicom" not in json.loads((out / "explain.json").read_text())


def test_hdbet_on_a_colin27_series_writes_valid_objects_equal_to_its_nrrd_outputs(tmp_path):
    from SegGradCAMLib.demo.dicom_series import write_colin27_series

    write_colin27_series(tmp_path / "colin27")
    out = tmp_path / "out"
    report = explain(
        ExplainOptions(inputs=[str(tmp_path / "colin27")], model="hdbet", out=out, dicom=DicomOptions(write_dicom=True))
    )
    assert [s["type"] for s in report.dicom["segments"]] == ["SCT:12738006 (Brain)"]
    for name in report.dicom["files"]:
        assert dciodvfy_errors(out / name) == [], name
    seg = hd.seg.segread(out / "dicom" / "segmentation.dcm")
    source = sorted(instances(tmp_path / "colin27"), key=lambda d: float(d.ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source], combine_segments=True
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    assert np.array_equal(pixels, labels) and labels.sum() > 500_000  # the brain: over 0.5 L at 1 mm
    pm = pydicom.dcmread(out / "dicom" / "heatmap_brain.dcm")
    heatmap = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heatmap_brain.nrrd")))
    assert np.abs(frames_in_source_order(pm, source) - heatmap).max() <= 1e-6


def test_cohorts_write_each_cases_objects_and_do_not_mix_with_a_run_without_them(demo_run, tmp_path):
    sources, _, _ = demo_run
    cases = tmp_path / "cases.txt"
    cases.write_text(",".join(str(p) for p in sources) + "\n")
    dicom = DicomOptions(write_dicom=True)
    summary = explain(ExplainOptions(cohort=cases, model=DEMO, out=tmp_path / "with", dicom=dicom))
    (case,) = [p for p in (tmp_path / "with").iterdir() if p.is_dir()]
    assert summary.done == 1 and sorted(p.name for p in (case / "dicom").iterdir())[-1] == "segmentation.dcm"
    assert dciodvfy_errors(case / "dicom" / "segmentation.dcm") == []
    again = explain(ExplainOptions(cohort=cases, model=DEMO, out=tmp_path / "with", dicom=dicom))
    assert again.skipped == 1
    explain(ExplainOptions(cohort=cases, model=DEMO, out=tmp_path / "without"))
    with pytest.raises(SegGradCAMError, match=r"other options \(dicom\)"):
        explain(ExplainOptions(cohort=cases, model=DEMO, out=tmp_path / "without", dicom=dicom))


def test_a_file_named_dicom_in_out_is_refused_and_kept(demo_run, tmp_path):
    sources, _, _ = demo_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "dicom").write_text("the user's file")
    with pytest.raises(SegGradCAMError, match="is a file or link where this run writes its dicom/ folder"):
        run_dicom(sources, out)
    assert (out / "dicom").read_text() == "the user's file" and sorted(p.name for p in out.iterdir()) == ["dicom"]
