"""nnU-Net v2 trained-model folders, read safely.

A trained-model folder ``.../DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` holds
``dataset.json`` (channels, labels), ``plans.json`` (the network's architecture per
configuration) and ``fold_N/checkpoint_final.pth`` (or ``checkpoint_best.pth``).

nnU-Net's own loader (``nnUNetPredictor.initialize_from_trained_model_folder``) reads the
checkpoint with ``torch.load(weights_only=False)`` and builds the network with
``pydoc.locate`` on class names from plans.json: either runs whatever a folder carries.
Here the checkpoint is read with ``weights_only=True`` and an explicit allow-list of the
plain types nnU-Net pickles besides tensors (numpy scalars and dtypes in the training log),
and plans.json's class names must be allow-listed dynamic_network_architectures U-Nets and
``torch.nn`` building blocks before nnU-Net's ``get_network_from_plans`` builds the network
(without deep supervision); other names need ``trust``. The trainer class named in the
checkpoint is never imported. Primus/EVA architectures (they need timm) are refused.

What a folder declares (labels, channels, decoder stages ``decoder.stages.N``) is read
without torch by :func:`nnunet_facts`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Sequence

from ..errors import SegGradCAMError
from .declarations import ModelFacts

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
ARCHITECTURES = tuple(
    f"dynamic_network_architectures.architectures.unet.{name}"
    for name in ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")
)
# torch.nn building blocks plans.json may name (module path as nnU-Net writes it, or torch.nn.<Name>)
TORCH_BLOCKS = {
    "conv": ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    "instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "normalization": ("GroupNorm", "LayerNorm"),
    "dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d"),
    "activation": ("LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU"),
}


def is_nnunet_folder(path: Path) -> bool:
    """A folder with nnU-Net's ``plans.json`` and ``dataset.json``."""
    path = Path(path)
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def looks_like_nnunet_folder(path: Path) -> bool:
    """A folder with any part of an nnU-Net trained-model folder (loading then names what is missing)."""
    path = Path(path)
    return (
        path.is_dir()
        and any((path / name).exists() for name in ("plans.json", "dataset.json"))
        or any(Path(path).glob("fold_*/checkpoint_*.pth"))
    )


def find_nnunet_folders(root: Path, max_depth: int = 4) -> list[Path]:
    """The nnU-Net trained-model folders under ``root`` (``plans.json`` and ``dataset.json`` beside
    at least one ``fold_*``), sorted; at most ``max_depth`` folders below ``root`` (nnU-Net's
    ``results/<dataset>/<trainer__plans__configuration>`` is 2), so that a root given by mistake
    (a home folder, ``/``) is not walked whole. Unreadable folders are skipped."""
    import os

    root = Path(root)
    found = []
    for folder, subfolders, files in os.walk(root, onerror=lambda error: None):
        path = Path(folder)
        if len(path.relative_to(root).parts) >= max_depth:
            subfolders.clear()
        if "plans.json" in files and is_nnunet_folder(path) and any(path.glob("fold_*")):
            found.append(path)
    return sorted(found)


