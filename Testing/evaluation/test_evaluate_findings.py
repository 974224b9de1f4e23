"""``evaluate --findings``: each finding of a volume is scored with the Deletion/Insertion of its
class, against its own component (its Seg-Grad-CAM target the class logit summed over it, its score
the mean class probability over it); its rows carry its id and are summarised apart from the classes.

The 2D demo model on the two slices of a held-out demo case whose edema is two components on both
(``two_lesion_slices``, Testing/conftest.py); ``explain --findings`` on the same slices says which
findings there are.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from toy_models import blob, threshold_model

from SegGradCAMLib.cli import main
from SegGradCAMLib.cohort.tasks import EvaluateTask
from SegGradCAMLib.evaluation.scoring import EvalConfig, evaluate
from SegGradCAMLib.findings import FindingRequest
from SegGradCAMLib.models import SHIPPED_MODELS
from SegGradCAMLib.models.nnunet import find_nnunet_folders
from SegGradCAMLib.pipelines import VolumePipeline

COMMON = ["--model", "demo-lesions-unet2d", "--classes", "edema", "--threads", "1"]
SCORING = ["--metrics", "deletion,insertion", "--baselines", "mask", "--step", "0.1"]


@pytest.fixture(scope="module")
def runs(two_lesion_slices, tmp_path_factory):
    """metrics.json of ``evaluate`` with and without ``--findings``, the first one's folder, and
    the findings.json of ``explain --findings`` on the same slices."""
    root = tmp_path_factory.mktemp("evaluate_findings")
    data = ",".join(two_lesion_slices)
    for name, extra in (("findings", ["--findings", "--max-findings", "2"]), ("classes", [])):
        assert main(["evaluate", "--data", data, "--out", str(root / name), *COMMON, *SCORING, *extra]) == 0
    explain = [*two_lesion_slices, "--out", str(root / "explain"), *COMMON, "--findings", "--max-findings", "2"]
    assert main(["explain", *explain, "--no-probabilities", "--no-overview"]) == 0
    metrics, classes = (json.loads((root / name / "metrics.json").read_text()) for name in ("findings", "classes"))
    return metrics, classes, json.loads((root / "explain" / "findings.json").read_text()), root / "findings"


def test_every_finding_gets_rows_with_its_id_over_its_own_component(runs):
    metrics, _, explained, _ = runs
    findings = {f["id"]: f for f in explained["findings"]}
    assert len(findings) == 2 and {f["class"] for f in findings.values()} == {"edema"}
    for method in ("gradcam", "mask"):
        rows = [r for r in metrics["rows"] if r.get("finding") is not None and r["method"] == method]
        assert {r["finding"] for r in rows} == set(findings) and {r["class"] for r in rows} == {"edema"}
        for number, finding in findings.items():
            # one row per slice showing it, scored over its part there: together, the component explain found
            assert sum(r["mask_voxels"] for r in rows if r["finding"] == number) == finding["voxels"]


def test_a_findings_deletion_curve_uses_its_component_not_its_class(runs):
    metrics, _, _, _ = runs
    for case in {r["case"] for r in metrics["rows"]}:
        for method in ("gradcam", "mask"):
            rows = [r for r in metrics["rows"] if r["case"] == case and r["method"] == method]
            (whole,) = [r for r in rows if r.get("finding") is None]
            parts = [r for r in rows if r.get("finding") is not None]
            assert len(parts) == 2  # the class is two components on this slice
            assert sum(p["mask_voxels"] for p in parts) <= whole["mask_voxels"]
            for part in parts:
                assert part["mask_voxels"] < whole["mask_voxels"]
                assert part["deletion_auc"] != pytest.approx(whole["deletion_auc"], abs=1e-3)
            assert parts[0]["deletion_auc"] != pytest.approx(parts[1]["deletion_auc"], abs=1e-3)
    mean = {(c["class"], c["method"], c["curve"]): c["mean"] for c in metrics["curves"]}
    assert mean[("edema findings", "mask", "deletion")] != pytest.approx(mean[("edema", "mask", "deletion")], abs=1e-3)


def test_the_summary_groups_the_findings_apart_from_the_classes(runs):
    metrics, classes, _, out = runs
    assert list(dict.fromkeys(s["class"] for s in metrics["summary"])) == [
        "edema",
        "all classes",
        "edema findings",
        "all findings",
    ]
    n = {(s["class"], s["method"]): s["n"] for s in metrics["summary"]}
    assert n[("edema", "gradcam")] == n[("all classes", "gradcam")] == 2  # one row per slice
    assert n[("edema findings", "gradcam")] == n[("all findings", "gradcam")] == 4  # two findings on each
    # the classes' rows, statistics and comparisons are those of the run without --findings
    assert [r for r in metrics["rows"] if r.get("finding") is None] == classes["rows"]
    assert [s for s in metrics["summary"] if s["class"] in ("edema", "all classes")] == classes["summary"]
    assert metrics["comparisons"] == classes["comparisons"]
    assert {c["class"] for c in metrics["curves"]} == {"edema", "edema findings"}
    assert metrics["config"]["findings"] == {"min_finding_mm3": 10.0, "max_findings": 2}
    assert "findings" not in classes["config"]
    assert "| edema findings | gradcam @ " in (out / "summary.md").read_text()
    with open(out / "metrics.csv", encoding="utf-8") as f:
        assert {row["finding"] for row in csv.DictReader(f)} == {"", "1", "2"}


def test_a_3d_volume_is_one_case_carrying_its_findings_padded(tmp_path):
    """A whole-volume model: one padded case, each finding's region on it, scored as its own target."""
    image = np.maximum(blob((10, 12, 20), (5, 6, 4), 3), blob((10, 12, 20), (5, 6, 14), 4))
    path = tmp_path / "two_blobs.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    model = threshold_model(divisible_by=8)
    (case,) = VolumePipeline(model).evaluation_cases(
        [str(path)], "v", [1], 5, 0, 8, "cpu", findings=FindingRequest(0.0)
    )
    assert tuple(case.image.shape) == (1, 16, 16, 24) and case.regions is not None and case.findings is not None
    assert tuple(case.regions.shape) == (2, 16, 16, 24) and not case.regions[:, 10:].any()  # padding is no finding
    sizes = [f.voxels for f in case.findings.findings]
    assert sizes[0] > sizes[1] and case.regions.flatten(1).sum(1).tolist() == sizes  # 1 = the larger blob
    config = EvalConfig(metrics=("deletion", "insertion"), baselines=("mask",), step=0.25, findings=FindingRequest(0.0))
    rows = evaluate(model, [case], config).rows
    voxels = {(r["method"], r.get("finding")): r["mask_voxels"] for r in rows}
    assert voxels == {
        (m, f): v for m in ("gradcam", "mask") for f, v in [(None, sum(sizes)), (1, sizes[0]), (2, sizes[1])]
    }


