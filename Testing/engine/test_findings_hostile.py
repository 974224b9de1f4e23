"""``explain --findings`` on what users try next: a run again into the same ``--out`` with fewer
findings, without findings or without probabilities (no earlier finding, probability or DICOM
map may stay behind as if current), an oblique input (each finding's RAS box holds every voxel
of the finding), an empty ``--point=``, ``--region`` with ``--probabilities``, a class given
twice, and the progress of the segmentation and occlusion passes (the defects not fixed yet are
strict xfails naming where the fix goes). A threshold model (TorchScript, ``--trust-model``)
keeps each run under a second; the command line is the real one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from toy_models import blob, threshold_model_file

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo.dicom_series import write_mr_series


def two_blobs(path: Path, spacing=(1.0, 1.0, 1.0), direction=None) -> Path:
    """A volume (24, 24, 60) with two bright blobs, 485 and 93 voxels: the threshold model's two findings."""
    shape = (24, 24, 60)
    image = sitk.GetImageFromArray(np.maximum(blob(shape, (12, 12, 15), 5), blob(shape, (12, 12, 45), 3)))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def explain(*args: str) -> None:
    assert main(["explain", *map(str, args), "--trust-model", "--quiet"]) == 0


def files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_a_rerun_with_fewer_findings_or_none_leaves_no_earlier_finding_or_probability_map(tmp_path):
    model, image, out = threshold_model_file(tmp_path / "model"), two_blobs(tmp_path / "a.nrrd"), tmp_path / "o"
    explain(image, "--model", model, "--findings", "--out", out)
    assert {"heatmap_blob_f1.nrrd", "heatmap_blob_f2.nrrd", "entropy.nrrd", "findings.csv"} <= files(out)
    (out / "notes.txt").write_text("the user's own file")
    plain = {"explain.json", "segmentation.nrrd", "overview.png", "heatmap_blob.nrrd", "notes.txt"}

    explain(image, "--model", model, "--findings", "--max-findings", "1", "--no-probabilities", "--out", out)
    assert files(out) == plain | {"heatmap_blob_f1.nrrd", "findings.json", "findings.csv"}
    explain(image, "--model", model, "--out", out)
    assert files(out) == plain


def test_a_rerun_without_findings_leaves_no_earlier_dicom_finding_or_probability_map(tmp_path):
    model, out = threshold_model_file(tmp_path / "model"), tmp_path / "o"
    image = sitk.GetImageFromArray(blob((8, 16, 16), (4, 8, 8), 3) * 100)
    image.SetSpacing((1.5, 1.5, 2.0))
    series = tmp_path / "series"
    write_mr_series(image, series)
    explain(series, "--model", model, "--dicom", "--findings", "--out", out)
    assert {"dicom/heatmap_blob_f1.dcm", "dicom/probability_blob.dcm", "dicom/entropy.dcm"} <= files(out)
    explain(series, "--model", model, "--dicom", "--out", out)
    assert {name for name in files(out) if name.startswith("dicom/")} == {
        "dicom/segmentation.dcm",
        "dicom/heatmap_blob.dcm",
    }


def test_the_ras_box_of_a_finding_in_an_oblique_volume_holds_each_of_its_voxels(tmp_path):
    turn = math.radians(30)
    cos, sin = math.cos(turn), math.sin(turn)
    image = two_blobs(tmp_path / "oblique.nrrd", (1.2, 0.9, 2.0), (cos, -sin, 0, sin, cos, 0, 0, 0, 1))
    out = tmp_path / "o"
    explain(image, "--model", threshold_model_file(tmp_path / "model"), "--findings", "--out", out)
    reference = sitk.ReadImage(str(out / "segmentation.nrrd"))
    labels = sitk.GetArrayFromImage(reference)
    findings = json.loads((out / "findings.json").read_text())["findings"]
    assert len(findings) == 2
    for finding in findings:
        (i0, j0, k0), (i1, j1, k1) = finding["bbox_ijk"]
        voxels = np.argwhere(labels[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] == 1)[:, ::-1] + (i0, j0, k0)
        lps = np.array([reference.TransformIndexToPhysicalPoint([int(v) for v in ijk]) for ijk in voxels])
        ras = lps * (-1, -1, 1)
        low, high = np.array(finding["bbox_ras"])
        assert len(voxels) == finding["voxels"]
        assert np.allclose(low, ras.min(axis=0), atol=1e-3) and np.allclose(high, ras.max(axis=0), atol=1e-3)


