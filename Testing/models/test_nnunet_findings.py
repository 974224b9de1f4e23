"""Findings, probabilities, the folds' and mirrorings' disagreement and channel reliance of an
nnU-Net folder, through nnU-Net's own pipeline.

One ``explain --findings`` run of the shipped nnU-Net (module fixture) on its held-out case 0,
stored oblique and anisotropic (2.0 x 2.2 x 2.5 mm) and cropped around its lesion to two of
nnU-Net's windows (the whole volume takes 12, and each target's |input x gradient| is one backward
pass through the whole network per window). The shipped model has one fold, so that run writes no
fold disagreement. The disagreement is checked on a two-fold folder: the shipped fold and a second
fold made from it by perturbing its weights (no second trained fold exists, and the same fold loaded
twice would agree everywhere), mirroring restricted to one axis to keep it short, against nnU-Net's
own predictor run fold by fold and mirroring by mirroring.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from test_nnunet_explain import write_oblique

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.inference_nnunet import nnunet_predictor
from SegGradCAMLib.models import SHIPPED_MODELS, load_model
from SegGradCAMLib.models.nnunet import find_nnunet_folders, read_nnunet_checkpoint

SHIPPED = find_nnunet_folders(SHIPPED_MODELS / "demo-lesions-nnunet")[0]
LABELS = ["background", "edema", "enhancing_rim", "necrotic_core"]
AROUND_LESION = (slice(16, 68), slice(44, 88), slice(34, 86))  # (Z, Y, X): two windows of nnU-Net's
ONE_WINDOW = (slice(24, 60), slice(46, 86), slice(38, 82))


def held_out(folder: Path, box) -> list[str]:
    """Held-out case 0, cut to ``box``, written oblique and anisotropic: the channels' paths."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return write_oblique(
        folder, [(name, np.ascontiguousarray(a[box])) for name, a in zip(demo_data.CHANNELS, case.image)]
    )


def explain(paths: list[str], model: Path, out: Path, *options: str) -> None:
    arguments = ["explain", *paths, "--model", str(model), "--out", str(out), "--quiet", "--no-overview", *options]
    assert main(arguments) == 0


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> list[str]:
    return held_out(tmp_path_factory.mktemp("case"), AROUND_LESION)


@pytest.fixture(scope="module")
def run(case, tmp_path_factory) -> Path:
    """``explain --findings`` (probabilities on by default) of the shipped nnU-Net, three findings kept."""
    out = tmp_path_factory.mktemp("run") / "out"
    explain(case, SHIPPED, out, "--findings", "--max-findings", "3")
    return out


