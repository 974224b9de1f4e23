"""``explain --faithfulness``: every explained class and layer gets Deletion/Insertion AUCs, the
random and mask baselines and a verdict with its basis; a map known to be unfaithful is told so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegGradCAMLib import seg_grad_cam
from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.pipelines import cases_from_volume
from SegGradCAMLib.evaluation.deletion_insertion import (
    ClassScorer,
    deletion_insertion,
    make_baseline,
    neighbourhood,
    rank_voxels,
    replaced_within,
    step_fractions,
    target_fractions,
)
from SegGradCAMLib.evaluation.sanity import random_heatmap
from SegGradCAMLib.options import DEFAULT_NEIGHBOURHOOD_MM
from SegGradCAMLib.evaluation.faithfulness import (
    RANDOM_ORDERINGS,
    CaseTarget,
    Target,
    calls_per_case,
    explanation_faithfulness,
    score_case,
    summarise,
    verdict,
)
from SegGradCAMLib.models import SHIPPED_MODELS, load_model
from SegGradCAMLib.models.declarations import DEFAULT_MULTICLASS_MODEL
from SegGradCAMLib.models.nnunet import find_nnunet_folders
from SegGradCAMLib.pipelines import nnunet_case


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
    ((by_map, randoms, mask_curves),) = score_case(
        model.network,
        case.image,
        replacement,
        [CaseTarget(1, mask, {"hirescam": heat, "reversed": reversed_ranking})],
        "softmax",
        "cpu",
        0.05,
        seed=0,
        scored=calls.append,
    )
    even = step_fractions(0.05)
    assert sum(calls) == calls_per_case(2, [even]) == 2 + RANDOM_ORDERINGS * 19 + (2 + 1) * 2 * 19  # progress counts
    summary = summarise(by_map, randoms, mask_curves, even, 1, "blur")
    assert summary["hirescam"]["verdict"].startswith("better than random")
    assert summary["reversed"]["verdict"] == "not better than random", summary["reversed"]


def test_progress_counts_every_call_and_classes_share_their_slices(held_out):
    """The progress of :func:`explanation_faithfulness` ends at its total, which is the calls of the
    distinct slices: less than the classes' own counts added up, as classes share slices."""
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    found = cases_from_volume(model, held_out.image, (2.0, 2.0, 2.0), None, "held-out", [1, 2, 3])
    seen = []
    scores = explanation_faithfulness(
        model,
        found,
        [Target(c) for c in (1, 2, 3)],
        ["model.1.submodule.2"],
        "hirescam",
        progress=lambda *p: seen.append(p),
    )
    done, total = seen[-1]
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and done == total
    assert 0 < total < sum(score["network_calls"] for score in scores.values())


def test_the_verdict_rule():
    random = {"deletion_mean": 0.5, "deletion_sd": 0.02, "insertion_mean": 0.5, "insertion_sd": 0.02}
    mask = {"deletion_auc": 0.2, "insertion_auc": 0.8}
    assert verdict(0.1, 0.9, random, mask) == "better than random; better than the mask"
    assert verdict(0.3, 0.7, random, mask) == "better than random; not better than the mask"
    assert verdict(0.47, 0.9, random, mask) == "mixed: better than random on Insertion, not on Deletion"
    assert verdict(0.5, 0.5, random, mask) == "not better than random"


def straightforward_aucs(network, image, replacement, target: CaseTarget, step: float, seed: int) -> dict:
    """Every curve of one target computed on its own (:func:`deletion_insertion`, a scorer of this
    target alone, ends re-scored, perturbed within its region): name -> (Deletion AUC, Insertion AUC).
    Random ordering ``k``'s Insertion restores the voxels in the reverse of its Deletion order."""
    scorer = ClassScorer(network, target.class_index, target.mask, batch_size=64)
    maps, region = len(target.maps), target.region
    end = replaced_within(image, replacement, region)

    def aucs(heat, tie_seed, kinds=("deletion", "insertion")):
        curves = deletion_insertion(scorer, image, end, heat, step, tie_seed, region=region)
        return [curves[kind].summary()["auc"] for kind in kinds]

    result = {name: aucs(heat, seed + i) for i, (name, heat) in enumerate(target.maps.items())}
    result["mask"] = aucs(target.mask.float(), seed + maps + RANDOM_ORDERINGS)
    for k in range(RANDOM_ORDERINGS):
        ranks = rank_voxels(random_heatmap(target.mask.shape, seed + k), seed + maps + k, region)
        result[f"random {k}"] = [*aucs(-ranks.float(), 0, ["deletion"]), *aucs(ranks.float(), 0, ["insertion"])]
    return result


