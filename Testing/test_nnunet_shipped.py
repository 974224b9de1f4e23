"""The shipped nnU-Net (trained here by nnU-Net's own trainer on the demo recipe) explained by our
pipeline agrees with nnU-Net's own predictor on held-out cases, mirroring off and on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_nnunet_explain import write_oblique

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
    predictor.predict_from_files([paths], [str(tmp_path / "theirs")], num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)  # nnU-Net's path end to end, files to file
    theirs = sitk.ReadImage(str(tmp_path / f"theirs{model.nnunet.dataset_json['file_ending']}"))
    assert float((result.labels == sitk.GetArrayFromImage(theirs)).mean()) >= 0.999
    given = sitk.ReadImage(paths[0])
    assert np.allclose(theirs.GetDirection(), given.GetDirection()) and np.allclose(theirs.GetSpacing(), given.GetSpacing())
    lesion = case.labels > 0
    ours = result.labels > 0
    dice = 2 * (ours & lesion).sum() / (ours.sum() + lesion.sum())
    print(f"lesion-union Dice {dice:.3f} (model card, 6 held-out cases: {CARD['held_out']['mean_dice']['lesion_union']})")
    assert dice > 0.8
    for maps in result.heatmaps.values():  # every predicted class has its own non-empty map
        for c, heat in zip(result.classes, maps):
            assert np.isfinite(heat).all() and heat.max() == pytest.approx(1.0 if (result.labels == c).any() else 0.0)
