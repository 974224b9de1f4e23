"""Model files by path: JSON spec + state_dict, TorchScript, MONAI bundle, refusals."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from monai.networks import nets
from torch import nn

from SegGradCAMLib.cam import seg_grad_cam
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.layers import decoder_layers
from SegGradCAMLib.models import load_model, load_model_path
from SegGradCAMLib.models.json_spec import ARCHITECTURES
from SegGradCAMLib.models.torchscript_replay import ScriptedModule
from SegGradCAMLib.models.spec import sha256_of

UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
BASIC_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return nets.UNet(**UNET_ARGS).eval()


def _write_spec(folder: Path, network: torch.nn.Module, architecture: str, args: dict, **fields) -> Path:
    torch.save(network.state_dict(), folder / "model.pt")
    spec = {"architecture": architecture, "args": args, "weights": "model.pt", **fields}
    path = folder / "model.json"
    path.write_text(json.dumps(spec))
    return path


def _same_output(loaded: torch.nn.Module, original: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(loaded(x), original(x))


# --- JSON spec + state_dict ----------------------------------------------------------


def test_json_spec_2d_unet_reproduces_network_and_spec(tmp_path: Path) -> None:
    original = _unet()
    path = _write_spec(
        tmp_path,
        original,
        "UNet",
        UNET_ARGS,
        labels=["background", "liver", "tumour"],
        normalization="percentile",
        normalization_range=[1, 99],
        spacing=[0.8, 0.8],
        description="test net",
    )
    loaded = load_model(str(path))
    assert _same_output(loaded.network, original, torch.randn(2, 1, 32, 32))
    assert not loaded.network.training
    spec = loaded.spec
    assert spec.name == "model" and spec.labels == ["background", "liver", "tumour"]
    assert (spec.in_channels, spec.spatial_dims, spec.divisible_by) == (1, 2, 4)
    assert spec.normalization == "percentile" and spec.normalization_range == (1, 99)
    assert spec.spacing == (0.8, 0.8) and spec.description == "test net"
    assert spec.sha256 == sha256_of(tmp_path / "model.pt") and spec.source == str((tmp_path / "model.pt").resolve())
    assert not spec.trusted_code
    assert loaded.layers == decoder_layers(original)


def test_json_spec_3d_basic_unet_defaults_labels_from_out_channels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.BasicUNet(**BASIC_ARGS).eval()
    path = _write_spec(tmp_path, original, "monai.networks.nets.BasicUNet", BASIC_ARGS)
    loaded = load_model_path(path, trust=False)
    assert _same_output(loaded.network, original, torch.randn(1, 1, 32, 32, 32))
    assert loaded.spec.labels == ["class_0", "class_1"]
    assert (loaded.spec.spatial_dims, loaded.spec.divisible_by) == (3, 16)
    assert loaded.layers == ["upcat_4", "upcat_3", "upcat_2", "upcat_1"]


def test_weights_file_with_same_stem_sidecar_loads(tmp_path: Path) -> None:
    original = _unet()
    _write_spec(tmp_path, original, "UNet", UNET_ARGS, labels=["a", "b", "c"])
    loaded = load_model_path(tmp_path / "model.pt", trust=False)
    assert loaded.spec.labels == ["a", "b", "c"]
    assert _same_output(loaded.network, original, torch.randn(1, 1, 16, 16))


def test_bare_state_dict_asks_for_a_json_spec(tmp_path: Path) -> None:
    torch.save(_unet().state_dict(), tmp_path / "weights.pth")
    with pytest.raises(SegGradCAMError, match=r"needs a JSON spec.*weights\.json.*\"architecture\": \"UNet\""):
        load_model_path(tmp_path / "weights.pth", trust=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "os.system"}, "Unknown architecture 'os.system'; supported: .*UNet"),
        (
            {"architecture": "UNet", "args": {**UNET_ARGS, "channels": [4, 8, 32]}},
            r"5 with a different shape \(model\.1\S* \(16, 8, 3, 3\) in file vs \(32, 8, 3, 3\) in network",
        ),
        ({"architecture": "UNet", "args": {**UNET_ARGS, "num_res_units": 0}}, r"missing \(.*unexpected \("),
        ({"labels": ["background", "tumour"]}, "2 labels but the network outputs 3 channels"),
        ({"spacings": [1, 1]}, r"Unknown key\(s\) spacings in model.json; valid keys: .*spacing"),
        ({"normalization": "clahe"}, "'normalization' is 'clahe'; choose one of zscore"),
        ({"sha256": "0" * 64}, "does not match the sha256"),
        ({"in_channels": 4}, "'in_channels' is 4 but the network's args say 1"),
        ({"args": {**UNET_ARGS, "bogus": 1}}, "Cannot build UNet with arguments"),
        ({"labels": ["background", "a b", "a-b"]}, "classes 'a b' and 'a-b' both get the file name heatmap_a-b"),
        ({"labels": ["background", "a/b", "a-b"]}, "classes 'a/b' and 'a-b' both get the file name"),
        ({"labels": ["background", "Tumour", "tumour"]}, "classes 'Tumour' and 'tumour' both get the file name"),
        ({"in_channels": 1.0}, "'in_channels' must be a whole number of at least 1; got 1.0"),
        ({"in_channels": True}, "'in_channels' must be a whole number of at least 1; got True"),
        ({"weights": "model\u0000.pt"}, "'weights' in model.json holds a NUL byte"),
    ],
)
def test_json_spec_errors_are_explained(tmp_path: Path, change: dict, message: str) -> None:
    path = _write_spec(tmp_path, _unet(), "UNet", UNET_ARGS)
    spec = json.loads(path.read_text())
    spec.update(change)
    path.write_text(json.dumps(spec))
    with pytest.raises(SegGradCAMError, match=message):
        load_model_path(path, trust=False)


def test_unknown_architecture_imports_nothing(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, _unet(), "UNet", UNET_ARGS)
    spec = json.loads(path.read_text())
    spec["architecture"] = "SegGradCAMLib.cli.main"
    path.write_text(json.dumps(spec))
    with pytest.raises(SegGradCAMError) as error:
        load_model_path(path, trust=True)
    assert all(name in str(error.value) for name in ARCHITECTURES)


def test_missing_keys_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"architecture": "UNet"}))
    with pytest.raises(SegGradCAMError, match="lacks the required key 'weights'"):
        load_model_path(tmp_path / "a.json", trust=False)
    torch.save(_unet().state_dict(), tmp_path / "model.pt")
    (tmp_path / "b.json").write_text(json.dumps({"weights": "model.pt"}))
    with pytest.raises(SegGradCAMError, match="lacks the required key.*architecture, args"):
        load_model_path(tmp_path / "b.json", trust=False)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(SegGradCAMError, match="c.json is not valid JSON"):
        load_model_path(tmp_path / "c.json", trust=False)


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, _unet(), "UNet", UNET_ARGS)
    (tmp_path / "model.pt").write_bytes(os.urandom(4096))
    with pytest.raises(SegGradCAMError, match="model.pt"):
        load_model_path(path, trust=True)


@pytest.mark.parametrize("seed", [2, 20, 195], ids=["IndexError", "KeyError", "UnicodeDecodeError"])
def test_damaged_weights_that_break_the_unpickler_are_refused(tmp_path: Path, seed: int) -> None:
    """Random bytes on which torch's weights-only unpickler fails with errors other than
    UnpicklingError (seeds found by trying; the ids name what torch 2.13 raises)."""
    import random

    path = _write_spec(tmp_path, _unet(), "UNet", UNET_ARGS)
    (tmp_path / "model.pt").write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(SegGradCAMError, match="model.pt: it is corrupt"):
        load_model_path(path, trust=True)


class _Payload:
    """Unpickling this would create ``marker`` (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = _write_spec(tmp_path, _unet(), "UNet", UNET_ARGS)
    torch.save({"state_dict": _unet().state_dict(), "hook": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(SegGradCAMError, match="carries Python objects or code"):
        load_model_path(path, trust=True)
    torch.save(_Payload(marker), tmp_path / "bare.pt")
    with pytest.raises(SegGradCAMError, match="needs a JSON spec"):
        load_model_path(tmp_path / "bare.pt", trust=True)
    assert not marker.exists()


# --- TorchScript ---------------------------------------------------------------------


def test_torchscript_needs_trust(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_unet()), tmp_path / "net.ts")
    with pytest.raises(SegGradCAMError, match="TorchScript: it contains executable code.*--trust-model"):
        load_model_path(tmp_path / "net.ts", trust=False)


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_with_sidecar_is_hookable_and_exact(tmp_path: Path, mode: str) -> None:
    original = _unet()
    x = torch.randn(1, 1, 32, 32)
    scripted = torch.jit.script(original) if mode == "script" else torch.jit.trace(original, x)
    torch.jit.save(scripted, tmp_path / "net.pt")
    (tmp_path / "net.json").write_text(json.dumps({"labels": ["bg", "a", "b"], "spatial_dims": 2, "spacing": [1, 1]}))
    loaded = load_model_path(tmp_path / "net.pt", trust=True)
    assert isinstance(loaded.network, ScriptedModule)
    assert _same_output(loaded.network, original, x)
    assert loaded.spec.labels == ["bg", "a", "b"] and loaded.spec.trusted_code
    assert loaded.spec.in_channels == 1 and loaded.spec.spacing == (1, 1)
    assert loaded.layers and all(name in dict(original.named_modules()) for name in loaded.layers)
    expected = seg_grad_cam(original, x, loaded.layers, [1, 2])
    maps = seg_grad_cam(loaded.network, x, loaded.layers, [1, 2])
    for name in loaded.layers:
        torch.testing.assert_close(maps[name], expected[name])


def test_torchscript_without_metadata_infers_channels_and_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.UNet(3, 2, 4, (2, 4, 4), (2, 2), num_res_units=0).eval()
    torch.jit.save(torch.jit.script(original), tmp_path / "tiny.ts")
    loaded = load_model_path(tmp_path / "tiny.ts", trust=True)
    assert (loaded.spec.name, loaded.spec.in_channels, loaded.spec.spatial_dims) == ("tiny", 2, 3)
    assert loaded.spec.labels == ["class_0", "class_1", "class_2", "class_3"]
    assert loaded.layers and loaded.spec.normalization == "zscore"
    assert _same_output(loaded.network, original, torch.randn(1, 2, 16, 16, 16))


def test_torchscript_replay_on_a_changed_torch_fails_with_one_line_naming_torch(tmp_path: Path, monkeypatch) -> None:
    torch.jit.save(torch.jit.script(_unet()), tmp_path / "net.ts")
    (tmp_path / "net.json").write_text(json.dumps({"labels": ["bg", "a", "b"], "spatial_dims": 2}))
    monkeypatch.delattr(torch._C, "parse_schema")  # as if a torch release had removed it
    with pytest.raises(SegGradCAMError, match=re.escape(f"torch {torch.__version__}")) as error:
        load_model_path(tmp_path / "net.ts", trust=True)
    assert "\n" not in str(error.value)


def test_torchscript_archive_metadata_gives_the_spec(tmp_path: Path) -> None:
    metadata = json.dumps({"labels": ["bg", "x", "y"], "spatial_dims": 2, "normalization": "minmax"})
    torch.jit.save(torch.jit.script(_unet()), tmp_path / "net.ts", _extra_files={"metadata": metadata})
    spec = load_model_path(tmp_path / "net.ts", trust=True).spec
    assert (spec.labels, spec.normalization, spec.name) == (["bg", "x", "y"], "minmax", "net")


class _Looped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = self.conv(x)[:, :1]
        return self.conv(x)


def test_torchscript_that_cannot_be_replayed_is_refused_clearly(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_Looped()), tmp_path / "loop.ts")
    with pytest.raises(SegGradCAMError, match="Hooks cannot be placed in this TorchScript module.*state_dict"):
        load_model_path(tmp_path / "loop.ts", trust=True)


def test_scripted_module_follows_device_and_mode_changes() -> None:
    mirror = ScriptedModule(torch.jit.script(_unet()))
    assert len(list(mirror.parameters())) == len(list(_unet().parameters()))
    mirror.to(torch.float64).train()
    assert all(p.dtype == torch.float64 for p in mirror.scripted.parameters())
    assert mirror.scripted.training
    assert mirror(torch.randn(1, 1, 16, 16, dtype=torch.float64)).dtype == torch.float64


# --- MONAI bundle --------------------------------------------------------------------


def _bundle(folder: Path, network: nn.Module, network_def: dict, yaml_config: bool = False, **config) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    inference = {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "datalist": "$list(sorted(glob.glob(@bundle_root + '/*.nii.gz')))",
        "input_channels": 1,
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.0, 2.0], "mode": "bilinear"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
                {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 24, 16], "sw_batch_size": 4},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        **config,
    }
    if yaml_config:
        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(inference))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    metadata = {
        "name": "Test bundle",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": ["16*n", "16*n", "16*n"]}},
            "outputs": {"pred": {"num_channels": 2, "channel_def": {"1": "organ", "0": "background"}}},
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def _basic_unet_def(**changes) -> dict:
    return {"_target_": "BasicUNet", **BASIC_ARGS, "in_channels": "@input_channels", **changes}


def test_literal_bundle_loads_without_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.BasicUNet(**BASIC_ARGS).eval()
    folder = _bundle(tmp_path / "organ_seg", original, _basic_unet_def())
    loaded = load_model_path(folder, trust=False)
    assert _same_output(loaded.network, original, torch.randn(1, 1, 32, 32, 32))
    spec = loaded.spec
    assert (spec.name, spec.labels, spec.trusted_code) == ("organ_seg", ["background", "organ"], False)
    assert spec.spacing == (2.0, 1.0, 1.5) and spec.roi_size == (16, 24, 32)
    assert spec.orientation == ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
    assert (spec.normalization, spec.divisible_by, spec.output_activation) == ("zscore_nonzero", 16, "softmax")
    assert spec.sha256 == sha256_of(folder / "models" / "model.pt")
    assert "Test bundle 0.1.0" in spec.description and "CropForeground" in spec.description
    assert loaded.layers == ["upcat_4", "upcat_3", "upcat_2", "upcat_1"]


def test_bundle_with_expressions_in_network_def_needs_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.BasicUNet(**BASIC_ARGS).eval()
    folder = _bundle(tmp_path / "b", original, _basic_unet_def(features="$[4, 4, 8, 8, 16, 4]"))
    with pytest.raises(SegGradCAMError, match="needs code to be built.*--trust-model"):
        load_model_path(folder, trust=False)
    loaded = load_model_path(folder, trust=True)
    assert loaded.spec.trusted_code
    assert _same_output(loaded.network, original, torch.randn(1, 1, 32, 32, 32))


def test_bundle_intensity_window_runs_inside_the_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.BasicUNet(**BASIC_ARGS).eval()
    window = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1}
    window["clip"] = True
    spacing = {"_target_": "Spacingd", "keys": "image", "pixdim": "$[1.0] * 3"}
    transforms = {"pre": [spacing, window, "$monai.transforms.EnsureTyped(keys='image')"]}
    preprocessing = {"transforms": "@transforms#pre"}
    folder = _bundle(
        tmp_path / "ct",
        original,
        _basic_unet_def(),
        yaml_config=True,
        preprocessing=preprocessing,
        transforms=transforms,
    )
    loaded = load_model_path(folder, trust=False)
    spec = loaded.spec
    assert spec.normalization == "none" and spec.spacing is None
    assert "-57..164" in spec.description and "Spacing (arguments not literal)" in spec.description
    assert "preprocessing transforms given by expressions" in spec.description
    hu = torch.randn(1, 1, 32, 32, 32) * 300
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(hu), original(((hu + 57) / 221).clamp(0, 1)))