def assert_shared_equals_straightforward(network, image, replacement, targets, step):
    """:func:`score_case` (every target from the same calls, random Insertion from the reversed
    Deletion calls, batched, through the scoring network: a channels-last copy for a 3D network)
    against :func:`straightforward_aucs` (the network itself), within 1e-5; the calls counted."""
    calls = []
    shared = score_case(network, image, replacement, targets, "softmax", "cpu", step, seed=3, scored=calls.append)
    steps = [target_fractions(step, t.mask, t.region) for t in targets]
    assert sum(calls) == calls_per_case(len(targets[0].maps), steps, targets[0].region is not None)
    for target, (maps, randoms, mask) in zip(targets, shared):
        found = {name: [c.deletion[0], c.insertion[0]] for name, c in maps.items()}
        found["mask"] = [mask.deletion[0], mask.insertion[0]]
        found.update({f"random {k}": [c.deletion[0], c.insertion[0]] for k, c in enumerate(randoms)})
        expected = straightforward_aucs(network, image, replacement, target, step, seed=3)
        assert found.keys() == expected.keys()
        for name in expected:
            assert np.allclose(found[name], expected[name], atol=1e-5, rtol=0), (target.class_index, name)
    straightforward = sum(2 + (len(targets[0].maps) + RANDOM_ORDERINGS + 1) * 2 * (len(f) - 2) for f in steps)
    print(f"{len(targets)} targets: {sum(calls)} network calls shared, {straightforward} one curve at a time")


def test_shared_calls_give_the_straightforward_aucs_on_a_demo_slice(held_out):
    """Three classes of one demo slice, two layers each."""
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    cases = cases_from_volume(model, held_out.image, (2.0, 2.0, 2.0), None, "held-out", [1, 2, 3])
    labels = [model.network(case.image[None]).argmax(1)[0] for case in cases]
    position = max(range(len(cases)), key=lambda i: min(int((labels[i] == c).sum()) for c in (1, 2, 3)))
    case, label = cases[position], labels[position]
    assert all((label == c).any() for c in (1, 2, 3))
    layers = ["model.1.submodule.1.submodule.2", "model.1.submodule.2"]
    targets = []
    for c in (1, 2, 3):
        cams = seg_grad_cam(
            model.network, case.image[None], layers, [c], "hirescam", (label == c)[None, None], upsample=True
        )
        targets.append(CaseTarget(c, label == c, {layer: cams[layer][0, 0].detach() for layer in layers}))
    with torch.no_grad():
        assert_shared_equals_straightforward(
            model.network, case.image, make_baseline(case.image, case.spacing), targets, 0.05
        )


def test_shared_calls_give_the_straightforward_aucs_on_a_3d_volume(held_out, tmp_path):
    """The shipped nnU-Net's network on a 32 x 48 x 48 block of a held-out volume as nnU-Net preprocesses
    it (the lesion inside), its predicted classes as targets, each perturbed within 10 mm of its mask
    (the 3D protocol), 20 % steps: the necrotic core is smaller than a step, so its steps are finer at
    both ends (``target_fractions``) and its random Insertion still comes from the reversed Deletion."""
    model = load_model(str(find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]))
    paths = demo_data.write_case(held_out, tmp_path / "case")
    image = nnunet_case(model, [str(paths[c]) for c in demo_data.CHANNELS], "held-out").image
    network = model.network.eval()
    with torch.no_grad():
        whole = network(image[None]).argmax(1)[0]
    centre = [int(np.mean(axis)) for axis in np.nonzero((whole > 0).numpy())]
    block = tuple(
        slice(max(0, min(c - n // 2, s - n)), max(0, min(c - n // 2, s - n)) + n)
        for c, n, s in zip(centre, (32, 48, 48), whole.shape)
    )
    image = image[(slice(None), *block)].contiguous()
    with torch.no_grad():
        label = network(image[None]).argmax(1)[0]
    classes = [c for c in (1, 2, 3) if int((label == c).sum()) >= 20]
    assert len(classes) >= 2, "the block holds at least two classes"
    targets = []
    for c in classes:
        cams = seg_grad_cam(
            network, image[None], ["decoder.stages.3"], [c], "gradcam", (label == c)[None, None], upsample=True
        )
        maps = {"decoder.stages.3": cams["decoder.stages.3"][0, 0].detach()}
        region = neighbourhood(label == c, (2.0, 2.0, 2.0), DEFAULT_NEIGHBOURHOOD_MM)
        assert region is not None and (label == c).sum() < region.sum() < region.numel()
        targets.append(CaseTarget(c, label == c, maps, region))
    firsts = [target_fractions(0.2, t.mask, t.region)[1] for t in targets]
    assert min(firsts) < 0.2, "a target smaller than a step, on finer steps at the ends"
    with torch.no_grad():
        assert_shared_equals_straightforward(network, image, make_baseline(image, (2.0, 2.0, 2.0)), targets, 0.2)
