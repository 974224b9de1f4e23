"""The typed contract between the front ends and the engine: options that validate themselves,
round-trip through the worker's command line, and reports that are explain.json/metrics.json."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from SegGradCAMLib.dicom_options import DicomOptions
from SegGradCAMLib.finding_options import FindingOptions
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.options import EngineOptions, EvaluateOptions, ExplainOptions
from SegGradCAMLib.reports import EVALUATION_SCHEMA, EXPLAIN_SCHEMA, EvaluationReport, ExplainReport

# A value other than the default for every field of ExplainOptions (inputs and cohort apart).
EXPLAIN_VALUES = {
    "model": "demo-lesions-unet2d",
    "layers": ("model.1.submodule.2", "model.2"),
    "method": "layercam",
    "classes": ("edema", "3"),
    "region": Path("region.nrrd"),
    "device": "cuda:1",
    "trust_model": True,
    "overview": False,
    "heatmap_dtype": "uint8",
    "amp": True,
    "threads": 3,
    "max_voxels": 1000,
    "step_size": 0.25,
    "folds": ("0", "all"),
    "checkpoint": "checkpoint_best.pth",
    "mirror": True,
}
# The explain.json keys of the release before the typed report (explain.json gains only "schema").
EXPLAIN_JSON_KEYS = [
    "tool",
    "model",
    "method",
    "method_requested",
    "method_card",
    "layers",
    "normalisation",
    "heatmap_dtype",
    "region",
    "classes",
    "inputs",
    "input_geometry",
    "device",
    "amp",
    "torch",
    "threads",
    "peak_memory_mb",
    "timings",
    "class_groups",
    "segmentation",
]


def test_every_explain_option_round_trips_through_the_command_line():
    assert set(EXPLAIN_VALUES) | {"inputs", "cohort", "out", "faithfulness", "engine", "dicom", "findings"} == {
        f.name for f in dataclasses.fields(ExplainOptions)
    }, "a new option needs a value in EXPLAIN_VALUES"
    options = ExplainOptions(inputs=("t1c.nrrd", "flair nrrd.nrrd"), out=Path("out dir"), **EXPLAIN_VALUES)
    argv = options.to_argv()
    assert ExplainOptions.from_argv(argv) == options
    for field in EXPLAIN_VALUES:  # each non-default option is on the command line
        flag = ExplainOptions.__dataclass_fields__[field].metadata["flag"]
        assert flag in argv, flag
    cohort = ExplainOptions(
        cohort="cases.txt", out="o", faithfulness=True, engine=EngineOptions("ray", "auto", None, 2.0, 0.5, 0)
    )
    assert ExplainOptions.from_argv(cohort.to_argv()) == cohort


def test_finding_options_round_trip_and_refuse_what_does_not_fit():
    findings = FindingOptions(
        findings=True,
        min_finding_mm3=2.5,
        max_findings=3,
        point="12.5, -30, 8",
        point_radius_mm=4,
        no_probabilities=True,
        no_reliance=True,
    )
    assert findings.point == (12.5, -30.0, 8.0) and findings.wanted and not findings.writes_probabilities
    options = ExplainOptions(inputs=["t1c.nrrd"], out="o", findings=findings)
    argv = options.to_argv()
    assert ExplainOptions.from_argv(argv) == options
    assert "--point" in argv and "--no-probabilities" in argv and "--max-findings" in argv and "--no-reliance" in argv
    assert not findings.measures_reliance and FindingOptions(findings=True).measures_reliance
    assert FindingOptions(point=(1, 2, 3)).writes_probabilities  # --point implies findings, with probabilities
    assert FindingOptions(probabilities=True).writes_probabilities and not FindingOptions().writes_probabilities
    refused = {
        "--point takes R,A,S": [{"point": "1,2"}, {"point": "1,2,x"}, {"point": "1,nan,3"}],
        "--max-findings": [{"max_findings": 0}],
        "--min-finding-mm3": [{"min_finding_mm3": -1}],
        "--point-radius-mm": [{"point_radius_mm": float("inf")}],
        "not both": [{"probabilities": True, "no_probabilities": True}],
    }
    for message, cases in refused.items():
        for fields in cases:
            with pytest.raises(SegGradCAMError, match=message):
                FindingOptions(**fields)
    with pytest.raises(SegGradCAMError, match="leave out --region"):
        ExplainOptions(inputs=["t1c.nrrd"], out="o", region="r.nrrd", findings=FindingOptions(findings=True))


def test_dicom_options_round_trip_and_refuse_what_does_not_fit(monkeypatch):
    server = DicomOptions(
        dicomweb="http://127.0.0.1:8042/dicom-web", study="1.2.3", series="1.2.3.4, 1.2.3.5", store=True
    )
    assert server.series == ("1.2.3.4", "1.2.3.5") and server.writes_objects
    options = ExplainOptions(out="o", dicom=server)
    argv = options.to_argv()
    assert ExplainOptions.from_argv(argv) == options
    assert argv == [
        "--out",
        "o",
        "--dicomweb",
        server.dicomweb,
        "--study",
        "1.2.3",
        "--series",
        "1.2.3.4,1.2.3.5",
        "--store",
    ]
    files = ExplainOptions(inputs=["series/"], out="o", dicom=DicomOptions(write_dicom=True))
    assert ExplainOptions.from_argv(files.to_argv()) == files and "--dicom" in files.to_argv()
    monkeypatch.setenv("DICOMWEB_TOKEN", "from-the-environment")
    assert server.token() == "from-the-environment"
    assert DicomOptions(dicomweb=server.dicomweb, study="1.2", dicomweb_token="given").token() == "given"
    refused = {
        "needs --dicomweb URL": [{"study": "1.2"}, {"store": True}, {"series": "1.2"}],
        "needs --study": [{"dicomweb": "http://pacs/dicom-web"}],
        "not a DICOM UID": [{"dicomweb": "http://pacs/dicom-web", "study": "1.2.x"}],
        "http:// or https://": [{"dicomweb": "pacs:8042", "study": "1.2"}],
    }
    for message, cases in refused.items():
        for fields in cases:
            with pytest.raises(SegGradCAMError, match=message):
                DicomOptions(**fields)
    with pytest.raises(SegGradCAMError, match="not both"):
        ExplainOptions(inputs=["a.nrrd"], out="o", dicom=server)
    with pytest.raises(SegGradCAMError, match="not both"):
        ExplainOptions(cohort="cases.txt", out="o", dicom=server)


def test_values_that_look_like_options_round_trip():
    options = ExplainOptions(inputs=("a.nrrd",), out="-out", checkpoint="-ckpt.pth", region="-r.nrrd")
    assert ExplainOptions.from_argv(options.to_argv()) == options


def test_the_python_api_takes_one_path_paths_and_single_words():
    one = ExplainOptions(inputs="a.nrrd", out="o", layers=["auto"], classes=["all"])
    assert one.inputs == ("a.nrrd",) and one.layers == "auto" and one.classes == "all"
    assert ExplainOptions(inputs=Path("a.nrrd"), out="o") == one == ExplainOptions(inputs=[Path("a.nrrd")], out="o")
    evaluation = EvaluateOptions(model=Path("m.json"), data=Path("cases"), out="e", baselines=())
    assert evaluation.model == "m.json" and evaluation.data == "cases" and "--baselines" in evaluation.to_argv()
    assert EvaluateOptions.from_argv(evaluation.to_argv()) == evaluation  # an empty list is written "none"


def test_defaults_are_left_out_and_values_normalised():
    options = ExplainOptions(inputs=["a.nrrd"], out="o", classes="1, edema", layers="auto", folds="0,1")
    assert options.to_argv() == ["a.nrrd", "--out", "o", "--classes", "1,edema", "--folds", "0,1"]
    assert options.classes == ("1", "edema") and options.folds == ("0", "1") and options.out == Path("o")
    assert options == ExplainOptions(inputs=("a.nrrd",), out=Path("o"), classes=[1, "edema"], folds=["0", "1"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.method = "gradcam"  # type: ignore[misc]


def test_evaluate_options_round_trip():
    options = EvaluateOptions(
        model="m.json",
        data="cases.txt",
        out="e",
        metrics="deletion,insertion",
        methods=("auto", "hirescam"),
        baselines="none",
        layers="a,b",
        classes="2",
        max_slices=7,
        step=0.05,
        baseline="mean",
        sigma_mm=12.0,
        road_percentages="20,40",
        seed=3,
        batch_size=4,
        device="cpu",
        threads=1,
        max_voxels=10**6,
        trust_model=True,
        write_card=True,
        force=True,
        findings=True,
        min_finding_mm3=5.0,
        max_findings=3,
        engine=EngineOptions("ray", workers=2),
    )
    assert options.baselines == () and options.road_fractions == (0.2, 0.4)
    assert EvaluateOptions.from_argv(options.to_argv()) == options


@pytest.mark.parametrize(
    "values, message",
    [
        ({"inputs": ()}, "Give the input volume(s)"),
        ({"cohort": "l.txt"}, "not both"),
        ({"method": "cam"}, "Unknown method 'cam'"),
        ({"heatmap_dtype": "float16"}, "--heatmap-dtype"),
        ({"device": "gpu"}, "Unknown device 'gpu'"),
        ({"threads": -1}, "--threads must be 0"),
        ({"step_size": 0.0}, "--step-size must be in (0, 1]"),
        ({"max_voxels": 0}, "--max-voxels must be >= 1"),
        ({"faithfulness": True, "region": "r.nrrd"}, "leave out --region"),
    ],
)
def test_explain_options_refuse_bad_values_when_built(values, message):
    base = {"inputs": ("a.nrrd",), "out": "o"}
    with pytest.raises(SegGradCAMError) as error:
        ExplainOptions(**{**base, **values})
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SegGradCAMError, match="sizes the local Ray instance"):
        EngineOptions("ray", workers=2, ray_address="auto")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "demo", "--out", "e", "--metrics", "bogus"], "Unknown metric bogus"),
        (["--data", "demo", "--out", "e", "--step", "0"], "--step a fraction"),
        (["--data", "cases", "--out", "e", "--findings", "--max-findings", "0"], "--max-findings must be >= 1"),
        (["--data", "demo", "--out", "e", "--max-voxels", "-5"], "--max-voxels must be >= 1"),
        (["--data", "demo", "--out", "e", "--road-percentages", "0,200"], "strictly between 0 and 100"),
        (["--data", "demo", "--out", "e", "--methods", "none", "--baselines", "none"], "Nothing to evaluate"),
        (["--data", "demo", "--out", "e", "--engine", "local", "--workers", "2"], "need --engine ray"),
        (["--data", "demo"], "required: --out"),
    ],
)
def test_evaluate_options_from_argv_give_one_line(argv, message):
    with pytest.raises(SegGradCAMError) as error:
        EvaluateOptions.from_argv(argv)
    assert message in str(error.value)


def test_the_command_line_offers_every_declared_option():
    """The explain/evaluate parsers are built from the options' declarations: the help names each flag."""
    for command, options in (("explain", ExplainOptions), ("evaluate", EvaluateOptions)):
        shown = subprocess.run(
            [sys.executable, "-m", "SegGradCAMLib", command, "--help"], capture_output=True, text=True, timeout=120
        ).stdout
        for f in [*dataclasses.fields(options), *dataclasses.fields(EngineOptions)]:
            flag = f.metadata.get("flag")
            assert flag is None or flag in shown or (not flag and f.name.upper()[:5] in shown), (command, f.name)


