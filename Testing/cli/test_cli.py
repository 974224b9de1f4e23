"""``seggradcam`` command line: HD-BET on real MRI end to end, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import COLIN27, COLIN27_BRAIN
from dicom_series import write_dicom_series

from SegGradCAMLib.cli import main


def write(array: np.ndarray, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


def head_like(shape=(40, 48, 40)) -> np.ndarray:
    rng = np.random.default_rng(0)
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum((g - n / 2) ** 2 for g, n in zip(grid, shape)))
    return (100.0 * (dist < min(shape) / 3) + rng.random(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def colin27_run(tmp_path_factory):
    """One real run: HD-BET fold 0 on Colin27 (1 mm, 181x217x181), default layer, with its findings."""
    out = tmp_path_factory.mktemp("colin27")
    assert main(["explain", str(COLIN27), "--model", "hdbet", "--out", str(out), "--device", "cpu", "--findings"]) == 0
    return out


def test_colin27_files_and_report(colin27_run):
    names = sorted(p.name for p in colin27_run.iterdir())
    assert names == [
        "entropy.nrrd",
        "explain.json",
        "findings.csv",
        "findings.json",
        "heatmap_brain.nrrd",
        "heatmap_brain_f1.nrrd",
        "overview.png",
        "probability_background.nrrd",
        "probability_brain.nrrd",
        "segmentation.nrrd",
    ]
    report = json.loads((colin27_run / "explain.json").read_text())
    assert report["model"]["name"] == "hdbet" and len(report["model"]["sha256"]) == 64
    assert report["model"]["subnormal_weights_zeroed"] > 7_000_000  # HD-BET fold 0 holds 7.39 million
    assert report["layers"] == ["end_conv_2_bn"] and report["method"] == "gradcam"  # auto: HD-BET's card
    assert report["method_requested"] == "auto" and report["method_card"]["file"].endswith("cards/hdbet.json")
    assert "lowest Deletion AUC" in report["method_card"]["basis"]
    (brain,) = report["classes"]
    assert brain["name"] == "brain" and brain["voxels"] > 1_000_000
    assert report["input_geometry"]["size"] == [181, 217, 181]
    assert report["timings"]["explain_s"] > 0
    assert (colin27_run / "overview.png").stat().st_size > 20_000


def test_colin27_has_one_finding_the_brain_and_no_channel_reliance(colin27_run):
    report = json.loads((colin27_run / "explain.json").read_text())
    (brain,) = report["classes"]
    (finding,) = report["findings"]["findings"]
    assert finding["class"] == "brain" and finding["voxels"] == brain["voxels"] and report["findings"]["left_out"] == 0
    assert "reliance" not in finding and "reliance" not in brain  # one input channel
    assert finding["layers"]["end_conv_2_bn"]["energy_inside"] > 0.9 and 0.5 < finding["probability_mean"] <= 1
    finding_map = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "heatmap_brain_f1.nrrd")))
    class_map = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "heatmap_brain.nrrd")))
    assert np.abs(finding_map - class_map).max() < 1e-5  # one component: the same target as the class
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "segmentation.nrrd")))
    brain_p = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "probability_brain.nrrd")))
    background_p = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "probability_background.nrrd")))
    assert np.abs(brain_p + background_p - 1).max() < 1e-4
    differ = (brain_p > background_p) != (labels == 1)
    print(f"argmax of the probabilities equals segmentation.nrrd on {1 - differ.mean():.4%} of voxels")
    assert differ.mean() < 0.005
    # Labels come back from HD-BET's 1.5 mm grid by nearest neighbour, probabilities linearly: they
    # may differ only at a boundary, within one model voxel (2 input voxels) of the other label.
    from scipy import ndimage

    seam = ndimage.binary_dilation(labels == 1, iterations=2) & ndimage.binary_dilation(labels == 0, iterations=2)
    assert not (differ & ~seam).any()


def test_colin27_brain_mask_dice(colin27_run):
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(colin27_run / "segmentation.nrrd"))) == 1
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN27_BRAIN))) > 0
    dice = 2 * (segmentation & reference).sum() / (segmentation.sum() + reference.sum())
    print(f"HD-BET fold 0 Colin27 brain Dice vs ch2bet: {dice:.4f}")
    assert dice >= 0.90


@pytest.mark.parametrize("name", ["segmentation.nrrd", "heatmap_brain.nrrd"])
def test_outputs_have_the_input_geometry(colin27_run, name):
    source = sitk.ReadImage(str(COLIN27))
    output = sitk.ReadImage(str(colin27_run / name))
    assert output.GetSize() == source.GetSize()
    assert np.allclose(output.GetSpacing(), source.GetSpacing(), atol=1e-6)
    assert np.allclose(output.GetOrigin(), source.GetOrigin(), atol=1e-6)
    assert np.allclose(output.GetDirection(), source.GetDirection(), atol=1e-6)
    if name.startswith("heatmap"):
        assert output.GetPixelID() == sitk.sitkFloat32
        heat = sitk.GetArrayFromImage(output)
        assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)


def test_colin27_heatmap_energy_is_on_the_brain(colin27_run):
    (brain,) = json.loads((colin27_run / "explain.json").read_text())["classes"]
    info = brain["layers"]["end_conv_2_bn"]
    print(
        f"energy inside brain mask {info['energy_inside']:.4f}, "
        f"within 3 mm {info['energy_inside'] + info['energy_shell']:.4f}"
    )
    assert info["energy_inside"] + info["energy_shell"] > 0.9


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "hdbet" in out and "deepbet" in out


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("seggradcam: error: ")
    return err


@pytest.fixture()
def good_volume(tmp_path):
    return write(head_like(), tmp_path / "head.nrrd", spacing=(1.5, 1.5, 1.5))


def test_missing_file(capsys, tmp_path):
    assert "Input not found" in run_error(capsys, ["explain", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path)])


def test_unreadable_file(capsys, tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    assert "Cannot read" in run_error(capsys, ["explain", str(path), "--out", str(tmp_path / "o")])


def test_4d_input_says_how_to_pick_a_volume(capsys, tmp_path):
    volumes = [sitk.GetImageFromArray(head_like((20, 20, 20))) for _ in range(3)]
    path = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))
    err = run_error(capsys, ["explain", str(path), "--out", str(tmp_path / "o")])
    assert "3 volumes" in err and "@N" in err
    err = run_error(capsys, ["explain", f"{path}@5", "--out", str(tmp_path / "o")])
    assert "only 3 volumes" in err


def test_2d_input_says_a_volume_is_needed(capsys, tmp_path):
    path = write(
        np.random.default_rng(0).random((64, 64)).astype(np.float32), tmp_path / "slice.nrrd", (1.0, 1.0), (0.0, 0.0)
    )
    assert "2D image" in run_error(capsys, ["explain", path, "--out", str(tmp_path / "o")])


def test_nan_voxels(capsys, tmp_path):
    array = head_like()
    array[3, 4, 5] = np.nan
    path = write(array, tmp_path / "nan.nrrd")
    assert "NaN/Inf" in run_error(capsys, ["explain", path, "--out", str(tmp_path / "o")])


def test_constant_volume(capsys, tmp_path):
    path = write(np.full((40, 40, 40), 7, dtype=np.float32), tmp_path / "constant.nrrd")
    assert "constant" in run_error(capsys, ["explain", path, "--out", str(tmp_path / "o")])


def test_wrong_number_of_volumes(capsys, tmp_path, good_volume):
    err = run_error(capsys, ["explain", good_volume, good_volume, "--out", str(tmp_path / "o")])
    assert "takes 1 input volume" in err and "got 2" in err


def test_channels_of_different_geometry(capsys, tmp_path, good_volume):
    other = write(head_like(), tmp_path / "shifted.nrrd", spacing=(1.5, 1.5, 1.5), origin=(5.0, 0.0, 0.0))
    assert "same grid" in run_error(capsys, ["explain", good_volume, other, "--out", str(tmp_path / "o")])


def test_volume_smaller_than_the_network_minimum(capsys, tmp_path):
    path = write(head_like((12, 12, 12)), tmp_path / "tiny.nrrd")
    assert "too small" in run_error(capsys, ["explain", path, "--out", str(tmp_path / "o")])


def test_unknown_class_lists_valid_ones(capsys, tmp_path, good_volume):
    err = run_error(capsys, ["explain", good_volume, "--classes", "tumour", "--out", str(tmp_path / "o")])
    assert "tumour" in err and "background, brain" in err


def test_unknown_layer_lists_valid_ones(capsys, tmp_path, good_volume):
    err = run_error(capsys, ["explain", good_volume, "--layers", "decoder9", "--out", str(tmp_path / "o")])
    assert "decoder9" in err and "loc1, loc2, loc3, end_conv_2_bn" in err


def test_unknown_model(capsys, tmp_path, good_volume):
    assert "Unknown model" in run_error(
        capsys, ["explain", good_volume, "--model", "nnunet42", "--out", str(tmp_path / "o")]
    )


def test_cuda_without_cuda(capsys, tmp_path, good_volume):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot happen here")
    assert "CUDA is not available" in run_error(
        capsys, ["explain", good_volume, "--device", "cuda", "--out", str(tmp_path / "o")]
    )


def test_torchscript_model_needs_trust(capsys, tmp_path, good_volume):
    err = run_error(capsys, ["explain", good_volume, "--model", "deepbet", "--out", str(tmp_path / "o")])
    assert "--trust-model" in err


def test_region_on_another_grid(capsys, tmp_path, good_volume):
    region = write(np.ones((10, 10, 10), dtype=np.uint8), tmp_path / "region.nrrd")
    assert "not on the input's grid" in run_error(
        capsys, ["explain", good_volume, "--region", region, "--out", str(tmp_path / "o")]
    )


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "SegGradCAMLib.cli", "explain", str(tmp_path / "missing.nrrd"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("seggradcam: error: Input not found") and "Traceback" not in proc.stderr


def spec_with_weights(tmp_path, weights: bytes | None = None, payload=None) -> str:
    """A JSON spec for a small 3D MONAI UNet whose weights file is ``weights`` bytes or ``payload``."""
    import torch

    path = tmp_path / "weights.pt"
    if weights is not None:
        path.write_bytes(weights)
    else:
        torch.save(payload, path)
    spec = {
        "architecture": "UNet",
        "weights": path.name,
        "labels": ["background", "lesion"],
        "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]},
    }
    (tmp_path / "model.json").write_text(json.dumps(spec))
    return str(tmp_path / "model.json")


def test_corrupt_checkpoint(capsys, tmp_path, good_volume):
    model = spec_with_weights(tmp_path, weights=bytes(range(256)) * 8)
    assert "corrupt" in run_error(capsys, ["explain", good_volume, "--model", model, "--out", str(tmp_path / "o")])


class _WritesAFile:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_carrying_checkpoint_is_refused_not_run(capsys, tmp_path, good_volume):
    marker = tmp_path / "was_executed"
    model = spec_with_weights(tmp_path, payload={"weight": _WritesAFile(marker)})
    err = run_error(capsys, ["explain", good_volume, "--model", model, "--out", str(tmp_path / "o")])
    assert "Refused" in err and "never executed" in err
    assert not marker.exists()


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    from SegGradCAMLib.volumes.files import read_volume

    array = head_like((20, 32, 28))
    write_dicom_series(array, tmp_path / "series")
    volume = read_volume(str(tmp_path / "series"))
    assert volume.array.shape == (20, 32, 28)
    assert np.allclose(volume.spacing, (1.5, 1.5, 2.0), atol=1e-4)
    assert np.allclose(volume.origin, (-30.0, -40.0, 10.0), atol=1e-4)
    assert np.allclose(volume.array, array.astype(np.int16))


def test_folder_without_dicom(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no DICOM series" in run_error(capsys, ["explain", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
