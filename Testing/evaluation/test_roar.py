"""ROAR/KAR: pixel replacement, Grad-CAM rankings, and a reduced run of ``seggradcam roar``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.cli import main
from SegGradCAMLib.models import DEFAULT_MULTICLASS_MODEL, load_model
from SegGradCAMLib.evaluation.roar import cam_ranking, degrade, mean_dice_over_seeds


def test_degrade_replaces_exactly_the_top_or_the_rest() -> None:
    images = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    ranking = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4)
    fill = np.array([-1.0, -2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    removed = degrade(images, ranking, 0.25, "roar", fill, rng)
    kept = degrade(images, ranking, 0.25, "kar", fill, rng)
    top = (ranking.reshape(2, -1) >= ranking.reshape(2, -1)[:, [12]]).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(removed, np.where(top, fill.reshape(1, 2, 1, 1), images))
    np.testing.assert_array_equal(kept, np.where(top, images, fill.reshape(1, 2, 1, 1)))


def test_degrade_breaks_ties_at_random_but_counts_exactly() -> None:
    images = np.ones((3, 1, 10, 10), dtype=np.float32)
    out = degrade(images, np.zeros((3, 10, 10), dtype=np.float32), 0.3, "roar", np.zeros(1), np.random.default_rng(1))
    assert ((out == 0).sum(axis=(1, 2, 3)) == 30).all()
    assert not np.array_equal(out[0], out[1])


def test_cam_ranking_points_at_the_lesions() -> None:
    network = load_model(DEFAULT_MULTICLASS_MODEL).network
    data = demo_data.evaluation_set(10)
    ranking = cam_ranking(network, data.images)
    assert ranking.shape == data.labels.shape and ranking.min() >= 0 and ranking.max() <= 1 + 1e-6
    lesion = data.labels > 0
    assert ranking[lesion].mean() > 3 * ranking[~lesion].mean()
    assert not any(p.grad is not None for p in network.parameters())


def test_summary_compares_gradcam_with_random() -> None:
    dice = {"edema": 0.5, "lesion_union": 0.6}
    runs = [
        {"explainer": e, "mode": "roar", "fraction": 0.5, "seed": s, "dice": {k: v - d for k, v in dice.items()}}
        for e, d in (("gradcam", 0.4), ("random", 0.1))
        for s in (0, 1)
    ]
    summary = mean_dice_over_seeds({"baseline": [{"seed": 0, "dice": dice}], "runs": runs})
    assert summary["roar"]["gradcam"]["0.5"]["lesion_union"] == pytest.approx(0.2)
    assert summary["gradcam_minus_random_lesion_union"]["roar"]["0.5"] == pytest.approx(-0.3)


def test_roar_command_reduced(tmp_path) -> None:
    """The CI version: one fraction, one epoch, a few slices; ROAR and KAR, Grad-CAM and random."""
    threads = torch.get_num_threads()
    code = main(
        [
            "roar",
            "--out",
            str(tmp_path),
            "--fractions",
            "50",
            "--epochs",
            "1",
            "--train-slices",
            "48",
            "--test-slices",
            "16",
        ]
    )
    torch.set_num_threads(threads)
    assert code == 0
    report = json.loads((tmp_path / "roar.json").read_text())
    assert (tmp_path / "roar.png").stat().st_size > 10_000
    assert len(report["baseline"]) == 1 and len(report["runs"]) == 4
    assert {(r["mode"], r["explainer"]) for r in report["runs"]} == {
        (m, e) for m in ("roar", "kar") for e in ("gradcam", "random")
    }
    for run in report["runs"] + report["baseline"]:
        assert set(run["dice"]) == {"edema", "enhancing_rim", "necrotic_core", "lesion_union"}
        assert all(0 <= v <= 1 for v in run["dice"].values())
    assert set(report["summary"]["gradcam_minus_random_lesion_union"]) == {"roar", "kar"}


@pytest.mark.parametrize(
    "options, message",
    [
        (["--fractions", "0"], "strictly between 0 and 100"),
        (["--fractions", "ten"], "comma-separated numbers"),
        (["--explainers", "saliency"], "choose from gradcam, gradcam++, hirescam, layercam, random"),
        (["--modes", "roar,remove"], "choose from roar, kar"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--model", "hdbet"], "ROAR runs on the demo recipe"),
    ],
)
def test_roar_command_bad_options(tmp_path, capsys, options, message) -> None:
    assert main(["roar", "--out", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seggradcam: error:") and message in err and len(err.strip().splitlines()) == 1