def known_model_roots(environ=None, home: Path | None = None, slicer_nnunet_model: str | None = None) -> list[Path]:
    """Existing folders where nnU-Net models usually live on this computer: TotalSegmentator's
    (``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
    ``~/.totalsegmentator/nnunet/results``) and SlicerNNUnet's last model path (3D Slicer's
    settings, passed in by the module), and ``$nnUNet_results``."""
    import os

    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if environ.get("TOTALSEG_WEIGHTS_PATH"):
        totalseg = Path(environ["TOTALSEG_WEIGHTS_PATH"])
    elif environ.get("TOTALSEG_HOME_DIR"):
        totalseg = Path(environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results"
    else:
        totalseg = home / ".totalsegmentator" / "nnunet" / "results"
    candidates = [
        totalseg,
        Path(environ["nnUNet_results"]) if environ.get("nnUNet_results") else None,
        Path(slicer_nnunet_model) if slicer_nnunet_model else None,
    ]
    return [path for path in dict.fromkeys(c for c in candidates if c is not None) if path.is_dir()]


def _read_json(path: Path) -> dict:
    from .spec import read_json_object

    if not path.is_file():
        raise SegGradCAMError(f"{path.parent} is not an nnU-Net trained-model folder: {path.name} is missing.")
    return read_json_object(path)


def configuration_of(folder: Path, plans: dict) -> str:
    """The folder's configuration: ``<Trainer>__<Plans>__<configuration>``, else the plans' only one."""
    match = re.fullmatch(r".+__.+__(.+)", Path(folder).name)
    configurations = plans.get("configurations", {})
    name = match.group(1) if match else (next(iter(configurations)) if len(configurations) == 1 else None)
    if name is None or name not in configurations:
        raise SegGradCAMError(
            f"Cannot tell the configuration of {Path(folder).name}: expected <Trainer>__<Plans>__<configuration> "
            f"with a configuration of plans.json ({', '.join(configurations)})."
        )
    if name.endswith("cascade_fullres"):
        raise SegGradCAMError(
            f"{name} needs the low-resolution stage's prediction as input; explain 3d_lowres instead."
        )
    return name


def label_names(dataset: dict) -> list[str]:
    """Class names from dataset.json's ``labels`` (name -> value, or -> region list), ``ignore``
    left out. Region-based models: ``background`` then the regions, class ``c`` being output
    channel ``c - 1`` (sigmoid) and painted as ``regions_class_order[c - 1]`` by nnU-Net."""
    labels = {name: value for name, value in dataset.get("labels", {}).items() if name != "ignore"}
    if not labels:
        raise SegGradCAMError("dataset.json declares no labels.")
    if is_region_based(dataset):
        order = dataset.get("regions_class_order")
        regions = [name for name in labels if name != "background"]
        if order is None or len(order) != len(regions):
            raise SegGradCAMError("dataset.json has region labels without a matching 'regions_class_order'.")
        return ["background", *regions]
    return [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]


def is_region_based(dataset: dict) -> bool:
    """dataset.json declares overlapping regions (label -> list of values): sigmoid outputs."""
    return any(isinstance(value, (list, tuple)) and len(value) > 1 for value in dataset.get("labels", {}).values())


def output_channels(dataset: dict) -> int:
    """The network's output channels: one per label, or one per region (no background)."""
    return len(label_names(dataset)) - is_region_based(dataset)


def nnunet_facts(folder: Path) -> ModelFacts:
    """Labels, input channels and decoder stages of an nnU-Net folder, read without torch."""
    folder = Path(folder)
    dataset, plans = _read_json(folder / "dataset.json"), _read_json(folder / "plans.json")
    try:
        configuration = plans["configurations"][configuration_of(folder, plans)]
        n_stages = configuration.get("architecture", {}).get("arch_kwargs", {}).get("n_stages")
        channels = dataset.get("channel_names", dataset.get("modality", {}))
        labels = tuple(label_names(dataset))
        count = len(channels)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise SegGradCAMError(
            f"{folder} is not a readable nnU-Net folder: its plans.json or dataset.json is not laid out as "
            f"nnU-Net writes them ({type(error).__name__}: {error})."
        ) from None
    if not isinstance(n_stages, int) or n_stages < 2:
        raise SegGradCAMError(f"plans.json of {folder.name} has no architecture with n_stages.")
    return ModelFacts(labels, count, tuple(f"decoder.stages.{i}" for i in range(n_stages - 1)))


def checkpoint_path(folder: Path, fold: str, checkpoint: str = CHECKPOINTS[0]) -> Path:
    """``fold_<fold>/<checkpoint>`` of the folder, or a message naming what is missing."""
    path = Path(folder) / f"fold_{fold}" / checkpoint
    if not path.is_file():
        folds = sorted(p.name for p in Path(folder).glob("fold_*") if (p / checkpoint).is_file())
        raise SegGradCAMError(f"{path} not found; folds with {checkpoint}: {', '.join(folds) or 'none'}.")
    return path


def _safe_numpy_globals() -> list:
    """The plain numpy types nnU-Net's training log pickles: scalars and their dtypes (numpy 1.x
    and 2.x module paths)."""
    import numpy as np

    found = [np.dtype, *{type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")}]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            scalar = __import__(module, fromlist=["scalar"]).scalar
        except (ImportError, AttributeError):
            continue
        found.append((scalar, f"{module}.scalar"))
    return found


def read_nnunet_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint as data: ``torch.load(weights_only=True)`` with numpy scalars and
    dtypes allowed; any other pickled type is refused with its name, never constructed."""
    import torch

    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)|global ([\w.]+)|Unsupported class ([\w.]+)", str(error))
        name = next((g for g in found.groups() if g), "an object") if found else "an object"
        raise SegGradCAMError(
            f"Refused to load {path.name}: it pickles {name}, which is not plain data (tensors, numbers, numpy "
            "scalars); code in a checkpoint is never executed."
        ) from None
    except Exception as error:  # weights_only never runs code: any other failure is a damaged file
        raise SegGradCAMError(f"Cannot read {path.name}: it is corrupt or not a PyTorch file ({error}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("network_weights"), dict):
        raise SegGradCAMError(f"{path.name} is not an nnU-Net checkpoint (no 'network_weights').")
    return data


def allowed_blocks() -> dict[str, type]:
    """Allow-listed torch.nn classes by every name plans.json may give them (``torch.nn.X`` and
    the defining module's path, as nnU-Net writes it)."""
    from torch import nn

    allowed = {}
    for short in (name for names in TORCH_BLOCKS.values() for name in names):
        block = getattr(nn, short)
        allowed[f"torch.nn.{short}"] = allowed[f"{block.__module__}.{short}"] = block
    return allowed


def build_nnunet_network(
    plans: dict, configuration: str, input_channels: int, output_channels: int, trust: bool = False
):
    """The configuration's network built by nnU-Net's ``get_network_from_plans`` (deep
    supervision off, no initialisation), after checking its class names (see module docstring)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from .safe_load import TRUST_HINT

    architecture = plans["configurations"][configuration].get("architecture", {})
    name = architecture.get("network_class_name", "")
    if re.search(r"primus|eva", name, re.IGNORECASE):
        raise SegGradCAMError(f"{name} (Primus/EVA) needs timm and is not supported; explain a U-Net configuration.")
    kwargs, imports = dict(architecture.get("arch_kwargs", {})), list(architecture.get("_kw_requires_import", []))
    unknown = [name] if name not in ARCHITECTURES else []
    blocks = allowed_blocks()
    unknown += [str(kwargs[k]) for k in imports if kwargs.get(k) is not None and str(kwargs[k]) not in blocks]
    if unknown and not trust:
        raise SegGradCAMError(
            f"plans.json names classes outside the allow-list ({', '.join(unknown)}); building them imports and "
            f"runs code: to load it {TRUST_HINT}."
        )
    return get_network_from_plans(
        name, kwargs, imports, input_channels, output_channels, allow_init=False, deep_supervision=False
    )


def load_nnunet_network(folder: Path, fold: str = "0", checkpoint: str = CHECKPOINTS[0], trust: bool = False):
    """The network of one fold with its weights, in eval mode, and the checkpoint's other fields
    (``inference_allowed_mirroring_axes``, ``trainer_name``, ...)."""
    folder = Path(folder)
    dataset, plans = _read_json(folder / "dataset.json"), _read_json(folder / "plans.json")
    configuration = configuration_of(folder, plans)
    data = read_nnunet_checkpoint(checkpoint_path(folder, fold, checkpoint))
    facts = nnunet_facts(folder)
    network = build_nnunet_network(plans, configuration, facts.in_channels, output_channels(dataset), trust)
    weights = data.pop("network_weights")
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise SegGradCAMError(f"The weights of fold {fold} do not fit the network of plans.json: {error}") from None
    return network.eval(), data


def default_folds(folder: Path, checkpoint: str) -> list[str]:
    """Every ``fold_N`` holding ``checkpoint`` (``fold_all`` skipped), as nnU-Net's auto-detection."""
    folds = sorted(
        p.name.removeprefix("fold_")
        for p in Path(folder).glob("fold_*")
        if p.name != "fold_all" and (p / checkpoint).is_file()
    )
    if not folds:
        raise SegGradCAMError(f"{folder} holds no fold_N/{checkpoint}; train it or choose --checkpoint.")
    return folds


def load_nnunet_model(
    folder: Path, folds: Sequence[str] | None = None, checkpoint: str = CHECKPOINTS[0], trust: bool = False
):
    """An nnU-Net trained-model folder as a :class:`~.spec.LoadedModel` (network with the first
    fold's weights, every fold's weights in ``nnunet.parameters``); ``folds`` ``["all"]`` selects
    ``fold_all``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .spec import LoadedModel, ModelSpec, NnUNetParts, declare_stages, sha256_of

    folder = Path(folder)
    facts = nnunet_facts(folder)  # names a missing plans.json / dataset.json first
    folds = list(folds) if folds else default_folds(folder, checkpoint)
    network, fields = load_nnunet_network(folder, folds[0], checkpoint, trust)
    # a copy: the network's own tensors change when another fold is loaded into it
    parameters = [{name: value.clone() for name, value in network.state_dict().items()}]
    parameters += [
        read_nnunet_checkpoint(checkpoint_path(folder, fold, checkpoint))["network_weights"] for fold in folds[1:]
    ]
    dataset, plans = _read_json(folder / "dataset.json"), _read_json(folder / "plans.json")
    plans_manager = PlansManager(plans)
    configuration = configuration_of(folder, plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    first = checkpoint_path(folder, folds[0], checkpoint)
    spec = ModelSpec(
        name=f"{folder.parent.name}/{folder.name}",
        labels=list(facts.labels),
        in_channels=facts.in_channels,
        spatial_dims=len(configuration_manager.patch_size),
        sha256=sha256_of(first),
        source=str(folder),
        output_activation="sigmoid" if is_region_based(dataset) else "softmax",
        description=f"nnU-Net {configuration}, folds {', '.join(folds)}, {checkpoint}",
    )
    mirror = fields.get("inference_allowed_mirroring_axes")
    try:
        label_manager = plans_manager.get_label_manager(dataset)
    except AssertionError as error:  # nnU-Net checks dataset.json's labels with asserts
        raise SegGradCAMError(f"dataset.json of {folder.name}: {error}") from None
    parts = NnUNetParts(
        plans_manager,
        configuration_manager,
        label_manager,
        dataset,
        parameters,
        str(fields.get("trainer_name", "")),
        tuple(mirror) if mirror else None,
    )
    return LoadedModel(network, spec, declare_stages(network, facts.layers), nnunet=parts)
