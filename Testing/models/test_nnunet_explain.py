"""Explaining an nnU-Net folder with nnU-Net's own pipeline (reader, preprocessing, windows,
Gaussian, prediction, export) around our CAM pass; plans and dataset.json of the shipped nnU-Net
(as nnU-Net's planner wrote them for the demo data), random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from captum.attr import LayerGradCam
from test_nnunet_folder import trained_like_nnunet

from SegGradCAMLib import seg_grad_cam
from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data

from SegGradCAMLib.models import SHIPPED_MODELS  # noqa: E402
from SegGradCAMLib.models.nnunet import find_nnunet_folders  # noqa: E402

SHIPPED = find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]
PLANS = json.loads((SHIPPED / "plans.json").read_text())
DATASET = json.loads((SHIPPED / "dataset.json").read_text())


@pytest.fixture(scope="module")
def nnunet_folder(tmp_path_factory) -> Path:
    folder = (
        tmp_path_factory.mktemp("results") / "Dataset901_DemoLesions" / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
    )
    trained_like_nnunet(folder, plans=PLANS, dataset=DATASET)
    return folder


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory) -> tuple[list[str], str]:
    """A held-out demo case stored oblique and anisotropic (2.0 x 2.2 x 2.5 mm), and a box region."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    region = np.zeros(case.labels.shape, dtype=np.uint8)
    region[30:40, 40:60, 40:60] = 1
    paths = write_oblique(
        tmp_path_factory.mktemp("oblique"), [*zip(demo_data.CHANNELS, case.image), ("region", region)]
    )
    return paths[:2], paths[2]


def lesion_box(labels: np.ndarray, size: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of ``size`` centred on the lesion of a case's ``labels`` ``(Z, Y, X)``, moved inside the case."""
    centre = [int(np.mean(axis)) for axis in np.nonzero(labels > 0)]
    starts = [max(0, min(c - n // 2, s - n)) for c, n, s in zip(centre, size, labels.shape)]
    return tuple(slice(start, start + n) for start, n in zip(starts, size))


def write_block(folder: Path, image: np.ndarray, box: tuple[slice, ...]) -> list[str]:
    """The ``box`` of each channel of a demo case's ``image`` ``(Cin, Z, Y, X)`` written as NRRD (2 mm)."""
    paths = []
    for name, array in zip(demo_data.CHANNELS, image):
        channel = sitk.GetImageFromArray(np.ascontiguousarray(array[box]))
        channel.SetSpacing((demo_data.SPACING_MM,) * 3)
        paths.append(str(folder / f"{name}.nrrd"))
        sitk.WriteImage(channel, paths[-1])
    return paths


def write_oblique(folder: Path, arrays) -> list[str]:
    """``(name, (Z, Y, X) array)`` pairs written as NRRD, rotated and anisotropic (2.0 x 2.2 x 2.5 mm)."""
    rotation, _ = np.linalg.qr(np.array([[0.95, -0.2, 0.1], [0.2, 0.97, 0.05], [-0.1, 0.0, 0.99]]))
    paths = []
    for name, array in arrays:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 2.2, 2.5))
        image.SetDirection(tuple(rotation.ravel()))
        image.SetOrigin((-80.0, 12.5, 30.0))
        paths.append(str(folder / f"{name}.nrrd"))
        sitk.WriteImage(image, paths[-1])
    return paths


def test_cli_explains_an_nnunet_folder_on_the_inputs_geometry(nnunet_folder, oblique_case, tmp_path):
    inputs, region = oblique_case
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                *inputs,
                "--model",
                str(nnunet_folder),
                "--region",
                region,
                "--method",
                "hirescam",
                "--layers",
                "decoder.stages.2,decoder.stages.3",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "explain.json").read_text())
    assert report["layers"] == ["decoder.stages.2", "decoder.stages.3"]
    assert [c["name"] for c in report["classes"]] == ["edema", "enhancing_rim", "necrotic_core"]
    assert report["checks"]["labels_equal_to_nnunet"] > 0.99
    assert report["nnunet"]["mirroring"] is False and "without test-time mirroring" in report["nnunet"]["note"]
    reference = sitk.ReadImage(inputs[0])
    for name in ["segmentation.nrrd", *(info["file"] for c in report["classes"] for info in c["layers"].values())]:
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == reference.GetSize()
        assert np.allclose(image.GetSpacing(), reference.GetSpacing())
        assert np.allclose(image.GetOrigin(), reference.GetOrigin())
        assert np.allclose(image.GetDirection(), reference.GetDirection())
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / report["classes"][0]["layers"]["decoder.stages.3"]["file"])))
    assert heat.max() == pytest.approx(1.0) and report["classes"][0]["layers"]["decoder.stages.3"]["max_raw"] > 0


def test_one_window_maps_equal_captum_on_nnunets_network():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = PLANS["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        2,
        4,
        deep_supervision=False,
    ).eval()
    x = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    regions = torch.zeros(1, 4, 32, 32, 32, dtype=torch.bool)
    regions[..., 8:20, 10:24, 6:18] = True
    layer = "decoder.stages.2"
    ours = seg_grad_cam(network, x, layer, [0, 1, 2, 3], regions=regions)[layer]
    module = dict(network.named_modules())[layer]
    for c in range(4):

        def score(inputs, c=c):
            return (network(inputs)[:, c] * regions[:, c]).flatten(1).sum(1)

        theirs = LayerGradCam(score, module).attribute(x, relu_attributions=True)[:, 0]
        assert theirs.abs().max() > 0
        assert float((ours[c] - theirs).abs().max() / theirs.abs().max()) <= 1e-5


