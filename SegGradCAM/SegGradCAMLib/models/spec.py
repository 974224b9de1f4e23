"""What a loaded model declares about itself."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import SegGradCAMError

if TYPE_CHECKING:  # torch stays out of module import: 3D Slicer loads this without it
    from torch import nn

NORMALIZATIONS = ("zscore", "zscore_nonzero", "percentile", "minmax", "none")


@dataclass
class ModelSpec:
    """Declared properties of a segmentation model.

    Spatial tuples are in array order ``(Z, Y, X)`` for 3D (``(Y, X)`` for 2D patches).

    Attributes:
        name: registry name or file name.
        labels: class names; index = output channel (0 is usually background).
        in_channels: number of input volumes (channels) the network takes.
        spatial_dims: 2 (slice-wise) or 3.
        output_activation: what turns the network's logits into probabilities:
            ``"softmax"`` or ``"sigmoid"``.
        normalization: intensity normalisation applied to each input channel, one of
            :data:`NORMALIZATIONS`. ``percentile`` maps ``normalization_range``
            percentiles (default 0.5, 99.5) to 0..1 and clips.
        spacing: voxel spacing (mm, array order) the model was trained at; ``None``
            means the input grid is used as it is.
        orientation: 3x3 direction matrix (ITK/LPS convention, columns = i, j, k
            axes) whose axis order and signs the model expects; ``None`` = as given.
        divisible_by: each padded spatial size must be a multiple of this.
        min_size: smallest spatial size the network accepts (array order).
        roi_size: sliding-window size for 3D models; ``None`` runs the whole padded
            volume at once.
        slice_axis: array axis (0 = Z) along which a 2D model runs.
        sha256: checksum of the weights file.
        source: where the weights came from.
        trusted_code: ``True`` when loading executed code the user trusted
            (TorchScript, bundle expressions).
    """

    name: str
    labels: list[str]
    in_channels: int = 1
    spatial_dims: int = 3
    output_activation: str = "softmax"
    normalization: str = "zscore"
    normalization_range: tuple[float, float] = (0.5, 99.5)
    spacing: tuple[float, ...] | None = None
    orientation: tuple[tuple[float, ...], ...] | None = None
    divisible_by: int = 16
    min_size: tuple[int, ...] | None = None
    roi_size: tuple[int, ...] | None = None
    slice_axis: int = 0
    sha256: str = ""
    source: str = ""
    trusted_code: bool = False
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def check_input_count(self, count: int) -> None:
        """Refuse ``count`` input volumes unless the network takes that many channels."""
        if count != self.in_channels:
            raise SegGradCAMError(f"Model {self.name} takes {self.in_channels} input volume(s); got {count}.")


SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec)) - {"trusted_code"}
# What a model file may declare besides its spec: its decoder stages (module names, coarse to
# fine), for networks whose stages cannot be recognised or traced.
DECLARED_FIELDS = SPEC_FIELDS | {"decoder_stages"}


@dataclass
class NnUNetParts:
    """What nnU-Net's pipeline needs besides the network: its plans/configuration/label managers,
    dataset.json, one state_dict per fold, and the checkpoint's mirroring axes.

    Built by :func:`.nnunet.load_nnunet_model`; the managers are nnU-Net's own classes
    (``PlansManager``, ``ConfigurationManager``, ``LabelManager``), typed ``Any`` so that this
    module needs neither nnU-Net nor torch."""

    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict
    parameters: list
    trainer_name: str
    mirror_axes: tuple | None


@dataclass
class LoadedModel:
    """A network in eval mode that returns logits ``(B, C, *S)``, with its spec.

    ``layers`` lists the decoder stages (coarse to fine) offered to the user;
    the last one is the default. ``subnormals_zeroed``: how many subnormal weights
    were set to zero when it loaded (see :mod:`.subnormal`).
    """

    network: "nn.Module"
    spec: ModelSpec
    layers: list[str] = field(default_factory=list)
    subnormals_zeroed: int = 0
    nnunet: NnUNetParts | None = None  # an nnU-Net model's plans, folds and managers

    def nnunet_parts(self) -> NnUNetParts:
        """:attr:`nnunet`, for code that runs nnU-Net models only; any other model is an error."""
        if self.nnunet is None:
            raise SegGradCAMError(f"{self.spec.name} is not an nnU-Net model.")
        return self.nnunet

    def chosen_layers(self, layers: "str | Sequence[str]" = "auto") -> "str | list[str]":
        """``layers`` with ``"auto"`` meaning the finest declared decoder stage; ``"auto"``
        stays for networks that declare none (then :mod:`SegGradCAMLib.layers` finds it)."""
        if isinstance(layers, str) and layers == "auto":
            return self.layers[-1:] or "auto"
        return [layers] if isinstance(layers, str) else list(layers)


def declare_stages(network: "nn.Module", stages: Sequence[str]) -> list[str]:
    """Set ``network.decoder_stages`` (module names, coarse to fine), which
    :func:`SegGradCAMLib.layers.decoder_layers` reads before anything else, and return the
    stages as a new list (for :attr:`LoadedModel.layers`). Loaders call it where a model
    declares its stages, so that the engine never asks the model declarations."""
    stages = [str(name) for name in stages]
    if stages:  # an empty declaration declares nothing: the stages are then recognised or traced
        # setattr: nn.Module types its attributes as Tensor | Module, and this one is a list
        setattr(network, "decoder_stages", stages)  # noqa: B010
    return list(stages)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_labels(labels: Sequence[str]) -> list[str]:
    """The class names, unique and non-empty, and unique as heatmap file names too (compared
    ignoring case, as on case-insensitive file systems)."""
    from ..volumes.files import safe_filename  # here: options imports this module, volumes.files options

    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"Model labels must be unique and non-empty; got {labels}.")
    seen: dict[str, str] = {}
    for label in labels:
        name = safe_filename(label)
        other = seen.setdefault(name.lower(), label)
        if other != label:
            raise ValueError(
                f"classes {other!r} and {label!r} both get the file name heatmap_{name}.nrrd "
                "(letters, digits, _ and - kept, case ignored); rename one."
            )
    return labels


def make_spec(fields: dict, weights: Path, trusted: bool) -> ModelSpec:
    """A checked ModelSpec from JSON-like ``fields`` for the weights file ``weights``."""
    fields = dict(fields)
    checksum = sha256_of(weights)
    if str(fields.get("sha256", checksum)).lower() != checksum:
        raise SegGradCAMError(f"{weights.name} does not match the sha256 in its spec (file: {checksum}).")
    fields.update(sha256=checksum, trusted_code=trusted)
    fields.setdefault("source", str(weights.resolve()))
    checks = {
        "normalization": NORMALIZATIONS,
        "output_activation": ("softmax", "sigmoid"),
        "spatial_dims": (2, 3),
    }
    for key, valid in checks.items():
        if key in fields and fields[key] not in valid:
            raise SegGradCAMError(f"'{key}' is {fields[key]!r}; choose one of {', '.join(map(str, valid))}.")
    try:
        fields["labels"] = check_labels(fields["labels"])
        for key in ("normalization_range", "spacing", "min_size", "roi_size"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        if fields.get("orientation") is not None:
            fields["orientation"] = tuple(tuple(float(v) for v in row) for row in fields["orientation"])
        return ModelSpec(**fields)
    except (TypeError, ValueError) as error:
        raise SegGradCAMError(f"Invalid model spec for {fields.get('name')}: {error}") from error


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; an unreadable file, bad JSON or another JSON type is a
    one-line error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SegGradCAMError(f"Cannot read {path}: {error}") from error
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise SegGradCAMError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SegGradCAMError(f"{path} must hold a JSON object.")
    return data


def metadata_fields(meta: dict, source: str = "metadata.json") -> dict:
    """Labels, in_channels, spatial_dims and divisible_by from a MONAI bundle's ``metadata.json``
    (read by bundle folders and by TorchScript archives that carry it; ``source`` names it in errors)."""
    fields: dict = {}
    pred = _section(meta, source, "network_data_format", "outputs", "pred")
    labels = _channel_labels(pred.get("channel_def", {}), source)
    if labels:
        fields["labels"] = labels
    image = _section(meta, source, "network_data_format", "inputs", "image")
    if "num_channels" in image:
        if type(image["num_channels"]) is not int:
            raise SegGradCAMError(f"{source}: num_channels must be a whole number; got {image['num_channels']!r}.")
        fields["in_channels"] = image["num_channels"]
    shape = image.get("spatial_shape")
    if isinstance(shape, list) and shape:
        fields["spatial_dims"] = len(shape)
        factors = [_shape_factor(s, source) for s in shape if isinstance(s, str) and "*" in s]
        if factors:
            fields["divisible_by"] = max(factors)
    return fields


def _shape_factor(text: str, source: str) -> int:
    """The ``k`` of a ``spatial_shape`` entry ``"k*n"`` (sizes must be multiples of ``k``)."""
    factor = text.split("*")[0]
    if not (factor.isascii() and factor.isdigit() and int(factor) >= 1):
        raise SegGradCAMError(f'{source}: spatial_shape {text!r} is not "k*n" with a whole number k >= 1, e.g. "16*n".')
    return int(factor)


def _section(meta: dict, source: str, *keys: str) -> dict:
    """``meta[keys[0]][keys[1]]...``: an object, ``{}`` where absent."""
    value: Any = meta
    for depth, key in enumerate(keys):
        value = value.get(key, {})
        if not isinstance(value, dict):
            raise SegGradCAMError(f"{source}: {'.'.join(keys[: depth + 1])} must be an object.")
    return value


def _channel_labels(channel_def: Any, source: str) -> list:
    """``channel_def`` ``{"0": name, "1": name, ...}`` as the labels in channel order (``{}``: none)."""
    if not isinstance(channel_def, dict):
        raise SegGradCAMError(f'{source}: channel_def must be an object {{"0": "background", "1": ...}}.')
    for key in channel_def:
        if not (key.isascii() and key.isdigit()):
            raise SegGradCAMError(f'{source}: channel_def key {key!r} is not a channel index; use "0", "1", ...')
    channels = [str(i) for i in range(len(channel_def))]
    if set(channel_def) != set(channels):
        raise SegGradCAMError(
            f"{source}: channel_def keys must be the channels 0..{len(channels) - 1}, one each; "
            f"got {', '.join(sorted(channel_def, key=int))}."
        )
    return [channel_def[key] for key in channels]