def components(labels: np.ndarray, spacing_zyx, min_mm3: float = 10.0) -> list[tuple[int, np.ndarray]]:
    """Every 26-connected component of each class of ``labels`` of at least ``min_mm3``, largest first."""
    found = []
    for c in range(1, len(LABELS)):
        numbered, count = ndimage.label(labels == c, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(numbered.ravel(), minlength=count + 1)
        found += [(c, numbered == k) for k in range(1, count + 1) if sizes[k] * np.prod(spacing_zyx) >= min_mm3]
    return sorted(found, key=lambda f: -int(f[1].sum()))


def test_findings_are_the_components_of_nnunets_segmentation(run, case):
    report = json.loads((run / "findings.json").read_text())
    labels = array(run / "segmentation.nrrd")
    spacing_zyx = sitk.ReadImage(case[0]).GetSpacing()[::-1]
    expected = components(labels, spacing_zyx)
    print(f"{len(expected)} components of at least 10 mm³; kept {[f['class'] for f in report['findings']]}")
    assert report["found"] == len(expected) > 3 and report["left_out"] == len(expected) - 3
    assert len({int(mask.sum()) for _, mask in expected[:4]}) == 4  # the three kept are the three largest
    for finding, (c, mask) in zip(report["findings"], expected):
        voxels = np.argwhere(mask)
        assert (finding["class_index"], finding["class"], finding["voxels"]) == (c, LABELS[c], len(voxels))
        assert finding["bbox_ijk"] == [voxels.min(0)[::-1].tolist(), voxels.max(0)[::-1].tolist()]
        np.testing.assert_allclose(finding["centroid_ijk"], voxels.mean(0)[::-1], atol=1e-3)


def test_each_finding_has_its_own_map_on_the_inputs_grid(run, case):
    report = json.loads((run / "findings.json").read_text())
    given = sitk.ReadImage(case[0])
    for finding in report["findings"]:
        (layer,) = finding["layers"].values()
        assert layer["file"] == f"heatmap_{finding['class']}_f{finding['id']}.nrrd"
        image = sitk.ReadImage(str(run / layer["file"]))
        assert image.GetSize() == given.GetSize() and image.GetPixelID() == sitk.sitkFloat32
        assert np.allclose(image.GetSpacing(), given.GetSpacing()) and np.allclose(image.GetOrigin(), given.GetOrigin())
        assert np.allclose(image.GetDirection(), given.GetDirection())
        assert image.GetMetaData("SegGradCAM.Finding") == str(finding["id"])
        heat = sitk.GetArrayFromImage(image)
        assert layer["max_raw"] > 0 and heat.max() == pytest.approx(1.0) and heat.min() >= 0
        assert 0 <= layer["energy_inside"] <= layer["energy_inside"] + layer["energy_shell"] <= 1 + 1e-9


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIOWithReorient"])
def test_findings_reach_nnunets_preprocessed_space_and_come_back(run, case, reader, tmp_path):
    """Each finding carried to nnU-Net's grid (its reader's order, transpose, crop, 2 mm resampling)
    and exported back covers its own component (Dice >= 0.8 for the two large ones), also with the
    reader that presents the image in RAS order, the image stored far from RAS."""
    from test_nnunet_variants import shipped_with_reader

    from SegGradCAMLib.findings import FindingRequest, find_findings
    from SegGradCAMLib.nnunet_grid import preprocess, to_input_grid
    from SegGradCAMLib.nnunet_targets import finding_regions

    folder, files, segmentation = SHIPPED, case, sitk.ReadImage(str(run / "segmentation.nrrd"))
    if reader != "SimpleITKIO":  # the same image with its axes permuted and flipped

        def far(image: sitk.Image) -> sitk.Image:
            return sitk.PermuteAxes(sitk.Flip(image, [True, False, True]), [2, 0, 1])

        folder = shipped_with_reader(tmp_path / "Dataset903_Reoriented" / SHIPPED.name, reader)
        files = [str(tmp_path / Path(path).name.replace(".nrrd", ".nii.gz")) for path in case]
        for path, nifti in zip(case, files):
            sitk.WriteImage(far(sitk.ReadImage(path)), nifti)
        segmentation = far(segmentation)
    model = load_model(str(folder))
    labels = sitk.GetArrayFromImage(segmentation)
    found = find_findings(labels, [1, 2, 3], segmentation.GetSpacing()[::-1], FindingRequest(), LABELS)
    data, properties, _ = preprocess(model, files)
    regions = finding_regions(model, properties, data.shape[1:], found, labels.shape)
    back = to_input_grid(model, properties)(regions.float()) > 0.5
    dice = [2 * (b & f.full_mask(labels.shape)).sum() / (b.sum() + f.voxels) for b, f in zip(back, found.findings)]
    print(f"{reader}: Dice of the two largest findings after the round trip {dice[0]:.3f}, {dice[1]:.3f}")
    assert min(dice[:2]) >= 0.8


def test_probabilities_are_nnunets_own(run, case, tmp_path):
    """Equal to nnU-Net's ``save_probabilities`` output (same fold, no mirroring) within 5e-3; their
    argmax is segmentation.nrrd, they sum to 1 and the entropy lies in 0..1."""
    model = load_model(str(SHIPPED))
    nnunet_predictor(model, "cpu", 0.5, False).predict_from_files(
        [case],
        [str(tmp_path / "theirs")],
        save_probabilities=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    theirs = np.load(tmp_path / "theirs.npz")["probabilities"]
    ours = np.stack([array(run / f"probability_{name}.nrrd") for name in LABELS])
    print(f"probabilities: max |ours - nnU-Net's save_probabilities| {np.abs(ours - theirs).max():.2e}")
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 5e-3
    assert np.array_equal(ours.argmax(0), array(run / "segmentation.nrrd"))
    assert np.abs(ours.sum(0) - 1).max() <= 1e-5
    entropy = array(run / "entropy.nrrd")
    assert 0 <= entropy.min() and entropy.max() <= 1 and entropy.max() > 0.5
    report = json.loads((run / "findings.json").read_text())
    own = components(array(run / "segmentation.nrrd"), sitk.ReadImage(case[0]).GetSpacing()[::-1])
    for finding in report["findings"]:
        mask = next(m for c, m in own if c == finding["class_index"] and m.sum() == finding["voxels"])
        assert finding["probability_mean"] == pytest.approx(float(ours[finding["class_index"]][mask].mean()), abs=1e-5)


def test_one_fold_writes_no_fold_disagreement(run):
    report = json.loads((run / "explain.json").read_text())
    assert "folds 0," in report["nnunet"]["model"]  # the shipped folder's one fold
    assert not (run / "fold_disagreement.nrrd").exists() and not (run / "mirror_disagreement.nrrd").exists()
    assert all("fold_disagreement_mean" not in f for f in report["findings"]["findings"])


def test_reliance_is_nnunets_prediction_without_each_channel(run, case, tmp_path):
    """Each finding's occlusion per channel; for the largest finding it equals the probability lost in
    nnU-Net's own prediction of the input files with that channel replaced by its in-head mean
    (scored on the input grid, so within 0.05); the |input x gradient| shares sum to 1."""
    report = json.loads((run / "findings.json").read_text())
    assert report["channels"] == ["t1c", "flair"]
    for finding in report["findings"]:
        assert set(finding["reliance"]["occlusion"]) == {"t1c", "flair", "all"}
        assert sum(finding["reliance"]["input_gradient"].values()) == pytest.approx(1.0, abs=1e-5)
    images = [sitk.ReadImage(path) for path in case]
    inside = np.any([sitk.GetArrayFromImage(image) != 0 for image in images], axis=0)
    cases = []
    for c, name in enumerate(demo_data.CHANNELS):
        paths = []
        for k, image in enumerate(images):
            values = sitk.GetArrayFromImage(image).astype(np.float32)
            if k == c:
                values[inside] = values[inside].mean()
            occluded = sitk.GetImageFromArray(values)
            occluded.CopyInformation(image)
            paths.append(str(tmp_path / f"without_{name}_{k}.nrrd"))
            sitk.WriteImage(occluded, paths[-1])
        cases.append(paths)
    model = load_model(str(SHIPPED))
    names = [str(tmp_path / f"without_{name}") for name in demo_data.CHANNELS]
    nnunet_predictor(model, "cpu", 0.5, False).predict_from_files(
        [case, *cases],
        [str(tmp_path / "with_all"), *names],
        save_probabilities=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    largest = report["findings"][0]
    own = components(array(run / "segmentation.nrrd"), images[0].GetSpacing()[::-1])[0][1]

    def score(name: str) -> float:
        return float(np.load(f"{name}.npz")["probabilities"][largest["class_index"]][own].sum())

    base = score(str(tmp_path / "with_all"))
    for name, path in zip(demo_data.CHANNELS, names):
        lost, ours = (base - score(path)) / base, largest["reliance"]["occlusion"][name]
        print(f"finding 1 ({largest['class']}) without {name}: {ours:.3f} (from nnU-Net's files: {lost:.3f})")
        assert ours == pytest.approx(lost, abs=0.05)


class Mirrored(torch.nn.Module):
    """A network seen through one mirroring: its input flipped along ``axes``, its output flipped back."""

    def __init__(self, network: torch.nn.Module, axes: tuple[int, ...]):
        super().__init__()
        self.network, self.axes = network, axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(self.network(torch.flip(x, self.axes)), self.axes) if self.axes else self.network(x)


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory) -> Path:
    """The shipped fold and a second made from it (every weight + 10 % of its tensor's SD as noise),
    mirroring along one axis."""
    folder = tmp_path_factory.mktemp("results") / "Dataset901_DemoLesions" / SHIPPED.name
    shutil.copytree(SHIPPED, folder)
    generator = torch.Generator().manual_seed(1)
    for fold in ("fold_0", "fold_1"):
        checkpoint = read_nnunet_checkpoint(SHIPPED / "fold_0" / "checkpoint_final.pth")
        checkpoint["inference_allowed_mirroring_axes"] = (0,)
        if fold == "fold_1":
            for key, value in checkpoint["network_weights"].items():
                if value.is_floating_point() and value.ndim > 1:
                    noise = torch.randn(value.shape, generator=generator)
                    checkpoint["network_weights"][key] = value + 0.1 * value.std() * noise
        (folder / fold).mkdir(exist_ok=True)
        torch.save(checkpoint, folder / fold / "checkpoint_final.pth")
    return folder


def test_fold_and_mirror_disagreement_are_nnunets_folds_and_mirrorings(two_folds, tmp_path):
    """fold_disagreement.nrrd: the fraction of folds whose own label (nnU-Net's predictor, that fold
    alone, mirrored) differs from nnU-Net's ensemble; mirror_disagreement.nrrd: of each fold's
    mirrorings whose label differs from that fold's; both brought to the input grid as nnU-Net
    exports probabilities; each finding's means in findings.json."""
    files = held_out(tmp_path, ONE_WINDOW)
    out = tmp_path / "out"
    explain(files, two_folds, out, "--folds", "0,1", "--mirror", "--findings", "--classes", "edema")
    checks = json.loads((out / "explain.json").read_text())["checks"]
    print(f"two folds: {checks}")
    assert checks["labels_equal_to_nnunet"] >= 0.999 and checks["probabilities_max_difference_to_nnunet"] <= 5e-3
    findings = json.loads((out / "findings.json").read_text())

    from SegGradCAMLib.nnunet_grid import preprocess, to_input_grid

    model = load_model(str(two_folds), folds=["0", "1"])
    parameters = model.nnunet_parts().parameters
    label_of = model.nnunet_parts().label_manager.convert_logits_to_segmentation
    data, properties, _ = preprocess(model, files)
    x = torch.from_numpy(data)
    ensemble = label_of(nnunet_predictor(model, "cpu", 0.5, True).predict_logits_from_preprocessed_data(x).float())
    folds, mirrors = torch.zeros(ensemble.shape), torch.zeros(ensemble.shape)
    for fold in parameters:
        mirrored = nnunet_predictor(model, "cpu", 0.5, True)
        mirrored.list_of_parameters = [fold]
        own = label_of(mirrored.predict_logits_from_preprocessed_data(x).float())
        folds += own != ensemble
        single = nnunet_predictor(model, "cpu", 0.5, False)
        for axes in [(), (2,)]:
            model.network.load_state_dict(fold)
            single.network = Mirrored(model.network, axes)
            mirrors += label_of(single.predict_sliding_window_return_logits(x).float()) != own
    back = to_input_grid(model, properties)
    own = components(array(out / "segmentation.nrrd"), sitk.ReadImage(files[0]).GetSpacing()[::-1])
    for name, expected in [("fold", folds / 2), ("mirror", mirrors / 4)]:
        theirs = back(expected[None])[0]
        ours = array(out / f"{name}_disagreement.nrrd")
        differs = np.abs(ours - theirs) > 1e-3
        print(
            f"{name} disagreement: max {ours.max():.3f}, mean {ours.mean():.4f}; off nnU-Net's at {differs.mean():.2%}"
        )
        assert 0 <= ours.min() and ours.max() <= 1 and ours.max() > 0.25
        assert differs.mean() <= 0.005
        for finding in findings["findings"]:
            mask = next(m for c, m in own if c == finding["class_index"] and m.sum() == finding["voxels"])
            assert finding[f"{name}_disagreement_mean"] == pytest.approx(float(ours[mask].mean()), abs=1e-5)
