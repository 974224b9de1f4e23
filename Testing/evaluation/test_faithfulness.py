"""``explain --faithfulness``: every explained class and layer gets Deletion/Insertion AUCs, the
random and mask baselines and a verdict with its basis; a map known to be unfaithful is told so."""

from __future__ import annotations

import json

import pytest

from SegGradCAMLib import seg_grad_cam
from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.pipelines import cases_from_volume
from SegGradCAMLib.evaluation.deletion_insertion import make_baseline
from SegGradCAMLib.evaluation.faithfulness import RANDOM_ORDERINGS, calls_per_case, score_class, summarise, verdict
from SegGradCAMLib.models import load_model
from SegGradCAMLib.models.declarations import DEFAULT_MULTICLASS_MODEL


@pytest.fixture(scope="module")
def held_out():
    """Held-out case 0 of the demo recipe's evaluation seed."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return case


def test_explain_scores_every_class_and_hirescam_beats_random(held_out, tmp_path, capsys):
    paths = demo_data.write_case(held_out, tmp_path / "case")
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *(str(paths[c]) for c in demo_data.CHANNELS),
                "--model",
                DEFAULT_MULTICLASS_MODEL,
                "--faithfulness",
                "--out",
                str(out),
                "--progress",
                "auto",
            ]
        )
        == 0
    )
    report = json.loads((out / "explain.json").read_text())
    assert report["method"] == "hirescam"
    for entry in report["classes"]:
        score = entry["layers"]["model.1.submodule.2"]["faithfulness"]
        assert score["random"]["n"] == RANDOM_ORDERINGS and score["steps"] == 20
        assert set(score["mask"]) == {"deletion_auc", "insertion_auc"}
        assert score["verdict"].startswith("better than random"), (entry["name"], score)
        assert "this volume only" in score["basis"] and "5 random orderings" in score["basis"]
    assert "faithfulness: better than random" in capsys.readouterr().out
    timings = report["timings"]
    print(
        f"faithfulness {timings['faithfulness_s']:.1f} s = {timings['faithfulness_s'] / timings['explain_s']:.1f} x "
        f"the explain time ({timings['explain_s']:.1f} s)"
    )


def test_a_reversed_ranking_is_not_better_than_random(held_out):
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    cases = cases_from_volume(model, held_out.image, (2.0, 2.0, 2.0), None, "held-out", [1])
    case = cases[len(cases) // 2]
    x = case.image[None]
    maps = seg_grad_cam(model.network, x, "model.1.submodule.2", [1], "hirescam", upsample=True)
    heat = maps["model.1.submodule.2"][0, 0]
    mask = maps.logits[0].argmax(0) == 1
    reversed_ranking = heat.max() - heat  # least relevant first; the ReLU's zeros tie, broken at random
    replacement = make_baseline(case.image, case.spacing)
    calls = []
    by_map, randoms, mask_curves = score_class(
        model.network,
        case.image,
        replacement,
        mask,
        1,
        {"hirescam": heat, "reversed": reversed_ranking},
        "softmax",
        "cpu",
        0.05,
        seed=0,
        scored=calls.append,
    )
    assert sum(calls) == calls_per_case(2, 0.05) == 2 + (2 + RANDOM_ORDERINGS + 1) * 2 * 19  # progress counts them
    summary = summarise(by_map, randoms, mask_curves, 0.05, 1, "blur")
    assert summary["hirescam"]["verdict"].startswith("better than random")
    assert summary["reversed"]["verdict"] == "not better than random", summary["reversed"]


def test_the_verdict_rule():
    random = {"deletion_mean": 0.5, "deletion_sd": 0.02, "insertion_mean": 0.5, "insertion_sd": 0.02}
    mask = {"deletion_auc": 0.2, "insertion_auc": 0.8}
    assert verdict(0.1, 0.9, random, mask) == "better than random; better than the mask"
    assert verdict(0.3, 0.7, random, mask) == "better than random; not better than the mask"
    assert verdict(0.47, 0.9, random, mask) == "mixed: better than random on Insertion, not on Deletion"
    assert verdict(0.5, 0.5, random, mask) == "not better than random"