@pytest.mark.parametrize(
    "problem, message",
    [
        ("no plans", "plans.json is missing"),
        ("channels", "takes 2 input volume"),
        ("file@n", "own file"),
    ],
)
def test_bad_inputs_give_one_line_and_write_nothing(nnunet_folder, oblique_case, tmp_path, capsys, problem, message):
    inputs, _ = oblique_case
    model = str(nnunet_folder)
    if problem == "no plans":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "dataset.json").write_text(json.dumps(DATASET))
        model = str(broken)
    if problem == "channels":
        inputs = inputs[:1]
    if problem == "file@n":  # the second channel as volume 1 of a 4D file
        four_d = sitk.JoinSeries([sitk.ReadImage(inputs[0]), sitk.ReadImage(inputs[1])])
        sitk.WriteImage(four_d, str(tmp_path / "both.nrrd"))
        inputs = [inputs[0], str(tmp_path / "both.nrrd") + "@1"]
    out = tmp_path / "out"
    assert main(["explain", *inputs, "--model", model, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seggradcam: error:") and message in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_folds_are_chosen_and_a_missing_fold_is_named(nnunet_folder, oblique_case, tmp_path, capsys):
    inputs, _ = oblique_case
    out = tmp_path / "out"
    assert main(["explain", *inputs, "--model", str(nnunet_folder), "--folds", "3", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fold_3" in err and "folds with checkpoint_final.pth: fold_0" in err
    assert main(["explain", *inputs, "--model", "hdbet", "--folds", "0", "--out", str(out), "--quiet"]) == 2
    assert "nnU-Net trained-model folders only" in capsys.readouterr().err


def test_a_volume_of_one_patch_gives_the_single_windows_maps(nnunet_folder, tmp_path):
    """No seams from stitching: where one window covers the volume, the pipeline's map is that
    window's map brought back by nnU-Net's export (within 1e-4 of its maximum)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    from SegGradCAMLib.inference_nnunet import explain_nnunet
    from SegGradCAMLib.nnunet_grid import preprocess, to_input_grid
    from SegGradCAMLib.models import load_model

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    model = load_model(str(nnunet_folder))
    patch = tuple(model.nnunet.configuration_manager.patch_size)
    centre = [n // 2 for n in case.labels.shape]
    box = tuple(slice(c - (p - 8) // 2, c + (p - 8) // 2) for c, p in zip(centre, patch))  # inside one patch
    inputs = write_block(tmp_path, case.image, box)
    region = np.zeros(case.labels[box].shape, dtype=bool)
    region[4:-4, 4:-4, 4:-4] = True
    layer = "decoder.stages.3"
    result = explain_nnunet(model, inputs, layers=layer, classes=[1], region=region, normalize=False)
    data, properties, region_pre = preprocess(model, inputs, region)
    assert all(n <= p for n, p in zip(data.shape[1:], patch))  # one window
    padded, revert = pad_nd_image(torch.from_numpy(data), patch, "constant", {"value": 0}, True, None)
    target, _ = pad_nd_image(torch.from_numpy(region_pre[None]).float(), patch, "constant", {"value": 0}, True, None)
    window = seg_grad_cam(model.network, padded[None], layer, [1], regions=target[None] > 0.5, upsample=True)[layer]
    expected = np.maximum(to_input_grid(model, properties)(window[:, 0][(slice(None), *revert[1:])]), 0)[0]
    assert expected.max() > 0
    np.testing.assert_allclose(result.heatmaps[layer][0], expected, atol=1e-4 * expected.max())


def test_no_seams_where_windows_meet(nnunet_folder, tmp_path):
    """A volume of >= 2 windows per axis: the map's mean gradient within 2 voxels of a window border
    is at most 1.5 x its mean elsewhere in the target region."""
    from SegGradCAMLib.inference_nnunet import explain_nnunet, nnunet_predictor
    from SegGradCAMLib.nnunet_grid import preprocess
    from SegGradCAMLib.models import load_model

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = []
    for name, array in zip(demo_data.CHANNELS, case.image):
        image = sitk.GetImageFromArray(array)  # 2 mm, identity direction: 2 windows per axis of the patch
        image.SetSpacing((2.0, 2.0, 2.0))
        paths.append(str(tmp_path / f"{name}.nrrd"))
        sitk.WriteImage(image, paths[-1])
    shape = np.asarray(case.image.shape[1:])
    region = np.zeros(tuple(shape), dtype=bool)
    region[tuple(slice(n // 5, n - n // 5) for n in shape)] = True
    model = load_model(str(nnunet_folder))
    data, properties, _ = preprocess(model, paths)
    slicers = nnunet_predictor(model, "cpu", 0.5, False)._internal_get_sliding_window_slicers(data.shape[1:])
    starts = [sorted({s[axis + 1].start for s in slicers}) for axis in range(3)]
    assert all(len(axis) >= 2 for axis in starts), starts
    layer = "decoder.stages.3"
    heat = explain_nnunet(model, paths, layers=layer, classes=[1], region=region, normalize=False).heatmaps[layer][0]
    gradient = np.sqrt(sum(g**2 for g in np.gradient(heat)))
    offset = [bounds[0] for bounds in properties["bbox_used_for_cropping"]]
    patch = model.nnunet.configuration_manager.patch_size
    border = np.zeros(heat.shape, dtype=bool)
    for axis in range(3):
        for start in starts[axis]:
            for plane in (start, start + patch[axis]):
                at = plane + offset[axis]
                index = [slice(None)] * 3
                index[axis] = slice(max(at - 2, 0), at + 2)
                border[tuple(index)] = True
    near, far = gradient[border & region].mean(), gradient[~border & region].mean()
    print(f"mean |grad map| near window borders {near:.4g}, elsewhere {far:.4g}, ratio {near / far:.3f}")
    assert far > 0 and near <= 1.5 * far
