"""nnU-Net variants, each against nnU-Net's own ``predict_from_files``.

Region-based models (overlapping regions, sigmoid outputs, as BraTS nnU-Nets): each region's
channel is explained, the segmentation is nnU-Net's own painting, and each class is measured on
its own (overlapping) mask. The model: the shipped nnU-Net with its head turned into three region
channels (region ``i`` = label ``i`` logit minus background logit), declared as regions with a
``regions_class_order`` that is not 1, 2, 3, so a renumbering slip shows.

Readers: ``NibabelIOWithReorient`` (TotalSegmentator's) presents the image in RAS order; the
outputs must still lie on the input file's grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_nnunet_explain import write_oblique

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.inference_nnunet import nnunet_predictor
from SegGradCAMLib.models import SHIPPED_MODELS, load_model
from SegGradCAMLib.models.nnunet import find_nnunet_folders, read_nnunet_checkpoint

SHIPPED = find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]
REGIONS = {"background": 0, "lesion": [1, 2, 3], "rim_and_core": [2, 3], "necrotic_core": [3], "ignore": 4}
ORDER = [2, 5, 7]  # nnU-Net paints region i with ORDER[i]


@pytest.fixture(scope="module")
def region_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results") / "Dataset902_DemoRegions" / SHIPPED.name
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(SHIPPED / "plans.json", folder)
    dataset = json.loads((SHIPPED / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dataset, "labels": REGIONS, "regions_class_order": ORDER}))
    checkpoint = read_nnunet_checkpoint(SHIPPED / "fold_0" / "checkpoint_final.pth")
    for key, value in checkpoint["network_weights"].items():
        if key.startswith("decoder.seg_layers."):  # (4, ...) -> (3, ...): label i + 1 minus background
            checkpoint["network_weights"][key] = value[1:] - value[:1]
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> list[str]:
    image, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return write_oblique(tmp_path_factory.mktemp("case"), zip(demo_data.CHANNELS, image.image))


def shipped_with_reader(folder: Path, reader: str) -> Path:
    """The shipped model, its plans naming another image reader."""
    shutil.copytree(SHIPPED, folder)
    plans = json.loads((folder / "plans.json").read_text())
    (folder / "plans.json").write_text(json.dumps({**plans, "image_reader_writer": reader}))
    return folder


def test_a_reorienting_reader_gives_outputs_on_the_input_files_grid(case, tmp_path):
    folder = shipped_with_reader(tmp_path / "Dataset903_Reoriented" / SHIPPED.name, "NibabelIOWithReorient")
    nifti = []
    for path in case:  # the same physical image stored in another axis order, flipped: far from RAS
        nifti.append(str(tmp_path / Path(path).name.replace(".nrrd", ".nii.gz")))
        sitk.WriteImage(sitk.PermuteAxes(sitk.Flip(sitk.ReadImage(path), [True, False, True]), [2, 0, 1]), nifti[-1])
    assert nibabel.aff2axcodes(nibabel.load(nifti[0]).affine) == ("I", "L", "A")
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *nifti,
                "--model",
                str(folder),
                "--method",
                "hirescam",
                "--classes",
                "edema",
                "--out",
                str(out),
                "--quiet",
                "--no-overview",
            ]
        )
        == 0
    )
    predictor = nnunet_predictor(load_model(str(folder)), "cpu", 0.5, False)
    predictor.predict_from_files(
        [nifti], [str(tmp_path / "theirs")], num_processes_preprocessing=1, num_processes_segmentation_export=1
    )
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "theirs.nii.gz")))
    ours = sitk.ReadImage(str(out / "segmentation.nrrd"))
    assert (sitk.GetArrayFromImage(ours) > 0).any() and float((sitk.GetArrayFromImage(ours) == theirs).mean()) >= 0.999
    given = sitk.ReadImage(nifti[0])
    assert ours.GetSize() == given.GetSize() and np.allclose(ours.GetDirection(), given.GetDirection(), atol=1e-5)
    report = json.loads((out / "explain.json").read_text())
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / report["classes"][0]["layers"]["decoder.stages.3"]["file"])))
    edema = sitk.GetArrayFromImage(ours) == 1
    assert heat[edema].mean() > 2 * heat[~edema].mean()  # the map lies on the class, not mirrored away from it


def test_nibabel_readers_need_nifti_inputs(case, tmp_path, capsys):
    folder = shipped_with_reader(tmp_path / "Dataset904_Nibabel" / SHIPPED.name, "NibabelIO")
    assert main(["explain", *case, "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "give NIfTI files" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_region_channels_are_explained_on_their_own_masks(region_folder, case, tmp_path):
    model = load_model(str(region_folder))
    assert model.spec.labels == ["background", "lesion", "rim_and_core", "necrotic_core"]
    assert model.spec.output_activation == "sigmoid"
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *case,
                "--model",
                str(region_folder),
                "--method",
                "hirescam",
                "--out",
                str(out),
                "--quiet",
                "--no-overview",
            ]
        )
        == 0
    )
    report = json.loads((out / "explain.json").read_text())
    assert report["checks"]["labels_equal_to_nnunet"] >= 0.999
    assert report["checks"]["probabilities_max_difference_to_nnunet"] <= 5e-3

    predictor = nnunet_predictor(model, "cpu", 0.5, False)
    predictor.predict_from_files(
        [case],
        [str(tmp_path / "theirs")],
        save_probabilities=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    painted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "theirs.nii.gz")))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    assert set(np.unique(painted)) <= {0, *ORDER} and set(np.unique(ours)) <= {0, 1, 2, 3}
    renumbered = np.select([painted == value for value in ORDER], [1, 2, 3], 0)
    assert float((ours == renumbered).mean()) >= 0.999  # nnU-Net's painting, named by class index
    probabilities = np.load(tmp_path / "theirs.npz")["probabilities"]  # (3, Z, Y, X), nnU-Net's export
    masks = probabilities > 0.5
    assert (masks.sum(0) >= 2).any(), "the test needs overlapping regions"
    for i, entry in enumerate(report["classes"]):
        assert entry["name"] == model.spec.labels[i + 1]
        assert abs(entry["voxels"] - int(masks[i].sum())) <= 0.001 * masks[i].size  # its own region, not its paint
        layer = next(iter(entry["layers"].values()))
        heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / layer["file"])))
        assert heat.max() == pytest.approx(1.0 if masks[i].any() else 0.0)


def test_region_models_are_not_scored_and_say_so(region_folder, case, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", *case, "--model", str(region_folder), "--faithfulness", "--out", str(out)]) == 2
    assert "overlapping regions" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "--model", str(region_folder), "--data", ",".join(case), "--out", str(out)]) == 2
    assert "overlapping regions" in capsys.readouterr().err and not out.exists()
