"""Small networks with known answers, for tests of the volume and scene logic."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from SegGradCAMLib.models.spec import LoadedModel, ModelSpec


class Threshold3D(nn.Module):
    """Logits (-x, x): class 1 wherever the input is positive. ``features`` is the layer."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.features = nn.Conv3d(channels, 1, 1, bias=False)
        self.head = nn.Conv3d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0 / channels)
            self.head.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))

    def forward(self, x):
        return self.head(self.features(x))


def threshold_model(**spec) -> LoadedModel:
    defaults = dict(name="threshold", labels=["background", "blob"], normalization="none", divisible_by=1)
    defaults.update(spec)
    channels = defaults.get("in_channels", 1)
    return LoadedModel(Threshold3D(channels).eval(), ModelSpec(**defaults), ["features"])


def blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return np.where(dist < radius, 1.0 + (radius - dist) / radius, -1.0).astype(np.float32)


def centre_of_mass(weights: np.ndarray) -> np.ndarray:
    return np.array([(np.indices(weights.shape)[a] * weights).sum() / weights.sum() for a in range(3)])


def threshold_model_file(folder, **spec):
    """:class:`Threshold3D` as a model file the worker process loads: TorchScript (``--trust-model``)
    with a same-stem JSON sidecar holding ``spec`` (labels, normalisation, ...) and its layer."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = dict(
        name="threshold",
        labels=["background", "blob"],
        normalization="none",
        divisible_by=1,
        spatial_dims=3,
        min_size=[8, 8, 8],
        decoder_stages=["features"],
    )
    fields.update(spec)
    fields.setdefault("in_channels", 1)
    path = folder / f"{fields['name']}.pt"
    torch.jit.save(torch.jit.script(Threshold3D(fields["in_channels"]).eval()), str(path))
    path.with_suffix(".json").write_text(json.dumps(fields))
    return path
