"""``explain --findings --faithfulness``: each finding's map gets its own Deletion/Insertion score and
verdict, scored against the finding's component (not the whole class), in findings.json and the summary.

The 2D demo model on two slices of a held-out demo case whose two lesions show on both: edema
there is two components, so the class's mask and each finding's differ (``two_lesion_slices``,
Testing/conftest.py).
"""

from __future__ import annotations

import json

import pytest

from SegGradCAMLib.cli import main


def test_each_finding_is_scored_against_its_own_component(two_lesion_slices, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*two_lesion_slices, "--model", "demo-lesions-unet2d", "--out", str(out), "--findings", "--faithfulness"]
    assert main(["explain", *argv, "--classes", "edema", "--max-findings", "2", "--threads", "1"]) == 0
    report = json.loads((out / "findings.json").read_text())
    assert json.loads((out / "explain.json").read_text())["findings"] == report
    (edema,) = json.loads((out / "explain.json").read_text())["classes"]
    assert [f["class"] for f in report["findings"]] == ["edema", "edema"]
    (layer,) = edema["layers"]
    whole = edema["layers"][layer]["faithfulness"]
    for finding in report["findings"]:
        score = finding["layers"][layer]["faithfulness"]
        assert score["verdict"] and score["cases"] >= 1 and "this volume only" in score["basis"]
        # the mask baseline ranks and scores the target's own mask: the component's, not the class's
        assert score["mask"]["deletion_auc"] != pytest.approx(whole["mask"]["deletion_auc"], abs=1e-3)
    first, second = (f["layers"][layer]["faithfulness"]["mask"]["deletion_auc"] for f in report["findings"])
    assert first != pytest.approx(second, abs=1e-3)
    lines = capsys.readouterr().out.splitlines()
    for name in ("edema [", "  f1 edema:", "  f2 edema:"):  # the class's line and each finding's
        (i,) = [i for i, line in enumerate(lines) if line.startswith(name)]
        assert lines[i + 1].startswith("    faithfulness: ")
