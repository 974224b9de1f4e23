"""nnU-Net v2 trained-model folders read safely: declarations without torch, the checkpoint as data
(nnU-Net's own pickled fields allowed, anything else refused and never run), the network built by
nnU-Net's get_network_from_plans from allow-listed class names only."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.models.nnunet import is_nnunet_folder, load_nnunet_network, nnunet_facts
from SegGradCAMLib.models.registry import declared_facts

ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
PLANS = {
    "dataset_name": "Dataset900_Toy",
    "plans_name": "nnUNetPlans",
    "configurations": {
        "3d_fullres": {"patch_size": [32, 32, 32], "spacing": [2.0, 2.0, 2.0], "architecture": ARCHITECTURE}
    },
}
DATASET = {
    "channel_names": {"0": "t1c", "1": "flair"},
    "file_ending": ".nii.gz",
    "numTraining": 1,
    "labels": {"background": 0, "edema": 1, "enhancing_rim": 2, "necrotic_core": 3},
}


class Payload:
    """Unpickling this would create ``marker`` (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def trained_like_nnunet(folder: Path, plans=PLANS, extra_logging=None, dataset=DATASET) -> torch.nn.Module:
    """A folder as nnU-Net writes it: the network from nnU-Net's own builder, a checkpoint with
    the fields of nnUNetTrainer.save_checkpoint (optimizer state, numpy scalars in the log, a
    torch.device in init_args)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        len(dataset["channel_names"]),
        len(dataset["labels"]),
        deep_supervision=True,
    )
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    network(torch.randn(1, 2, 32, 32, 32))[0].mean().backward()
    optimizer.step()
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    logging = {
        "mean_fg_dice": [np.float64(0.5)],
        "ema_fg_dice": [np.float64(0.45)],
        "dice_per_class_or_region": [[np.float32(0.4), np.float32(0.5), np.float32(0.6)]],
        "train_losses": [np.float64(-0.2)],
        "val_losses": [np.float32(-0.1)],
        "lrs": [0.01],
        "epoch_start_timestamps": [1.0],
        "epoch_end_timestamps": [2.0],
        **(extra_logging or {}),
    }
    torch.save(
        {
            "network_weights": network.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "grad_scaler_state": None,
            "logging": logging,
            "_best_ema": np.float64(0.45),
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": 0,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer_5epochs",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return network.eval()


@pytest.fixture()
def folder(tmp_path) -> Path:
    return tmp_path / "Dataset900_Toy" / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"


def test_declarations_are_read_without_torch(folder):
    trained_like_nnunet(folder)
    assert is_nnunet_folder(folder)
    facts = nnunet_facts(folder)
    assert facts.labels == ("background", "edema", "enhancing_rim", "necrotic_core") and facts.in_channels == 2
    assert facts.layers == ("decoder.stages.0", "decoder.stages.1")
    assert declared_facts(str(folder)) == facts
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'nnunetv2', 'monai'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from SegGradCAMLib.models.registry import declared_facts\n"
        f"print(declared_facts({str(folder)!r}).labels)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "necrotic_core" in proc.stdout


def test_weights_load_as_data_into_nnunets_own_network(folder):
    original = trained_like_nnunet(folder)
    network, fields = load_nnunet_network(folder)
    assert fields["inference_allowed_mirroring_axes"] == (0, 1, 2) and fields["trainer_name"] == "nnUNetTrainer_5epochs"
    assert [name for name, _ in network.named_modules() if name in ("decoder.stages.0", "decoder.stages.1")]
    x = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    original.decoder.deep_supervision = False
    with torch.no_grad():
        assert torch.equal(network(x), original(x))
    assert "timm" not in sys.modules and "torchvision" not in sys.modules


def test_a_code_carrying_checkpoint_is_refused_and_never_run(folder, tmp_path):
    marker = tmp_path / "ran"
    trained_like_nnunet(folder, extra_logging={"note": Payload(marker)})
    with pytest.raises(SegGradCAMError, match="Refused to load checkpoint_final.pth: it pickles") as error:
        load_nnunet_network(folder)
    assert re.search(r"it pickles [\w.]+\.call,", str(error.value))  # pickle writes subprocess.call as commands.call
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nonlin": "os.system"}, r"allow-list \(os.system\)"),
        ({"network_class_name": "dynamic_network_architectures.architectures.primus.Primus"}, "Primus/EVA"),
        ({"network_class_name": "some_package.EvilUNet"}, r"allow-list \(some_package.EvilUNet\)"),
    ],
)
def test_plans_naming_other_classes_are_refused(folder, change, message):
    trained_like_nnunet(folder)
    plans = copy.deepcopy(PLANS)
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    for key, value in change.items():
        (architecture if key == "network_class_name" else architecture["arch_kwargs"])[key] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(SegGradCAMError, match=message):
        load_nnunet_network(folder)


def test_missing_parts_are_named(folder):
    trained_like_nnunet(folder)
    with pytest.raises(
        SegGradCAMError, match=r"fold_1.*checkpoint_final.pth not found; folds with checkpoint_final.pth: fold_0"
    ):
        load_nnunet_network(folder, fold="1")
    (folder / "plans.json").unlink()
    with pytest.raises(SegGradCAMError, match="plans.json is missing"):
        nnunet_facts(folder)
    cascade = folder.parent / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    cascade.mkdir()
    plans = {"configurations": {"3d_cascade_fullres": PLANS["configurations"]["3d_fullres"]}}
    (cascade / "plans.json").write_text(json.dumps(plans))
    (cascade / "dataset.json").write_text(json.dumps(DATASET))
    with pytest.raises(SegGradCAMError, match="low-resolution stage"):
        nnunet_facts(cascade)


def test_models_scan_lists_the_folders_without_torch(folder, tmp_path):
    trained_like_nnunet(folder)
    (tmp_path / "not-a-model").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "SegGradCAMLib", "models", "--scan", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "folders under" in proc.stdout and f"{folder}  (2 input(s); background, edema" in proc.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "SegGradCAMLib", "models", "--scan", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("seggradcam: error: --scan")


def test_known_model_roots_follow_totalsegmentators_conventions(tmp_path):
    from SegGradCAMLib.models.nnunet import known_model_roots

    home = tmp_path / "home"
    default = home / ".totalsegmentator" / "nnunet" / "results"
    assert known_model_roots({}, home) == []
    default.mkdir(parents=True)
    assert known_model_roots({}, home) == [default]
    custom = tmp_path / "weights"
    custom.mkdir()
    assert known_model_roots({"TOTALSEG_WEIGHTS_PATH": str(custom)}, home) == [custom]
    (tmp_path / "tsh" / "nnunet" / "results").mkdir(parents=True)
    assert known_model_roots({"TOTALSEG_HOME_DIR": str(tmp_path / "tsh")}, home) == [
        tmp_path / "tsh" / "nnunet" / "results"
    ]
    slicer_model = tmp_path / "slicer-nnunet"
    slicer_model.mkdir()
    assert known_model_roots({}, home, str(slicer_model)) == [default, slicer_model]


def test_model_folders_are_looked_for_to_a_bounded_depth(folder, tmp_path):
    """A root given by mistake (a home folder, ``/``) is not walked whole: nnU-Net's layout is
    ``results/<dataset>/<trainer__plans__configuration>``, found; the same folder four levels
    deeper is not."""
    from SegGradCAMLib.models.nnunet import find_nnunet_folders

    trained_like_nnunet(folder)
    deep = tmp_path / "a" / "b" / "c" / "d" / folder.parent.name / folder.name
    trained_like_nnunet(deep)
    assert find_nnunet_folders(tmp_path) == [folder]  # deep is 6 folders below tmp_path
    assert find_nnunet_folders(tmp_path / "a" / "b") == [deep]  # 4 below: the default depth
    assert find_nnunet_folders(tmp_path / "a") == []
    assert find_nnunet_folders(tmp_path / "a", max_depth=5) == [deep]
