"""A MONAI Model Zoo bundle folder (``configs/inference.json`` + ``models/model.pt``).

MONAI bundle: ``network_def`` is built without trust when it is a
``{"_target_": <allow-listed name>, ...}`` dict of literals, ``@`` references to
literal entries of the config allowed. Expressions (``$``), macros (``%``), other
targets or special keys (``_mode_``, ``_requires_``) in it run code: they need
``trust=True`` and are built by ``monai.bundle.ConfigParser``. Other config
entries (devices, data lists) are never evaluated. ``models/model.pt`` is
preferred; ``models/model.ts`` needs trust. Mapped into the spec:

- labels: ``network_data_format.outputs.pred.channel_def`` of ``metadata.json``
  (else ``class_i``); ``in_channels`` from the network arguments or the input's
  ``num_channels``; ``divisible_by`` from a ``"16*n"`` ``spatial_shape``;
- ``preprocessing.transforms`` (a list, or an ``@`` reference to one): ``Orientationd`` (axcodes ->
  orientation), ``Spacingd`` (pixdim, reversed to array order),
  ``NormalizeIntensityd`` (zscore / zscore_nonzero), ``ScaleIntensityd``
  (minmax), ``ScaleIntensityRangePercentilesd`` to 0..1 with clip
  (percentile), ``ScaleIntensityRanged`` (a fixed window, e.g. CT HU: applied
  inside the network by a forward pre-hook, normalisation ``none``);
- ``inferer.roi_size`` (reversed) and a sigmoid in ``postprocessing``
  ``Activationsd``.

Ignored, and named in the spec's description: every other transform (cropping,
padding, resizing, ...), transforms or transform lists given by expressions, and
any normalisation after the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import SegGradCAMError
from .checks import finish_loading
from .json_spec import ARCHITECTURES, build_network, fields_from_args, load_weights
from .safe_load import TRUST_HINT
from .spec import LoadedModel, metadata_fields, read_json_object

INTENSITY_TRANSFORMS = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRangePercentiles", "ScaleIntensityRange")
BUNDLE_NEUTRAL = frozenset({"LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "AddChannel", "CastToType"})
# LPS unit vector of each axis code (ITK convention, as in ModelSpec.orientation).
AXIS_CODES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


class _NeedsCode(Exception):
    """A bundle config value that only code can produce (``$``, ``%``, unknown target)."""


def load_bundle(folder: Path, trust: bool) -> LoadedModel:
    """A MONAI Model Zoo bundle folder (see the module docstring)."""
    configs = folder / "configs"
    candidates = [configs / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config_path = next((path for path in candidates if path.is_file()), None)
    if config_path is None:
        raise SegGradCAMError(
            f"{folder} is not a MONAI bundle: configs/inference.json (or .yaml) is missing. "
            "A folder must be a bundle; for other models load a JSON spec file."
        )
    config = _read_config(config_path)
    meta_path = configs / "metadata.json"
    meta = read_json_object(meta_path) if meta_path.is_file() else {}
    fields = metadata_fields(meta, str(meta_path))
    fields["name"] = folder.name
    notes = _preprocessing_fields(config, fields)
    weights, torchscript = folder / "models" / "model.pt", folder / "models" / "model.ts"
    fields["description"] = _description(meta, notes)
    if weights.is_file():
        network, target, args = _bundle_network(config, config_path, folder, trust)
        load_weights(network, weights)
        if target is not None:
            fields_from_args(fields, target, args)
        loaded = finish_loading(network, fields, weights, args.get("out_channels"), trusted=target is None)
    elif torchscript.is_file():
        from .torchscript import load_torchscript

        loaded = load_torchscript(torchscript, trust, fields)
    else:
        raise SegGradCAMError(f"{folder.name}: no weights found (models/model.pt or models/model.ts).")
    if "window" in notes:
        loaded.network.register_forward_pre_hook(notes["window"])
    return loaded


def _read_config(path: Path) -> dict:
    if path.suffix == ".json":
        return read_json_object(path)
    try:
        import yaml
    except ImportError as error:
        raise SegGradCAMError(f"Reading {path.name} needs PyYAML: pip install pyyaml") from error

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SegGradCAMError(f"{path.name} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise SegGradCAMError(f"{path.name} must hold a mapping.")
    return data


def _resolve(value: Any, config: dict, seen: frozenset[str] = frozenset()) -> Any:
    """``value`` with ``@`` references to literal config entries substituted."""
    if isinstance(value, str) and value.startswith(("$", "%")):
        raise _NeedsCode(value)
    if isinstance(value, str) and value.startswith("@"):
        if value in seen:
            raise _NeedsCode(value)
        return _resolve(_lookup(value, config), config, seen | {value})
    if isinstance(value, dict):
        return {k: _resolve(v, config, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, config, seen) for v in value]
    return value


def _lookup(reference: str, config: dict) -> Any:
    """The config entry an ``@id`` reference (``::`` or ``#`` separated) points to."""
    target: Any = config
    for part in reference[1:].replace("#", "::").split("::"):
        if isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        elif isinstance(target, dict) and part in target:
            target = target[part]
        else:
            raise _NeedsCode(reference)
    return target


def _bundle_network(config: dict, config_path: Path, folder: Path, trust: bool) -> tuple[nn.Module, str | None, dict]:
    """The bundle's network, its allow-listed target and literal arguments.

    Built by ``monai.bundle.ConfigParser`` (target ``None``, no arguments) when
    ``network_def`` needs code and ``trust`` allows it.
    """
    if "network_def" not in config:
        raise SegGradCAMError(f"{config_path.name} has no 'network_def'.")
    try:
        definition = _resolve(config["network_def"], config)
        if not isinstance(definition, dict) or set(k for k in definition if k.startswith("_")) - {"_target_", "_desc_"}:
            raise _NeedsCode("special keys")
        target = str(definition.get("_target_", ""))
        if target.removeprefix("monai.networks.nets.") not in ARCHITECTURES:
            raise _NeedsCode(target)
    except _NeedsCode as reason:
        if not trust:
            raise SegGradCAMError(
                f"The network_def of bundle {folder.name} needs code to be built ({str(reason)[:80]!r}; "
                f"allowed plain targets: {', '.join(ARCHITECTURES)}). MONAI evaluates it as Python: "
                f"to load it {TRUST_HINT}."
            ) from None
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(config_path))
        parser["bundle_root"] = str(folder)
        try:
            network = parser.get_parsed_content("network_def")
        except Exception as error:  # the bundle's own code failed
            raise SegGradCAMError(f"MONAI could not build the network of bundle {folder.name}: {error}") from error
        return network, None, {}
    args = {k: v for k, v in definition.items() if not k.startswith("_")}
    return build_network(target, args), target, args