@pytest.fixture(scope="module")
def demo_run(small_case, tmp_path_factory):
    """The library entry on the demo model: explain(ExplainOptions) -> ExplainReport."""
    from SegGradCAMLib import explain

    out = tmp_path_factory.mktemp("contract") / "out"
    return explain(ExplainOptions(inputs=tuple(small_case), model="demo-lesions-unet2d", out=out, threads=1)), out


def test_explain_report_is_explain_json(demo_run):
    report, out = demo_run
    written = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert list(written) == ["schema", *EXPLAIN_JSON_KEYS] and written["schema"] == EXPLAIN_SCHEMA
    assert written == report.to_json()
    assert ExplainReport.from_json(written) == report == ExplainReport.read(out)
    assert [c.name for c in report.classes] == ["edema", "enhancing_rim", "necrotic_core"]
    for entry, layer, info in report.heatmaps():
        assert (out / info.file).is_file() and info.faithfulness is None and layer in report.layers
        assert "faithfulness" not in written["classes"][entry.index - 1]["layers"][layer]


def test_reports_refuse_files_of_another_schema_or_shape(demo_run, tmp_path):
    report, _ = demo_run
    with pytest.raises(SegGradCAMError, match="schema 2"):
        ExplainReport.from_json({**report.to_json(), "schema": 2})
    without_model = {k: v for k, v in report.to_json().items() if k != "model"}
    with pytest.raises(SegGradCAMError, match="lacks model"):
        ExplainReport.from_json(without_model)
    older = {k: v for k, v in report.to_json().items() if k != "schema"}  # an explain.json of the last release
    assert ExplainReport.from_json(older) == report
    (tmp_path / "explain.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SegGradCAMError, match="not a SegGradCAM report"):
        ExplainReport.read(tmp_path)


def test_evaluation_report_round_trips(tmp_path):
    report = EvaluationReport(
        model={"name": "m"},
        data="demo",
        cases=2,
        device="cpu",
        config={"methods": ["gradcam"]},
        summary=[],
        comparisons=[],
        randomization=[],
        curves=[],
        rows=[{"class": "edema"}, {"class": "rim"}, {"class": "edema"}],
        randomization_steps=[],
        timings={"evaluate_s": 1.0},
    )
    report.write(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert written["schema"] == EVALUATION_SCHEMA and "cohort" not in written
    assert EvaluationReport.read(tmp_path) == report and report.explained_classes == ["edema", "rim"]
