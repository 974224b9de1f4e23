"""deepbet's scripted LinkNet3d recomposed as a hookable logits network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("deepbet")

from SegGradCAMLib.cam import seg_grad_cam  # noqa: E402
from SegGradCAMLib.errors import SegGradCAMError  # noqa: E402
from SegGradCAMLib.models.deepbet import (  # noqa: E402
    DECODER_LAYERS,
    DeepbetLogits,
    ScriptedStage,
    deepbet_model_path,
    load_deepbet,
)
from SegGradCAMLib.models.spec import LoadedModel, sha256_of  # noqa: E402

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
needs_colin = pytest.mark.skipif(not (COLIN.is_file() and COLIN_BRAIN.is_file()), reason="needs Debian mricron-data")


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_deepbet(trust=True)


def _ellipsoid(size: int = 64) -> torch.Tensor:
    """A bright two-level ellipsoid on a dark background, ``(1, 1, size, size, size)`` in 0..1."""
    axis = torch.linspace(-1, 1, size)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = (z / 0.6) ** 2 + (y / 0.75) ** 2 + (x / 0.6) ** 2
    return ((r < 1).float() * 0.6 + (r < 0.5).float() * 0.3)[None, None]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_softmax_of_logits_equals_scripted_forward(model: LoadedModel) -> None:
    scripted = torch.jit.load(str(deepbet_model_path()), map_location="cpu").eval()
    x = torch.rand(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = scripted(DeepbetLogits.standardize(x))
        probabilities = torch.softmax(model.network(x), dim=1)
    assert probabilities.shape == (1, 2, 64, 64, 64)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)


def test_percentile_then_standardize_is_deepbets_normalize() -> None:
    from deepbet.utils import normalize

    raw = 100 * torch.randn(1, 1, 32, 48, 40, generator=torch.Generator().manual_seed(1))
    low, high = raw.quantile(0.005), raw.quantile(0.995)
    percentile = ((raw - low) / (high - low)).clamp(0, 1)
    torch.testing.assert_close(DeepbetLogits.standardize(percentile), normalize(raw, low, high), atol=1e-6, rtol=0)


def test_spec(model: LoadedModel) -> None:
    spec = model.spec
    assert spec.labels == ["background", "brain"]
    assert (spec.in_channels, spec.spatial_dims, spec.output_activation) == (1, 3, "softmax")
    assert spec.normalization == "percentile" and spec.normalization_range == (0.5, 99.5)
    assert spec.trusted_code and spec.sha256 == sha256_of(deepbet_model_path())
    assert model.layers == DECODER_LAYERS and model.layers[-1] == "conv"
    assert not model.network.training


def test_loading_without_trust_is_refused() -> None:
    with pytest.raises(SegGradCAMError, match="trust"):
        load_deepbet(trust=False)


def test_seg_grad_cam_on_all_decoder_layers(model: LoadedModel) -> None:
    maps = seg_grad_cam(model.network, _ellipsoid(), model.layers, [0, 1])
    sizes = {"up0": 4, "up1": 8, "up2": 16, "up3": 16, "tp_conv1": 32, "conv": 32}
    assert list(maps) == model.layers
    for name, size in sizes.items():
        assert maps[name].shape == (2, 1, size, size, size)
        assert torch.isfinite(maps[name]).all()
    assert maps["conv"].amax() > 0
    stages = [m for m in model.network.modules() if isinstance(m, ScriptedStage)]
    assert len(stages) == 12
    assert all(not stage._forward_hooks for stage in stages)


@needs_colin
def test_colin27_in_deepbets_own_pipeline(model: LoadedModel) -> None:
    """deepbet's bounding box, 256^3 resize and normalisation, with the recomposed network."""
    import nibabel as nib
    from deepbet import BrainExtraction

    class Probabilities(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(x), dim=1)

    volume = nib.as_closest_canonical(nib.load(COLIN)).get_fdata(dtype=np.float32)
    reference = nib.as_closest_canonical(nib.load(COLIN_BRAIN)).get_fdata() > 0
    bet = BrainExtraction(no_gpu=True)
    bet.model = Probabilities(model.network)
    mask = bet.run_model(volume) > 0.5
    assert _dice(mask, reference) > 0.9


@needs_colin
def test_spec_orientation_is_deepbets_array_order(model: LoadedModel) -> None:
    """An array in the spec's orientation is the closest-canonical RAS array deepbet sees."""
    import nibabel as nib
    import SimpleITK as sitk

    image = sitk.DICOMOrient(sitk.ReadImage(str(COLIN)), "SAR")
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), model.spec.orientation)
    canonical = nib.as_closest_canonical(nib.load(COLIN)).get_fdata(dtype=np.float32)
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), canonical)


@needs_colin
def test_colin27_through_explain_volume(model: LoadedModel) -> None:
    """The whole pipeline as the spec describes it: reorient, 1 mm, percentile, pad to 32."""
    import SimpleITK as sitk

    from SegGradCAMLib.inference import explain_volume

    image = sitk.ReadImage(str(COLIN))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN_BRAIN))) > 0
    volume = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    direction = np.reshape(image.GetDirection(), (3, 3))
    result = explain_volume(model, volume, image.GetSpacing()[::-1], direction)
    assert result.layers == ["conv"]
    assert result.heatmaps["conv"].shape == (1, *reference.shape)
    assert _dice(result.labels == 1, reference) > 0.85