def _preprocessing_fields(config: dict, fields: dict) -> dict:
    """Map the bundle's transforms into ``fields``; return the pre-hook window and ignored names."""
    notes: dict = {"ignored": []}
    for transform in _transforms(config, "preprocessing", notes):
        name = str(transform.get("_target_", "")).rsplit(".", 1)[-1].removesuffix("d")
        try:
            _map_transform(name, _resolve(transform, config), fields, notes)
        except (_NeedsCode, KeyError, TypeError, ValueError):
            notes["ignored"].append(f"{name} (arguments not literal)")
    for transform in _transforms(config, "postprocessing", notes):
        if str(transform.get("_target_", "")).endswith("Activationsd") and transform.get("sigmoid") is True:
            fields["output_activation"] = "sigmoid"
    try:
        roi_size = _resolve(config.get("inferer", {}), config).get("roi_size")
        if roi_size is not None:
            fields["roi_size"] = tuple(roi_size)[::-1]
    except (_NeedsCode, AttributeError, TypeError):
        notes["ignored"].append("inferer (given by expressions)")
    return notes


def _transforms(config: dict, key: str, notes: dict) -> list[dict]:
    """The transform dicts listed in ``config[key]["transforms"]`` (or an ``@`` reference to a list)."""
    section = config.get(key, {})
    items = section.get("transforms", []) if isinstance(section, dict) else section
    try:
        if isinstance(items, str) and items.startswith("@"):
            items = _lookup(items, config)
    except _NeedsCode:
        items = None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        notes["ignored"].append(f"{key} transforms given by expressions")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _map_transform(name: str, transform: dict, fields: dict, notes: dict) -> None:
    """Record one preprocessing transform in ``fields`` or ``notes``."""
    normalised = "normalization" in fields or "window" in notes
    if name == "Orientation" and len(transform["axcodes"]) == 3:
        columns = [AXIS_CODES[c] for c in transform["axcodes"].upper()]
        fields["orientation"] = tuple(tuple(float(col[r]) for col in columns) for r in range(3))
    elif name == "Spacing":
        pixdim = transform["pixdim"]
        pixdim = pixdim if isinstance(pixdim, list) else [pixdim] * 3
        fields["spacing"] = tuple(float(p) for p in pixdim)[::-1]
    elif name in INTENSITY_TRANSFORMS and normalised:
        notes["ignored"].append(f"{name} (a second normalisation)")
    elif name == "NormalizeIntensity" and transform.get("subtrahend") is None and transform.get("divisor") is None:
        fields["normalization"] = "zscore_nonzero" if transform.get("nonzero") else "zscore"
    elif name == "ScaleIntensity" and transform.get("minv", 0.0) == 0 and transform.get("maxv", 1.0) == 1:
        fields["normalization"] = "minmax"
    elif name == "ScaleIntensityRangePercentiles" and (
        transform.get("b_min"),
        transform.get("b_max"),
        transform.get("clip"),
    ) == (0, 1, True):
        fields["normalization"] = "percentile"
        fields["normalization_range"] = (float(transform["lower"]), float(transform["upper"]))
    elif name == "ScaleIntensityRange":
        fields["normalization"] = "none"
        notes["window"] = _intensity_window(transform)
    elif name not in BUNDLE_NEUTRAL:
        notes["ignored"].append(name)


def _intensity_window(transform: dict) -> Callable:
    """A forward pre-hook doing MONAI's ScaleIntensityRange on the network input."""
    a_min, a_max = float(transform["a_min"]), float(transform["a_max"])
    b_min, b_max = transform.get("b_min"), transform.get("b_max")
    clip = bool(transform.get("clip", False))

    def window(module: nn.Module, args: tuple) -> tuple:
        x = (args[0] - a_min) / (a_max - a_min) if a_max != a_min else args[0] - a_min
        if b_min is not None and b_max is not None:
            x = x * (b_max - b_min) + b_min
            if clip:
                x = x.clamp(b_min, b_max)
        return (x, *args[1:])

    window.description = (
        f"intensity window {a_min:g}..{a_max:g} -> {b_min}..{b_max} (clip={clip}) applied inside the network"
    )
    return window


def _description(meta: dict, notes: dict) -> str:
    """Bundle name and version, the in-network window and the ignored transforms."""
    title = str(meta.get("name") or meta.get("task") or "MONAI bundle")
    parts = [f"{title} {meta['version']}" if "version" in meta else title]
    if "window" in notes:
        parts.append(notes["window"].description)
    if notes["ignored"]:
        parts.append(f"ignored bundle transforms: {', '.join(notes['ignored'])}")
    return "; ".join(parts)
