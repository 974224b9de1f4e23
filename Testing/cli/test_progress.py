"""Progress of long commands: the JSON events of the design, the bar on a terminal, and
what ``explain`` streams to disk (uint8 heatmaps with their raw maximum)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL

EVENT_KEYS = {"event", "stage", "done", "total", "elapsed_s", "eta_s"}
STAGES = {"startup", "read", "preprocess", "windows", "slices", "backward", "faithfulness", "write"}


def seggradcam(*args: str) -> subprocess.CompletedProcess:
    """The real command line in its own process (as the Slicer worker runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "SegGradCAMLib.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_json_progress_events_of_a_one_batch_one_class_run(small_case, tmp_path):
    out = tmp_path / "out"
    proc = seggradcam(
        "explain",
        *small_case,
        "--model",
        DEFAULT_MULTICLASS_MODEL,
        "--classes",
        "edema",
        "--out",
        str(out),
        "--progress",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds nothing but events
    *progress, final = events
    assert final["event"] == "done" and final["out"] == str(out) and final["seconds"] > 0
    assert all(e["event"] == "progress" and set(e) == EVENT_KEYS for e in progress)
    assert {e["stage"] for e in progress} <= STAGES
    stages = [e["stage"] for e in progress]
    assert stages[:2] == ["startup", "read"] and stages[-1] == "write"
    assert (
        stages.index("read") < stages.index("startup", 1) < stages.index("preprocess")
    )  # the model loads after reading
    assert stages.index("preprocess") < stages.index("slices") < stages.index("backward") < stages.index("write")
    for stage in set(stages):
        steps = [(e["done"], e["total"]) for e in progress if e["stage"] == stage]
        assert [d for d, _ in steps] == sorted(d for d, _ in steps), stage
        assert steps[-1][0] == steps[-1][1], stage  # every stage ends complete
        assert all(e["eta_s"] is None for e in progress if e["stage"] == stage and e["done"] == 0)
    assert [(e["done"], e["total"]) for e in progress if e["stage"] == "backward"] == [(1, 1)]
    assert [(e["done"], e["total"]) for e in progress if e["stage"] == "slices"] == [(0, 1), (1, 1)]
    assert "edema" in proc.stderr and "s in all" in proc.stderr  # the summary moved to stderr


def test_json_progress_of_a_failed_run_ends_with_the_error_event(tmp_path):
    proc = seggradcam("explain", str(tmp_path / "missing.nrrd"), "--out", str(tmp_path / "o"), "--progress", "json")
    assert proc.returncode == 2
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "error" and "missing.nrrd" in events[-1]["message"]
    assert [e["event"] for e in events].count("error") == 1 and "done" not in [e["event"] for e in events]
    assert proc.stderr.strip().splitlines()[-1].startswith("seggradcam: error:")


def test_progress_bar_on_a_terminal_and_stage_lines_otherwise(small_case, tmp_path):
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "SegGradCAMLib.cli",
                "explain",
                *small_case,
                "--model",
                DEFAULT_MULTICLASS_MODEL,
                "--out",
                str(tmp_path / "tty"),
                "--no-overview",
            ],
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=300,
        )
        os.close(secondary)
        secondary = None
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
        if secondary is not None:
            os.close(secondary)
    assert proc.returncode == 0
    terminal = seen.decode(errors="replace")
    assert "explain slices: 100%|" in terminal and "explain backward: 100%|" in terminal and " s left" in terminal
    piped = seggradcam(
        "explain", *small_case, "--model", DEFAULT_MULTICLASS_MODEL, "--out", str(tmp_path / "pipe"), "--no-overview"
    )
    assert "%|" not in piped.stderr and "explain: slices 1/1 in" in piped.stderr
    quiet = seggradcam(
        "explain",
        *small_case,
        "--model",
        DEFAULT_MULTICLASS_MODEL,
        "--out",
        str(tmp_path / "quiet"),
        "--no-overview",
        "--quiet",
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_uint8_heatmaps_keep_the_raw_maximum(small_case, tmp_path):
    runs = {}
    for dtype in ("float32", "uint8"):
        out = tmp_path / dtype
        assert (
            seggradcam(
                "explain",
                *small_case,
                "--model",
                DEFAULT_MULTICLASS_MODEL,
                "--method",
                "hirescam",
                "--out",
                str(out),
                "--heatmap-dtype",
                dtype,
                "--quiet",
            ).returncode
            == 0
        )
        runs[dtype] = (out, json.loads((out / "explain.json").read_text()))
    (out8, report8), (out32, report32) = runs["uint8"], runs["float32"]
    assert report8["heatmap_dtype"] == "uint8" and report8["threads"] >= 1
    assert report8["peak_memory_mb"]["resident"] > 100 and report8["model"]["subnormal_weights_zeroed"] >= 0
    for entry8, entry32 in zip(report8["classes"], report32["classes"]):
        ((layer, info8),) = entry8["layers"].items()
        info32 = entry32["layers"][layer]
        image = sitk.ReadImage(str(out8 / info8["file"]))
        assert image.GetPixelID() == sitk.sitkUInt8
        assert float(image.GetMetaData("SegGradCAM.RawMax")) == pytest.approx(info8["max_raw"], rel=1e-6)
        assert info8["max_raw"] == pytest.approx(info32["max_raw"], rel=1e-6)
        scale = float(image.GetMetaData("SegGradCAM.ValueScale"))
        stored = sitk.GetArrayFromImage(image) * scale
        full = sitk.GetArrayFromImage(sitk.ReadImage(str(out32 / info32["file"])))
        assert np.abs(stored - full).max() <= 0.5 / 255 + 1e-6
        assert (out8 / info8["file"]).stat().st_size < (out32 / info32["file"]).stat().st_size


def test_streamed_heatmaps_are_handed_over_and_not_kept(tmp_path):
    from SegGradCAMLib.inference import explain_volume
    from SegGradCAMLib.models import load_model

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    spacing = (demo_data.SPACING_MM,) * 3
    kept = explain_volume(model, case.image, spacing, np.eye(3), method="hirescam")
    handed = []
    streamed = explain_volume(
        model,
        case.image,
        spacing,
        np.eye(3),
        method="hirescam",
        on_heatmap=lambda heatmap, labels: handed.append((heatmap, labels.copy())),
    )
    assert streamed.heatmaps == {} and len(handed) == 3
    for heatmap, labels in handed:
        np.testing.assert_array_equal(labels, kept.labels)
        np.testing.assert_array_equal(heatmap.array, kept.heatmaps[heatmap.layer][heatmap.position])
        assert heatmap.raw_max == kept.raw_max[heatmap.layer][heatmap.position]
        assert heatmap.class_index == kept.classes[heatmap.position]


def test_out_of_gpu_memory_ends_with_one_line_and_exit_2(small_case, tmp_path, monkeypatch, capsys):
    """CUDA's out-of-memory error (raised here by a stand-in for the engine: no GPU in CI)."""
    import torch

    import SegGradCAMLib.inference
    from SegGradCAMLib.cli import main

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nmore"
        )

    monkeypatch.setattr(SegGradCAMLib.inference, "explain_volume", out_of_memory)
    assert main(["explain", *small_case, "--model", DEFAULT_MULTICLASS_MODEL, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seggradcam: error:")
    assert "out of GPU memory" in err[0] and "try --device cpu or fewer layers" in err[0]