def test_bundle_torchscript_needs_trust_and_other_folders_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nets.BasicUNet(**BASIC_ARGS).eval()
    folder = _bundle(tmp_path / "ts", original, _basic_unet_def())
    (folder / "models" / "model.pt").unlink()
    torch.jit.save(torch.jit.script(original), folder / "models" / "model.ts")
    with pytest.raises(SegGradCAMError, match="model.ts is TorchScript"):
        load_model_path(folder, trust=False)
    loaded = load_model_path(folder, trust=True)
    assert loaded.spec.labels == ["background", "organ"] and loaded.spec.name == "ts"
    assert _same_output(loaded.network, original, torch.randn(1, 1, 32, 32, 32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegGradCAMError, match="not a MONAI bundle"):
        load_model_path(tmp_path / "empty", trust=True)


@pytest.mark.parametrize(
    "pred, image, message",
    [
        ({"channel_def": {"a": "organ", "0": "background"}}, {}, r"channel_def key 'a' is not a channel index"),
        ({"channel_def": {"0": "background", "2": "organ"}}, {}, r"channel_def keys must be the channels 0..1"),
        ({"channel_def": {"0": "background", "00": "organ"}}, {}, r"channel_def keys must be the channels 0..1"),
        ({"channel_def": ["background", "organ"]}, {}, r"channel_def must be an object"),
        ({}, {"num_channels": "a"}, r"num_channels must be a whole number"),
        ({"channel_def": {"0": "background", "\u00b2": "organ"}}, {}, r"channel_def key '\u00b2' is not a channel"),
        ({}, {"spatial_shape": ["\u00b2*n", "16*n", "16*n"]}, r"spatial_shape '\u00b2\*n' is not"),
        ({}, {"spatial_shape": ["0*n", "0*n", "0*n"]}, r"spatial_shape '0\*n' is not"),
    ],
)
def test_bundle_metadata_that_makes_no_sense_is_one_line(tmp_path: Path, pred: dict, image: dict, message: str) -> None:
    folder = _bundle(tmp_path / "b", nets.BasicUNet(**BASIC_ARGS).eval(), _basic_unet_def())
    path = folder / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["network_data_format"]["outputs"]["pred"].update(pred)
    metadata["network_data_format"]["inputs"]["image"].update(image)
    path.write_text(json.dumps(metadata))
    with pytest.raises(SegGradCAMError, match=r"metadata.json: .*" + message) as error:
        load_model_path(folder, trust=False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("weights", ["../../../etc/passwd", "/etc/passwd", "sub/../../model.pt"])
def test_json_spec_weights_outside_its_folder_are_refused_unopened(tmp_path: Path, monkeypatch, weights: str) -> None:
    import SegGradCAMLib.models.json_spec as json_spec

    folder = tmp_path / "spec"
    folder.mkdir()
    path = _write_spec(folder, _unet(), "UNet", UNET_ARGS)
    (tmp_path / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    spec = json.loads(path.read_text())
    spec["weights"] = weights
    path.write_text(json.dumps(spec))
    opened = []
    monkeypatch.setattr(json_spec, "load_state_dict", lambda p: opened.append(p))
    monkeypatch.setattr(json_spec, "is_torchscript_archive", lambda p: opened.append(p))
    with pytest.raises(SegGradCAMError, match=r"model.json names weights .* outside its folder.*--trust-model"):
        load_model_path(path, trust=False)
    assert opened == []


def test_json_spec_weights_by_absolute_path_load_with_trust(tmp_path: Path) -> None:
    original = _unet()
    folder = tmp_path / "spec"
    folder.mkdir()
    path = _write_spec(folder, original, "UNet", UNET_ARGS)
    (folder / "model.pt").rename(tmp_path / "elsewhere.pt")
    spec = json.loads(path.read_text())
    spec["weights"] = str(tmp_path / "elsewhere.pt")
    path.write_text(json.dumps(spec))
    loaded = load_model_path(path, trust=True)
    assert _same_output(loaded.network, original, torch.randn(1, 1, 32, 32))
    spec["weights"] = "sub/../model.pt"
    (tmp_path / "elsewhere.pt").rename(folder / "model.pt")
    path.write_text(json.dumps(spec))
    assert _same_output(load_model_path(path, trust=False).network, original, torch.randn(1, 1, 32, 32))
