"""``explain --dicom --findings``: the SEG gains one segment per finding (its own component, its
class's codes), each finding map and each probability and entropy map becomes a Parametric Map;
checked by dciodvfy and against findings.json, segmentation.nrrd's components and the NRRD maps."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicom_series import DEMO, demo_series
from test_dicom_outputs import dciodvfy_errors, frames_in_source_order, instances

from SegGradCAMLib.api import explain
from SegGradCAMLib.dicom_options import DicomOptions
from SegGradCAMLib.finding_options import FindingOptions
from SegGradCAMLib.options import ExplainOptions


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory):
    """The demo model's edema on the two-series DICOM demo case with --dicom --findings
    --max-findings 2 (probabilities on by default): sources sorted by slice position, output
    folder, report, write steps."""
    folder = tmp_path_factory.mktemp("dicom_findings")
    sources = demo_series(folder)
    options = ExplainOptions(
        inputs=[str(p) for p in sources],
        model=DEMO,
        out=folder / "out",
        classes=("edema",),
        dicom=DicomOptions(write_dicom=True),
        findings=FindingOptions(findings=True, max_findings=2),
    )
    steps: list[tuple[int, int]] = []
    report = explain(options, lambda stage, done, total: steps.append((done, total)) if stage == "write" else None)
    source = sorted(instances(sources[0]), key=lambda d: float(d.ImagePositionPatient[2]))
    return source, folder / "out", report, steps


def read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_every_finding_and_probability_map_is_a_valid_object_counted_in_the_progress(findings_run):
    _, out, report, steps = findings_run
    findings = json.loads((out / "findings.json").read_text())["findings"]
    maps = [layer["file"] for f in findings for layer in f["layers"].values()] + report.uncertainty
    assert len(findings) >= 2 and "probability_edema.nrrd" in maps and "entropy.nrrd" in maps
    assert set(report.dicom["files"]) >= {f"dicom/{name.removesuffix('.nrrd')}.dcm" for name in maps}
    checked = [
        "segmentation.dcm",
        next(iter(findings[0]["layers"].values()))["file"],
        "probability_edema.nrrd",
        "entropy.nrrd",
    ]
    for name in checked:
        assert dciodvfy_errors(out / "dicom" / name.replace(".nrrd", ".dcm")) == [], name
    assert all(done <= total for done, total in steps[:-1]), steps  # every file written was counted
    assert steps[-2][0] == steps[-2][1] - 1  # the last before explain.json


def test_seg_holds_the_classes_then_each_finding_as_its_own_component(findings_run):
    source, out, report, _ = findings_run
    findings = json.loads((out / "findings.json").read_text())["findings"]
    labels = read(out / "segmentation.nrrd")
    seg = hd.seg.segread(out / "dicom" / "segmentation.dcm")
    items = pydicom.dcmread(out / "dicom" / "segmentation.dcm").SegmentSequence
    names = [e.name for e in report.classes]
    assert [s.SegmentLabel for s in items] == names + [f"{f['class']} f{f['id']}" for f in findings]
    assert [s["label"] for s in report.dicom["segments"]] == [s.SegmentLabel for s in items]
    uids = [d.SOPInstanceUID for d in source]
    for number, finding in enumerate(findings, start=len(names) + 1):
        item, own_class = items[number - 1], items[names.index(finding["class"])]
        assert item.SegmentDescription == f"finding {finding['id']} of {finding['class']} (connected component)"
        for codes in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
            assert item[codes][0].CodeValue == own_class[codes][0].CodeValue
        components, count = ndimage.label(labels == finding["class_index"], np.ones((3, 3, 3)))
        (i0, j0, k0), (i1, j1, k1) = finding["bbox_ijk"]
        ids = np.unique(components[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1])
        sizes = {n: int((components == n).sum()) for n in ids if n}
        own = [n for n, size in sizes.items() if size == finding["voxels"]]
        assert len(own) == 1, (finding, sizes)
        frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[number], skip_overlap_checks=True)
        assert np.array_equal(frames[..., 0] > 0, components == own[0]), finding["id"]


def test_finding_and_probability_maps_equal_their_nrrd_files_in_their_units(findings_run):
    source, out, report, _ = findings_run
    finding = json.loads((out / "findings.json").read_text())["findings"][0]
    layer = next(iter(finding["layers"].values()))
    cases = [
        (layer["file"], layer["max_raw"], "SegGradCAM", f"{finding['class']} f{finding['id']}"),
        ("probability_edema.nrrd", 1.0, "probability", "SegGradCAM probability edema"),
        ("entropy.nrrd", 1.0, "entropy", "SegGradCAM entropy"),
    ]
    for name, per_one, label, title in cases:
        pm = pydicom.dcmread(out / "dicom" / name.replace(".nrrd", ".dcm"))
        frames = frames_in_source_order(pm, source)
        assert np.abs(frames.astype(np.float64) - read(out / name)).max() <= 1e-6, name
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert float(mapping.RealWorldValueSlope) == pytest.approx(per_one, rel=1e-9) and mapping.LUTLabel == label
        assert title in pm.SeriesDescription
    mapping = pydicom.dcmread(out / "dicom" / "entropy.dcm").SharedFunctionalGroupsSequence[0]
    assert "normalised entropy" in mapping.RealWorldValueMappingSequence[0].LUTExplanation
