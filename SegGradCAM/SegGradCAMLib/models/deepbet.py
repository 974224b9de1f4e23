"""deepbet (Fisch et al. 2024) brain extraction LinkNet3d from the ``deepbet`` wheel.

deepbet ships its network as TorchScript (``data/models/model.pt``), which is
executable code: it is loaded only when the user trusts it. ScriptModules refuse
forward hooks and the scripted forward ends in a softmax, so :class:`DeepbetLogits`
recomposes the forward in Python from the scripted children, each wrapped in a
small Python module that takes hooks, and returns the logits.

deepbet's own pipeline (``deepbet.bet.BrainExtraction.run_model``) on a volume
in closest-canonical RAS orientation, array order ``(R, A, S)``:

1. percentiles 0.5 / 99.5 of the whole volume (resized to 128^3, nearest);
2. a second network (``bbox_model.pt``) finds the brain's bounding box, which is
   enlarged by 10 % on each side and cropped out;
3. the crop is resized (nearest) to 256^3, whatever its physical size
   (about 0.7-0.8 mm voxels for an adult head);
4. ``normalize``: percentiles to 0..1 and clipped, then standardised over the
   crop and mapped to mean 0.449, std 0.226;
5. the brain probability is resized back and thresholded at 0.5, then the
   largest connected component is kept and holes are filled.

The spec maps step 4 to ``normalization="percentile"``; the standardisation that
follows is done by :class:`DeepbetLogits` itself (over its whole input). The
array order ``(R, A, S)`` is the spec's ``orientation``. Steps 1-3 (bounding box
and fixed 256^3 grid) have no ModelSpec equivalent: the spec asks for a 1 mm
isotropic grid and the whole padded volume is run at once (on Colin27 this gives
Dice 0.90 against its reference brain mask; deepbet's own pipeline gives 0.94).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import SegGradCAMError
from .declarations import DEEPBET
from .spec import LoadedModel, ModelSpec, declare_stages, sha256_of

DECODER_LAYERS = list(DEEPBET.layers)

# Array order (Z, Y, X) = (R, A, S), as deepbet sees nibabel's closest-canonical
# RAS volumes: k -> Right, j -> Anterior, i -> Superior (LPS cosines, columns i, j, k).
DEEPBET_DIRECTION = ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0))
DEEPBET_MEAN = 0.449
DEEPBET_STD = 0.226
_ENCODER = ("init", "down0", "down1", "down2", "down3")


class ScriptedStage(nn.Module):
    """Python wrapper of one scripted child, so that forward hooks can be registered on it."""

    def __init__(self, block: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, activation: nn.Module | None = None) -> torch.Tensor:
        """``(B, K, *S)`` -> ``(B, K', *S')``; ``activation`` is the shared ReLU most children take."""
        if activation is None:
            return self.block(x)
        return self.block(activation, x)


class DeepbetLogits(nn.Module):
    """deepbet's LinkNet3d returning logits ``(B, 2, Z, Y, X)`` instead of probabilities.

    Input ``(B, 1, Z, Y, X)``: one volume per sample, already percentile-normalised
    to 0..1; each sample is standardised to deepbet's mean and std first. Spatial
    sizes must be multiples of 32. The stages are the scripted model's children
    (``init``, ``down0``..``down3``, ``up0``..``up3``, ``tp_conv1``, ``conv``,
    ``tp_conv2``), wired as in its scripted forward with additive skips.
    """

    decoder_stages = list(DECODER_LAYERS)

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        for name in (*_ENCODER, *DECODER_LAYERS, "tp_conv2"):
            self.add_module(name, ScriptedStage(getattr(scripted, name)))

    @staticmethod
    def standardize(x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``(x - mean) / std`` mapped to mean 0.449, std 0.226; ``(B, 1, *S)``."""
        dims = tuple(range(1, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp_min(torch.finfo(x.dtype).eps)
        return DEEPBET_STD * (x - mean) / std + DEEPBET_MEAN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` -> logits ``(B, 2, Z, Y, X)`` (background, brain)."""
        relu = getattr(self.conv.block, "2")
        x0 = self.init(self.standardize(x), relu)
        x1 = self.down0(x0, relu)
        x2 = self.down1(x1, relu)
        x3 = self.down2(x2, relu)
        y = self.up0(self.down3(x3, relu), relu) + x3
        y = self.up1(y, relu) + x2
        y = self.up2(y, relu) + x1
        y = self.up3(y, relu) + x0
        return self.tp_conv2(self.conv(self.tp_conv1(y, relu)))


def deepbet_model_path() -> Path:
    """Path of deepbet's TorchScript LinkNet3d inside the installed wheel."""
    try:
        from deepbet.utils import DATA_PATH
    except ImportError as error:
        raise SegGradCAMError("The deepbet model needs the 'deepbet' package: pip install deepbet") from error
    path = Path(DATA_PATH) / "models" / "model.pt"
    if not path.is_file() or path.stat().st_size < 1_000_000:
        raise SegGradCAMError(f"deepbet's model file is missing from the deepbet package ({path}).")
    return path


def load_deepbet(trust: bool) -> LoadedModel:
    """deepbet's LinkNet3d as a logits network with its spec; needs ``trust=True``."""
    if not trust:
        raise SegGradCAMError(
            "deepbet ships as TorchScript, which is executable code: pass --trust-model (CLI) or trust=True to load it."
        )
    path = deepbet_model_path()
    network = DeepbetLogits(torch.jit.load(str(path), map_location="cpu"))
    network.eval()
    spec = ModelSpec(
        name="deepbet",
        labels=list(DEEPBET.labels),
        in_channels=DEEPBET.in_channels,
        spatial_dims=3,
        output_activation="softmax",
        normalization="percentile",
        normalization_range=(0.5, 99.5),
        spacing=(1.0, 1.0, 1.0),
        orientation=DEEPBET_DIRECTION,
        divisible_by=32,
        min_size=(64, 64, 64),
        roi_size=None,
        sha256=sha256_of(path),
        source=str(path),
        trusted_code=True,
        description="deepbet LinkNet3d brain extraction (TorchScript, deepbet wheel)",
    )
    return LoadedModel(network, spec, declare_stages(network, DECODER_LAYERS))
