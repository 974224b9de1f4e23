"""`seggradcam evaluate`: cases, rows, bootstrap statistics, files and the report in Chromium."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks import nets
from toy_models import blob, threshold_model

from SegGradCAMLib.cli import main
from SegGradCAMLib.errors import CancelledError
from SegGradCAMLib.evaluation.deletion_insertion import step_fractions
from SegGradCAMLib.evaluation.scoring import EvalConfig, evaluate
from SegGradCAMLib.evaluation.statistics import NO_LAYER, bootstrap_ci, compare, mean_curves
from SegGradCAMLib.pipelines import VolumePipeline, cases_from_volume
from SegGradCAMLib.evaluation.report import verdict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """A small 2D MONAI UNet as a JSON-spec model and a folder with two volumes."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    torch.save(nets.UNet(**UNET_ARGS).eval().state_dict(), root / "model.pt")
    spec = {
        "architecture": "UNet",
        "args": UNET_ARGS,
        "weights": "model.pt",
        "labels": ["background", "a", "b"],
        "spatial_dims": 2,
        "normalization": "zscore",
    }
    (root / "model.json").write_text(json.dumps(spec))
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = sitk.GetImageFromArray(rng.normal(size=(4, 24, 24)).astype(np.float32))
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(root / "data" / f"case{i}.nrrd"))
    (root / "list.txt").write_text("# one case per line\ndata/case1.nrrd\n")
    return {"model": root / "model.json", "data": root / "data", "list": root / "list.txt", "root": root}


def test_bootstrap_interval_brackets_the_mean():
    stat = bootstrap_ci(np.arange(100.0), resamples=1000)
    assert stat["mean"] == 49.5 and stat["n"] == 100
    assert 43 < stat["low"] < 49.5 < stat["high"] < 56
    constant = bootstrap_ci([0.3] * 5 + [float("nan")])
    assert constant["n"] == 5 and constant["low"] == pytest.approx(0.3) and constant["high"] == pytest.approx(0.3)
    # two values per case, identical within a case: resampling cases keeps the interval as wide
    # as for one value per case, resampling values would shrink it
    per_case = bootstrap_ci(np.arange(20.0), resamples=2000, seed=1)
    doubled = np.repeat(np.arange(20.0), 2)
    clustered = bootstrap_ci(doubled, resamples=2000, seed=1, cases=np.repeat(np.arange(20), 2))
    naive = bootstrap_ci(doubled, resamples=2000, seed=1)
    widths = [stat["high"] - stat["low"] for stat in (per_case, clustered, naive)]
    assert widths[1] == pytest.approx(widths[0], rel=0.15) and widths[2] < 0.85 * widths[1]


def test_paired_comparison_against_baselines():
    explanations = (("gradcam", "up", 0.2), ("random", NO_LAYER, 0.5), ("mask", NO_LAYER, 0.4))
    rows = [
        {"case": str(i), "class": "a", "method": m, "layer": layer, "deletion_auc": v + i}
        for i in range(5)
        for m, layer, v in explanations
    ]
    out = {(c["method"], c["versus"]): c for c in compare(rows, columns=("deletion_auc",), resamples=200)}
    assert out[("gradcam", "random")]["deletion_auc"]["mean"] == pytest.approx(-0.3)
    assert out[("gradcam", "random")]["deletion_auc"]["n"] == 5
    assert out[("gradcam", "mask")]["deletion_auc"]["high"] == pytest.approx(-0.2)
    assert set(out) == {("gradcam", "random"), ("gradcam", "mask")}
    assert verdict(out[("gradcam", "random")]["deletion_auc"], "lower") == "better"
    assert verdict(out[("gradcam", "random")]["deletion_auc"], "higher") == "worse"
    assert verdict({"mean": 0.0, "low": -0.1, "high": 0.1, "n": 3}, "lower") == "n.s."


