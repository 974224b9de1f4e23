"""``explain --findings --faithfulness``: each finding's map gets its own Deletion/Insertion score and
verdict, scored against the finding's component (not the whole class), in findings.json and the summary.

The 2D demo model on two slices of a held-out demo case whose two lesions show on both: edema
there is two components, so the class's mask and each finding's differ.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data

EDEMA = 1


@pytest.fixture(scope="module")
def two_lesion_slices(tmp_path_factory) -> list[str]:
    """The two consecutive slices of the first held-out demo case with two lesions where its edema
    is two components of at least 200 voxels each, one file per channel."""
    for case, _ in itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), 12):
        if ndimage.label(case.labels > 0, np.ones((3, 3, 3), bool))[1] == 2:
            break
    else:
        pytest.fail("no held-out demo case with two lesions among the first 12")

    def second_largest(z: int) -> int:
        components, _ = ndimage.label(case.labels[z : z + 2] == EDEMA, np.ones((3, 3, 3), bool))
        return sorted([0, 0, *np.bincount(components.ravel())[1:]])[-2]

    z = max(range(case.labels.shape[0] - 1), key=second_largest)
    assert second_largest(z) >= 200
    folder = tmp_path_factory.mktemp("two_lesions")
    paths = demo_data.write_case(case, folder)
    cut = []
    for channel in demo_data.CHANNELS:
        path = folder / f"{channel}_cut.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(paths[channel]))[:, :, z : z + 2], str(path))
        cut.append(str(path))
    return cut


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
