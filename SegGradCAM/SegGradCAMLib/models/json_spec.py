"""A JSON spec naming a MONAI architecture, next to its ``state_dict`` file.

JSON spec schema (one JSON object)::

    {
      "architecture": "UNet",          # required for a state_dict: one of ARCHITECTURES
                                       # ("monai.networks.nets.UNet" is accepted too)
      "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
               "channels": [16, 32, 64], "strides": [2, 2]},
                                       # required with "architecture": keyword arguments
                                       # of the class, JSON literals only
      "weights": "model.pt",           # required unless the spec sits beside the file as
                                       # its same-stem sidecar: a state_dict (read with
                                       # weights_only=True) or a TorchScript archive (then
                                       # "architecture"/"args" must be absent); relative
                                       # to the spec's folder and inside it (an absolute
                                       # path or "../" needs --trust-model)
      "labels": ["background", "lesion"],  # optional: one name per output channel;
                                       # default class_0 .. class_{C-1}
      "sha256": "...",                 # optional: expected checksum of the weights, verified
      "decoder_stages": ["up1", "up2"],  # optional: module names offered for explanation,
                                       # coarse to fine (default: recognised or traced)
      ... any other ModelSpec field (optional): name (default: the spec's stem),
      in_channels, spatial_dims (default: from "args"), output_activation,
      normalization, normalization_range, spacing, orientation, divisible_by
      (default: from the architecture's strides), min_size, roi_size, slice_axis,
      source, description (trusted_code is set by the loader)
    }

Architectures are looked up by name in the allow-list :data:`ARCHITECTURES` of
``monai.networks.nets`` classes; nothing else is imported or evaluated.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ..errors import SegGradCAMError
from .checks import finish_loading
from .safe_load import is_torchscript_archive, load_state_dict
from .spec import DECLARED_FIELDS, LoadedModel, read_json_object

ARCHITECTURES = (
    "AttentionUnet",
    "BasicUNet",
    "DynUNet",
    "HighResNet",
    "SegResNet",
    "SegResNetDS",
    "SwinUNETR",
    "UNETR",
    "UNet",
    "VNet",
)
SPEC_KEYS = DECLARED_FIELDS | {"architecture", "args", "weights"}
SPEC_TYPES = {
    "architecture": (str, "a string"),
    "weights": (str, "a string"),
    "args": (dict, "an object"),
    "labels": (list, "an array"),
}
EXAMPLE_SPEC = (
    '{"architecture": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, '
    '"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}, "weights": "model.pt", '
    '"labels": ["background", "foreground"], "normalization": "zscore", "spacing": [1.0, 1.0, 1.0]}'
)


def load_json_spec(spec_path: Path, trust: bool, weights: Path | None = None) -> LoadedModel:
    """A JSON spec with its weights; ``weights`` is given when the spec is a sidecar."""
    data = read_json_object(spec_path)
    if "network_def" in data:
        raise SegGradCAMError(f"{spec_path.name} is a MONAI bundle config: load the bundle folder instead.")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise SegGradCAMError(
            f"Unknown key(s) {', '.join(unknown)} in {spec_path.name}; valid keys: {', '.join(sorted(SPEC_KEYS))}."
        )
    for key, (kind, description) in SPEC_TYPES.items():
        if key in data and not isinstance(data[key], kind):
            raise SegGradCAMError(f"'{key}' in {spec_path.name} must be {description}.")
    named = named_weights(spec_path, data["weights"], trust) if "weights" in data else None
    if weights is None and named is None:
        raise SegGradCAMError(f"{spec_path.name} lacks the required key 'weights' (the weights file).")
    if weights is not None and named is not None and named.resolve() != weights.resolve():
        raise SegGradCAMError(f"{spec_path.name} names weights {data['weights']!r}, not {weights.name}.")
    weights = weights or named
    if not weights.is_file():
        raise SegGradCAMError(f"Weights file {weights} named by {spec_path.name} not found.")
    fields = {key: value for key, value in data.items() if key in DECLARED_FIELDS}
    fields.setdefault("name", spec_path.stem)
    if is_torchscript_archive(weights):
        if "architecture" in data or "args" in data:
            raise SegGradCAMError(f"{weights.name} is TorchScript: remove 'architecture'/'args' from {spec_path.name}.")
        from .torchscript import load_torchscript

        return load_torchscript(weights, trust, fields)
    missing = [key for key in ("architecture", "args") if key not in data]
    if missing:
        raise SegGradCAMError(
            f"{spec_path.name} lacks the required key(s) {', '.join(missing)}. Example: {EXAMPLE_SPEC}"
        )
    network = build_network(data["architecture"], data["args"])
    load_weights(network, weights)
    fields_from_args(fields, data["architecture"], data["args"])
    return finish_loading(network, fields, weights, data["args"].get("out_channels"), trusted=False)


def named_weights(spec_path: Path, name: str, trust: bool) -> Path:
    """The weights file a spec names, relative to the spec's folder and inside it (symbolic links
    followed); an absolute path or one leaving the folder needs ``trust``. Nothing is opened."""
    if "\0" in name:
        raise SegGradCAMError(f"'weights' in {spec_path.name} holds a NUL byte; name the weights file.")
    path = (spec_path.parent / name).resolve()
    if not trust and (Path(name).is_absolute() or not path.is_relative_to(spec_path.parent.resolve())):
        raise SegGradCAMError(
            f"{spec_path.name} names weights {name!r} outside its folder: put the weights file beside "
            "the spec (a relative path), or pass --trust-model to load it from there."
        )
    return path


def spec_weights(model: str | None) -> Path | None:
    """The weights file named by ``model`` when it is a JSON spec (to protect it from the run's
    outputs); None otherwise, or when the spec does not read (loading it reports that)."""
    path = Path(model or "")
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        name = read_json_object(path).get("weights")
    except SegGradCAMError:
        return None
    return named_weights(path, name, trust=True) if isinstance(name, str) else None


def build_network(architecture: str, args: dict) -> nn.Module:
    """``monai.networks.nets.<architecture>(**args)`` for an allow-listed name."""
    from monai.networks import nets

    name = architecture.removeprefix("monai.networks.nets.")
    if name not in ARCHITECTURES:
        raise SegGradCAMError(f"Unknown architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}.")
    try:
        return getattr(nets, name)(**args)
    except Exception as error:  # the constructor's complaint about user-given arguments
        raise SegGradCAMError(f"Cannot build {name} with arguments {args}: {error}") from error


def load_weights(network: nn.Module, path: Path) -> None:
    """Load a state_dict file into ``network``, naming mismatched keys on failure."""
    state = load_state_dict(path)
    expected = network.state_dict()
    if set(state) != set(expected) and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    problems = []
    for kind, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        (
            "with a different shape",
            [
                f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in network"
                for k, v in expected.items()
                if k in state and state[k].shape != v.shape
            ],
        ),
    ):
        if keys:
            problems.append(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise SegGradCAMError(
            f"The weights in {path.name} do not fit {type(network).__name__}: {'; '.join(problems)}. "
            "Check the architecture arguments."
        )
    network.load_state_dict(state)


def fields_from_args(fields: dict, architecture: str, args: dict) -> None:
    """Fill in_channels, spatial_dims and divisible_by from the constructor arguments."""
    for key in ("in_channels", "spatial_dims"):
        if key in args:
            if fields.setdefault(key, args[key]) != args[key]:
                raise SegGradCAMError(f"'{key}' is {fields[key]} but the network's args say {args[key]}.")
    name = architecture.rsplit(".", 1)[-1]
    if "divisible_by" not in fields:
        if name in ("UNet", "AttentionUnet", "DynUNet") and "strides" in args:
            fields["divisible_by"] = math.prod(max(s) if isinstance(s, list) else s for s in args["strides"])
        elif name in ("BasicUNet", "SwinUNETR", "SegResNet"):
            blocks = len(args.get("blocks_down", (1, 2, 2, 4)))
            fields["divisible_by"] = {"BasicUNet": 16, "SwinUNETR": 32, "SegResNet": 2 ** (blocks - 1)}[name]