def test_an_empty_point_is_refused_not_taken_for_no_point(tmp_path, capsys):
    image, out = two_blobs(tmp_path / "a.nrrd"), tmp_path / "o"
    model = threshold_model_file(tmp_path / "model")
    assert main(["explain", str(image), "--model", str(model), "--trust-model", "--point=", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--point takes R,A,S" in err[0], err
    assert not out.exists()


def test_probabilities_with_a_region_still_explain_the_region(tmp_path):
    image, out = two_blobs(tmp_path / "a.nrrd"), tmp_path / "o"
    reference = sitk.ReadImage(str(image))
    region = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    region[6:18, 6:18, 38:52] = 1  # around the smaller blob only
    mask = sitk.GetImageFromArray(region)
    mask.CopyInformation(reference)
    sitk.WriteImage(mask, str(tmp_path / "region.nrrd"))
    model = threshold_model_file(tmp_path / "model")
    explain(image, "--model", model, "--region", tmp_path / "region.nrrd", "--probabilities", "--out", out)
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heatmap_blob.nrrd")))
    assert (out / "probability_blob.nrrd").exists()
    assert heat[region > 0].sum() / heat.sum() > 0.99  # a 1x1 network: the map is the region's blob


def progress_of(tmp_path: Path, **spec) -> dict[str, list[tuple[int, int]]]:
    """The progress events ``(done, total)`` per stage of explain --findings of a two-channel
    threshold model (occlusion: one segmentation per channel and one of both)."""
    from SegGradCAMLib.api import explain as explain_api
    from SegGradCAMLib.finding_options import FindingOptions
    from SegGradCAMLib.options import ExplainOptions

    model = threshold_model_file(tmp_path / "model", in_channels=2, **spec)
    inputs = (str(two_blobs(tmp_path / "t1c.nrrd")), str(two_blobs(tmp_path / "flair.nrrd")))
    options = ExplainOptions(
        inputs=inputs, model=str(model), trust_model=True, out=tmp_path / "o", findings=FindingOptions(findings=True)
    )
    events: dict[str, list[tuple[int, int]]] = {}
    explain_api(options, progress=lambda stage, done, total: events.setdefault(stage, []).append((done, total)))
    return events


@pytest.mark.parametrize("spec", [{}, {"roi_size": [16, 16, 16]}], ids=["whole volume", "sliding windows"])
def test_each_progress_stage_only_goes_forward_and_ends_at_its_total(tmp_path, spec):
    events = progress_of(tmp_path, **spec)
    assert "backward" in events and "write" in events
    for stage, steps in events.items():
        done = [d for d, _ in steps]
        assert done == sorted(done), (stage, steps)
        assert steps[-1][0] == steps[-1][1], (stage, steps)


def test_the_segmentation_pass_of_sliding_windows_ends_at_its_total(tmp_path):
    from SegGradCAMLib.api import explain as explain_api
    from SegGradCAMLib.finding_options import FindingOptions
    from SegGradCAMLib.options import ExplainOptions

    model = threshold_model_file(tmp_path / "model", roi_size=[16, 16, 16])
    options = ExplainOptions(
        inputs=(str(two_blobs(tmp_path / "a.nrrd")),),
        model=str(model),
        trust_model=True,
        out=tmp_path / "o",
        findings=FindingOptions(findings=True),
    )
    steps: list[tuple[int, int]] = []
    explain_api(options, progress=lambda stage, done, total: stage == "segment" and steps.append((done, total)))
    assert steps and steps[-1][0] == steps[-1][1], steps


def test_a_class_given_twice_has_its_findings_once(tmp_path):
    out = tmp_path / "o"
    model = threshold_model_file(tmp_path / "model")
    explain(two_blobs(tmp_path / "a.nrrd"), "--model", model, "--classes", "blob,1", "--findings", "--out", out)
    report = json.loads((out / "explain.json").read_text())
    assert report["findings"]["found"] == 2 and len(report["classes"]) == 1
