"""Cohorts with findings: ``explain --cohort LIST --findings`` writes each case's findings.json as a
single run does, the cohort's summary counts each case's findings, and the finding options are
part of the cohort's recorded options (a resumed cohort with other finding options is refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from SegGradCAMLib.cli import main
from SegGradCAMLib.cohort.cases import cohort_cases


def test_a_findings_cohort_counts_each_cases_findings_and_refuses_other_finding_options(small_case, tmp_path, capsys):
    second = tmp_path / "second"
    second.mkdir()
    copies = [str(shutil.copy(path, second / Path(path).name)) for path in small_case]
    listing = tmp_path / "cases.txt"
    listing.write_text(",".join(small_case) + "\n" + ",".join(copies) + "\n")
    out = tmp_path / "out"
    argv = ["explain", "--cohort", str(listing), "--model", "demo-lesions-unet2d", "--out", str(out), "--quiet"]
    argv += ["--no-overview", "--threads", "1", "--classes", "edema", "--findings", "--max-findings", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "cohort.json").read_text())
    ids = [case.id for case in cohort_cases(str(listing))]
    assert sorted(state["last_run"]["findings"]) == sorted(ids)
    for case_id in ids:
        findings = json.loads((out / case_id / "findings.json").read_text())
        assert state["last_run"]["findings"][case_id] == len(findings["findings"]) >= 1
        for finding in findings["findings"]:
            assert (out / case_id / next(iter(finding["layers"].values()))["file"]).is_file()
    assert f"{sum(state['last_run']['findings'].values())} findings in the 2 case(s) done now" in printed
    assert state["options"]["findings"] == "True" and state["options"]["max_findings"] == "2"

    assert main(argv) == 0  # the same options: both cases complete, nothing run
    resumed = json.loads((out / "cohort.json").read_text())["last_run"]
    assert resumed["skipped"] == 2 and "findings" not in resumed
    capsys.readouterr()
    for changed, named in (
        ([*argv[:-2], "--max-findings", "3"], "(max_findings)"),
        ([*argv, "--no-probabilities"], "(probabilities)"),
        (argv[:-3], "(findings, max_findings, min_finding_mm3, probabilities)"),
    ):
        assert main(changed) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"with other options {named}" in err[0], err
    assert all((out / case_id / "findings.json").is_file() for case_id in ids)  # the earlier outputs stay