def test_three_dimensional_model_gives_one_padded_case_per_volume():
    model = threshold_model(divisible_by=8)
    image = blob((10, 12, 9), (5, 6, 4), 3)[None]
    (case,) = cases_from_volume(model, image, (2.0, 1.0, 1.0), None, "blob", [1])
    assert tuple(case.image.shape) == (1, 16, 16, 16) and case.spacing == (2.0, 1.0, 1.0)
    config = EvalConfig(
        metrics=("deletion", "insertion"), methods=("gradcam",), baselines=("random",), step=0.25, bootstrap=100
    )
    result = evaluate(model, [case], config)
    assert [(r["method"], r["layer"]) for r in result.rows] == [("gradcam", "features"), ("random", NO_LAYER)]
    explained = (("gradcam", "features"), ("random", NO_LAYER))
    assert set(result.curves) == {("blob", m, layer, k) for m, layer in explained for k in ("deletion", "insertion")}
    with pytest.raises(CancelledError):
        evaluate(model, [case], config, cancel=lambda: True)


def test_mean_curves_of_3d_targets_on_different_steps_are_drawn_on_the_even_steps():
    """A 19-voxel blob (0.3 % of its 10 mm neighbourhood: 14 steps, finer at both ends) and an
    895-voxel one (7 %: 10 steps, the first and the last halved): each case's AUCs from its own steps, the
    class's mean curve on the even steps of ``--step``."""
    model = threshold_model(divisible_by=8)
    cases = [
        cases_from_volume(model, blob((24, 24, 24), (12, 12, 12), radius)[None], (1.0,) * 3, None, name, [1])[0]
        for name, radius in (("small", 1.5), ("large", 6.0))
    ]
    config = EvalConfig(metrics=("deletion", "insertion"), methods=("gradcam",), baselines=(), step=0.1, bootstrap=10)
    result = evaluate(model, cases, config)
    even = step_fractions(0.1)
    (deletion,) = [c for c in mean_curves(result) if c["curve"] == "deletion"]
    assert deletion["n"] == 2 and np.allclose(deletion["fractions"], even) and len(deletion["mean"]) == len(even)
    assert all(0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1 for row in result.rows)


def test_two_dimensional_cases_are_slices_with_a_prediction(dataset):
    from SegGradCAMLib.cohort.cases import cohort_cases
    from SegGradCAMLib.models import load_model

    model = load_model(str(dataset["model"]))
    path = str(dataset["data"] / "case1.nrrd")
    cases = VolumePipeline(model).evaluation_cases(
        [path], "case1", [1, 2], max_slices=3, seed=0, batch_size=32, device="cpu"
    )
    assert len(cases) == 3 and all(tuple(c.image.shape) == (1, 24, 24) and c.spacing == (1.0, 1.0) for c in cases)
    assert [c.name for c in VolumePipeline(model).evaluation_cases([path], "case1", [1, 2], 100, 0, 32, "cpu")] == [
        f"case1[{z}]" for z in range(4)
    ]
    # a list file, a folder, one volume, or a comma list of channel files: one case per volume
    (listed,) = cohort_cases(str(dataset["list"]))
    assert listed.inputs == (path,) and listed.id.startswith("data_case1-")
    assert [c.id for c in cohort_cases(str(dataset["data"]))][1] == listed.id  # the id of the files, however listed
    assert [c.inputs for c in cohort_cases(f"{path},{path}")] == [(path, path)]