def fingerprint(findings: FindingRequest | None) -> dict:
    """What an evaluate cohort records of its options, with these finding limits."""
    return EvaluateTask("m", False, EvalConfig(findings=findings), 5, 10, volumes=True).fingerprint()


def test_an_evaluate_cohort_records_findings_only_when_asked():
    """Earlier evaluate cohorts (no findings field) still resume; a cohort with other finding limits does not."""
    without, limits = fingerprint(None), fingerprint(FindingRequest(5.0, 3))
    assert "findings" not in without and {k: v for k, v in limits.items() if k != "findings"} == without
    assert limits["findings"] != fingerprint(FindingRequest())["findings"]


def refused(argv: list[str], out, capsys) -> str:
    """The one line ``evaluate ARGV --out OUT --findings`` stops with (exit 2, nothing written)."""
    assert main(["evaluate", *argv, "--out", str(out), "--findings"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert not out.exists()
    return line


def test_findings_of_single_slices_are_refused(tmp_path, capsys):
    line = refused(["--model", "demo-lesions-unet2d", "--data", "demo"], tmp_path / "out", capsys)
    assert "--data demo holds single slices" in line


def test_findings_of_nnunet_models_are_refused(two_lesion_slices, tmp_path, capsys):
    folder = find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]
    line = refused(["--model", str(folder), "--data", ",".join(two_lesion_slices)], tmp_path / "out", capsys)
    assert "not available for nnU-Net models yet; leave out --findings." in line
