"""Subnormal weights are set to zero when a model loads, in every model format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks import nets

from SegGradCAMLib.models import load_model

ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}
PLANTED_PER_TENSOR = 3


def subnormal_count(network: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*network.parameters(), *network.buffers()] if t.is_floating_point()}
    return sum(int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum()) for t in tensors.values())


def planted_network() -> tuple[torch.nn.Module, int]:
    """A small 3D UNet (batch norm: running statistics are buffers) with subnormals in
    every floating-point parameter and buffer of at least 3 values."""
    torch.manual_seed(0)
    network = nets.UNet(**ARGS).eval()
    planted = 0
    with torch.no_grad():
        for tensor in [*network.parameters(), *network.buffers()]:
            if tensor.is_floating_point() and tensor.numel() >= PLANTED_PER_TENSOR:
                flat = tensor.view(-1)
                flat[:PLANTED_PER_TENSOR] = torch.tensor([1e-40, -3e-42, 5e-45])
                planted += PLANTED_PER_TENSOR
    assert subnormal_count(network) == planted
    return network, planted


def save_json_spec(folder: Path, network: torch.nn.Module) -> Path:
    torch.save(network.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(
        json.dumps({"architecture": "UNet", "args": ARGS, "weights": "model.pt", "labels": ["background", "organ"]})
    )
    return folder / "model.json"


def save_bundle(folder: Path, network: torch.nn.Module) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "UNet", **ARGS}}))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def save_torchscript(folder: Path, network: torch.nn.Module) -> Path:
    torch.jit.save(torch.jit.script(network), folder / "model.ts")
    (folder / "model.json").write_text(json.dumps({"labels": ["background", "organ"], "spatial_dims": 3}))
    return folder / "model.ts"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("save", [save_json_spec, save_bundle, save_torchscript])
def test_subnormals_are_zeroed_on_load_with_the_same_outputs(tmp_path: Path, save) -> None:
    network, planted = planted_network()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(x)
    loaded = load_model(str(save(tmp_path, network)), trust=True)
    assert loaded.subnormals_zeroed == planted
    assert subnormal_count(loaded.network) == 0
    with torch.no_grad():
        assert float((loaded.network(x) - expected).abs().max()) <= 1e-6