def test_evaluate_command_writes_metrics_plots_and_report(dataset, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "--model",
            str(dataset["model"]),
            "--data",
            str(dataset["data"]),
            "--out",
            str(out),
            "--max-slices",
            "2",
            "--step",
            "0.25",
            "--road-percentages",
            "20,60",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert report["peak_memory_mb"]["resident"] > 100 and report["config"]["max_memory_gb"] is None
    with open(out / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report["rows"]) and report["cases"] == 4  # 2 slices of each of the 2 volumes
    explanations = {(r["method"], r["layer"]) for r in rows}
    assert explanations == {("gradcam", "model.1.submodule.2"), ("random", "-"), ("mask", "-"), ("gradient", "-")}
    assert len(rows) % 4 == 0 and all(float(r["deletion_auc"]) >= 0 for r in rows)
    mask_rows = [r for r in rows if r["method"] == "mask"]
    assert all(float(r["energy_inside"]) == pytest.approx(1.0) for r in mask_rows)
    assert {s["class"] for s in report["summary"]} >= {"all classes"}
    pooled = next(s for s in report["summary"] if s["class"] == "all classes" and s["method"] == "gradcam")
    assert pooled["deletion_auc"]["low"] <= pooled["deletion_auc"]["mean"] <= pooled["deletion_auc"]["high"]
    assert {c["versus"] for c in report["comparisons"]} == {"random", "mask", "gradient"}
    assert [s["step"] for s in report["randomization"]][:2] == ["head", "model.1.submodule.2"]
    assert {c["curve"] for c in report["curves"]} == {"deletion", "insertion", "road_morf", "road_lerf"}
    assert len(next(c for c in report["curves"] if c["curve"] == "deletion")["mean"]) == 5
    assert (out / "randomization.png").is_file() and list(out.glob("curves_*.png"))
    assert list((out / "gallery").glob("*.png"))
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 3 and 'src="http' not in page and "Deletion AUC" in page


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "deletion,sharpness"], "Unknown metric sharpness"),
        (["--methods", "gradcam,magic"], "Unknown method magic"),
        (["--road-percentages", "10,abc"], "--road-percentages takes numbers"),
        (["--data", "/nonexistent/folder"], "Data not found"),
        (["--data", "/nonexistent/scan.nii.gz"], "Data not found: /nonexistent/scan.nii.gz"),
        (["--data", "BINARY"], "Cannot read"),
        (["--max-memory-gb", "0"], "--max-memory-gb must be a number of GB > 0"),
        (["--max-memory-gb", "nan"], "--max-memory-gb must be a number of GB > 0"),
        (["--max-memory-gb", "1e-9"], "needs about"),  # one input's network call cannot fit: refused
    ],
)
def test_evaluate_refuses_bad_arguments_in_one_line(dataset, tmp_path, capsys, argv, message):
    base = {"--model": str(dataset["model"]), "--data": str(dataset["data"]), "--out": str(tmp_path)}
    (tmp_path / "scan.gz").write_bytes(bytes(range(256)))  # not text: no list file
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = str(tmp_path / "scan.gz") if value == "BINARY" else value
    assert main(["evaluate", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian package chromium is needed (scripts/setup.sh installs it)")
def test_report_opens_in_chromium_and_shows_its_plots(dataset, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(dataset["model"]),
                "--data",
                str(dataset["data"]),
                "--out",
                str(out),
                "--max-slices",
                "2",
                "--step",
                "0.25",
                "--metrics",
                "deletion,insertion",
                "--baselines",
                "random",
            ]
        )
        == 0
    )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            (out / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    # matplotlib's first line colour (#1f77b4) comes only from the embedded curve plots
    plot_blue = np.all(np.abs(pixels - [31, 119, 180]) <= 6, axis=-1)
    assert plot_blue.sum() > 200


def test_write_card_records_the_lowest_deletion_auc_and_keeps_an_earlier_choice(dataset, tmp_path, capsys):
    from SegGradCAMLib.models.cards import SIDECAR_CARD, resolve_method

    base = [
        "evaluate",
        "--model",
        str(dataset["model"]),
        "--data",
        str(dataset["data"] / "case0.nrrd"),
        "--metrics",
        "deletion,insertion",
        "--methods",
        "gradcam,hirescam",
        "--baselines",
        "none",
        "--step",
        "0.25",
        "--device",
        "cpu",
        "--quiet",
    ]
    card = dataset["root"] / SIDECAR_CARD
    card.unlink(missing_ok=True)
    assert main([*base, "--out", str(tmp_path / "a"), "--write-card"]) == 0
    written = json.loads(card.read_text())["default_method"]
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    means = {s["method"]: s["deletion_auc"]["mean"] for s in report["summary"] if s["class"] == "all classes"}
    assert written["method"] == min(means, key=means.get) and set(written["evidence"]) == {"gradcam", "hirescam"}
    assert resolve_method("auto", str(dataset["model"])).method == written["method"]
    assert "--step 0.25" in written["command"] and "--sigma-mm 20.0" in written["command"]  # what changes the AUCs
    assert main([*base, "--out", str(tmp_path / "b"), "--write-card"]) == 2  # never replaced without --force
    assert "--force" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["evaluate", "--model", "hdbet", "--data", "demo", "--out", str(tmp_path / "c"), "--write-card"]) == 2
    assert "registry model" in capsys.readouterr().err
    card.unlink()
