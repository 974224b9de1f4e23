"""The shipped nnU-Net (trained here by nnU-Net's own trainer on the demo recipe) explained by our
pipeline agrees with nnU-Net's own predictor on held-out cases, mirroring off and on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_nnunet_explain import lesion_box, write_oblique

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.inference_nnunet import explain_nnunet, nnunet_predictor
from SegGradCAMLib.models import SHIPPED_MODELS, load_model
from SegGradCAMLib.models.nnunet import find_nnunet_folders

FOLDER = find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]
CARD = json.loads((SHIPPED_MODELS / "demo-lesions-nnunet" / "model_card.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_model(str(FOLDER))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Held-out case 0 of the evaluation seed, stored oblique and anisotropic (2.0 x 2.2 x 2.5 mm)."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return case, write_oblique(tmp_path_factory.mktemp("held_out"), zip(demo_data.CHANNELS, case.image))


@pytest.mark.parametrize("mirror", [False, True], ids=["no-mirroring", "mirroring"])
def test_equal_to_nnunets_own_predictor(model, held_out, mirror, tmp_path):
    case, paths = held_out
    result = explain_nnunet(model, paths, method="hirescam", mirror=mirror)
    print(f"mirror={mirror}: {result.checks}")
    assert result.checks["labels_equal_to_nnunet"] >= 0.999
    assert result.checks["probabilities_max_difference_to_nnunet"] <= 5e-3
    predictor = nnunet_predictor(model, "cpu", 0.5, mirror)
    predictor.predict_from_files(
        [paths], [str(tmp_path / "theirs")], num_processes_preprocessing=1, num_processes_segmentation_export=1
    )  # nnU-Net's path end to end, files to file
    theirs = sitk.ReadImage(str(tmp_path / f"theirs{model.nnunet.dataset_json['file_ending']}"))
    assert float((result.labels == sitk.GetArrayFromImage(theirs)).mean()) >= 0.999
    given = sitk.ReadImage(paths[0])
    assert np.allclose(theirs.GetDirection(), given.GetDirection()) and np.allclose(
        theirs.GetSpacing(), given.GetSpacing()
    )
    lesion = case.labels > 0
    ours = result.labels > 0
    dice = 2 * (ours & lesion).sum() / (ours.sum() + lesion.sum())
    print(
        f"lesion-union Dice {dice:.3f} (model card, 6 held-out cases: {CARD['held_out']['mean_dice']['lesion_union']})"
    )
    assert dice > 0.8
    for maps in result.heatmaps.values():  # every predicted class has its own non-empty map
        for c, heat in zip(result.classes, maps):
            assert np.isfinite(heat).all() and heat.max() == pytest.approx(1.0 if (result.labels == c).any() else 0.0)


def test_faithfulness_scores_an_nnunet_map_on_nnunets_own_grid(model, held_out, tmp_path):
    """``explain --faithfulness`` on an nnU-Net folder: the volume as nnU-Net preprocesses it (its
    2 mm grid, its z-score, padded to the network's stride 16), scored on the lesion's block of the
    case, one class, to keep it short."""
    from SegGradCAMLib.cli import main
    from SegGradCAMLib.pipelines import nnunet_case
    from SegGradCAMLib.evaluation.deletion_insertion import step_fractions
    from SegGradCAMLib.evaluation.faithfulness import DEFAULT_STEP_3D, calls_per_case
    from SegGradCAMLib.nnunet_grid import preprocess

    _, paths = held_out
    case = nnunet_case(model, paths, "held-out")
    data, _, _ = preprocess(model, paths)
    assert all(n % 16 == 0 and n - 16 < m <= n for n, m in zip(case.image.shape[1:], data.shape[1:]))
    assert np.array_equal(case.image[:, : data.shape[1], : data.shape[2], : data.shape[3]].numpy(), data)
    assert case.spacing == (2.0, 2.0, 2.0)
    lesion, _ = held_out
    block = lesion_box(
        lesion.labels, (40, 52, 52)
    )  # a whole-volume call a third of the full case's: 173 calls stay short
    cropped = write_oblique(tmp_path, zip(demo_data.CHANNELS, (channel[block] for channel in lesion.image)))
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *cropped,
                "--model",
                str(FOLDER),
                "--classes",
                "edema",
                "--faithfulness",
                "--out",
                str(out),
                "--no-overview",
                "--quiet",
            ]
        )
        == 0
    )
    (entry,) = json.loads((out / "explain.json").read_text())["classes"]
    score = entry["layers"]["decoder.stages.3"]["faithfulness"]
    print(
        f"nnU-Net edema: {score['verdict']} (Deletion {score['deletion_auc']:.3f}, random "
        f"{score['random']['deletion_mean']:.3f} ± {score['random']['deletion_sd']:.3f}, mask "
        f"{score['mask']['deletion_auc']:.3f}; Insertion {score['insertion_auc']:.3f})"
    )
    assert score["network_calls"] == calls_per_case(1, [step_fractions(DEFAULT_STEP_3D)], regions=True)
    assert score["cases"] == 1 and score["first_step"] == pytest.approx(DEFAULT_STEP_3D)  # the edema: even steps
    assert score["perturbation"] == "blur 20 mm within 10 mm of the target"  # the 3D protocol
    assert score["deletion_auc"] < score["random"]["deletion_mean"] - 2 * score["random"]["deletion_sd"]
    assert score["verdict"].startswith("better than random")
