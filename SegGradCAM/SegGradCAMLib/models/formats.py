"""Model files by path: JSON spec + state_dict, TorchScript, MONAI bundle folder.

:func:`load_model_path` picks the format from the path:

- a folder: a MONAI bundle (``configs/inference.json`` or ``.yaml``,
  ``configs/metadata.json``, ``models/model.pt`` or ``models/model.ts``);
- ``*.json``: a JSON spec (below);
- any other file with a JSON spec of the same stem beside it (``model.pt`` +
  ``model.json``): that spec, for this file;
- a TorchScript archive (a zip with ``code/``), needs ``trust=True``;
- anything else (a bare ``state_dict``): refused, with an example spec.

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
                                       # to the spec's folder
      "labels": ["background", "lesion"],  # optional: one name per output channel;
                                       # default class_0 .. class_{C-1}
      "sha256": "...",                 # optional: expected checksum of the weights, verified
      ... any other ModelSpec field (optional): name (default: the spec's stem),
      in_channels, spatial_dims (default: from "args"), output_activation,
      normalization, normalization_range, spacing, orientation, divisible_by
      (default: from the architecture's strides), min_size, roi_size, slice_axis,
      source, description (trusted_code is set by the loader)
    }

Architectures are looked up by name in the allow-list :data:`ARCHITECTURES` of
``monai.networks.nets`` classes; nothing else is imported or evaluated.

TorchScript (``trust=True`` only, it is executable code): the spec comes from the
same-stem JSON sidecar, else from the archive's ``metadata`` (or MONAI's
``metadata.json``) extra file; without either, ``in_channels``/``spatial_dims`` are
read from the first convolution's weight, the labels are ``class_0 ..
class_{C-1}`` from one forward pass of zeros, and the preprocessing defaults
apply (a warning says so). Forward hooks cannot be placed on ScriptModules, so
the module tree is mirrored by :class:`ScriptedModule`: every module whose
TorchScript graph is plain data flow (module calls, operators with a schema,
``if``) runs its graph from Python, so hooks fire on its children; other modules
(loops, calls to script functions) run as one opaque call. The mirror must
reproduce the archive's output exactly on an example input, else the load fails
with a message asking for a state_dict + JSON spec.

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

import dataclasses
import json
import logging
import math
import operator
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import SegGradCAMError
from ..layers import decoder_layers
from .safe_load import is_torchscript_archive, load_state_dict
from .spec import NORMALIZATIONS, LoadedModel, ModelSpec, check_labels, sha256_of

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
SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec)) - {"trusted_code"}
SPEC_KEYS = SPEC_FIELDS | {"architecture", "args", "weights"}
SPEC_TYPES = {
    "architecture": (str, "a string"),
    "weights": (str, "a string"),
    "args": (dict, "an object"),
    "labels": (list, "an array"),
}
TRUST_HINT = "pass --trust-model (trust=True) only if you trust its source"
EXAMPLE_SPEC = (
    '{"architecture": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, '
    '"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}, "weights": "model.pt", '
    '"labels": ["background", "foreground"], "normalization": "zscore", "spacing": [1.0, 1.0, 1.0]}'
)
HOOKS_ERROR = (
    "Hooks cannot be placed in this TorchScript module ({reason}). Provide the weights as a "
    "state_dict (torch.save(model.state_dict(), 'model.pt')) with a JSON spec instead."
)
INTENSITY_TRANSFORMS = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRangePercentiles", "ScaleIntensityRange")
BUNDLE_NEUTRAL = frozenset(
    {"LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "AddChannel", "CastToType"}
)
# LPS unit vector of each axis code (ITK convention, as in ModelSpec.orientation).
AXIS_CODES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}

log = logging.getLogger(__name__)


def load_model_path(path: Path, trust: bool) -> LoadedModel:
    """Load a model file or MONAI bundle folder (see the module docstring).

    The network is in eval mode and returns logits ``(B, C, *S)``.
    """
    path = Path(path)
    if path.is_dir():
        return load_bundle(path, trust)
    if not path.is_file():
        raise SegGradCAMError(f"Model file not found: {path}")
    if path.suffix.lower() == ".json":
        return load_json_spec(path, trust)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return load_json_spec(sidecar, trust, weights=path)
    if is_torchscript_archive(path):
        return load_torchscript(path, trust, {})
    raise SegGradCAMError(
        f"{path.name} holds no architecture: a weights file needs a JSON spec naming the network. "
        f"Write {path.stem}.json next to it, e.g. {EXAMPLE_SPEC}"
    )


# --- JSON spec + state_dict ----------------------------------------------------------


def load_json_spec(spec_path: Path, trust: bool, weights: Path | None = None) -> LoadedModel:
    """A JSON spec with its weights; ``weights`` is given when the spec is a sidecar."""
    data = _read_json(spec_path)
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
    named = spec_path.parent / data["weights"] if "weights" in data else None
    if weights is None and named is None:
        raise SegGradCAMError(f"{spec_path.name} lacks the required key 'weights' (the weights file).")
    if weights is not None and named is not None and named.resolve() != weights.resolve():
        raise SegGradCAMError(f"{spec_path.name} names weights {data['weights']!r}, not {weights.name}.")
    weights = weights or named
    if not weights.is_file():
        raise SegGradCAMError(f"Weights file {weights} named by {spec_path.name} not found.")
    fields = {key: value for key, value in data.items() if key in SPEC_FIELDS}
    fields.setdefault("name", spec_path.stem)
    if is_torchscript_archive(weights):
        if "architecture" in data or "args" in data:
            raise SegGradCAMError(f"{weights.name} is TorchScript: remove 'architecture'/'args' from {spec_path.name}.")
        return load_torchscript(weights, trust, fields)
    missing = [key for key in ("architecture", "args") if key not in data]
    if missing:
        raise SegGradCAMError(
            f"{spec_path.name} lacks the required key(s) {', '.join(missing)}. Example: {EXAMPLE_SPEC}"
        )
    network = build_network(data["architecture"], data["args"])
    load_weights(network, weights)
    _fields_from_args(fields, data["architecture"], data["args"])
    return _finish(network, fields, weights, data["args"].get("out_channels"), trusted=False)


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


def _fields_from_args(fields: dict, architecture: str, args: dict) -> None:
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


def _finish(network: nn.Module, fields: dict, weights: Path, out_channels: int | None, trusted: bool) -> LoadedModel:
    """Validate ``fields`` into a ModelSpec and find the decoder layers."""
    network.eval()
    spatial_dims = fields.get("spatial_dims", 3)
    fields.setdefault("in_channels", 1)
    size = fields.get("min_size") or fields.get("roi_size") or (64,) * spatial_dims
    example = torch.zeros(1, fields["in_channels"], *size)
    if out_channels is None and "labels" not in fields:
        out_channels = _run(network, example).shape[1]
    if "labels" not in fields:
        fields["labels"] = [f"class_{i}" for i in range(out_channels)]
        log.warning("%s declares no labels; using %s.", fields.get("name"), ", ".join(fields["labels"]))
    spec = make_spec(fields, weights, trusted)
    if out_channels is not None and len(spec.labels) != out_channels:
        raise SegGradCAMError(
            f"{spec.name} has {len(spec.labels)} labels but the network outputs {out_channels} channels."
        )
    try:
        layers = decoder_layers(network, example)
    except (RuntimeError, ValueError) as error:
        raise _failed_on(example, error) from error
    return LoadedModel(network, spec, layers)


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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SegGradCAMError(f"{path.name} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SegGradCAMError(f"{path.name} must hold a JSON object.")
    return data


def _run(network: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """One forward pass without gradients; the output must be logits ``(B, C, *S)``."""
    try:
        with torch.no_grad():
            output = network(example)
    except (RuntimeError, ValueError) as error:
        raise _failed_on(example, error) from error
    if not isinstance(output, torch.Tensor) or output.ndim != example.ndim:
        raise SegGradCAMError(
            f"The network returned {type(output).__name__}, not one logits tensor (B, C, *spatial)."
        )
    return output


def _failed_on(example: torch.Tensor, error: Exception) -> SegGradCAMError:
    return SegGradCAMError(
        f"The network failed on an example input of shape {tuple(example.shape)} ({error}); "
        "set min_size or roi_size in its spec."
    )


# --- TorchScript ---------------------------------------------------------------------


def load_torchscript(path: Path, trust: bool, fields: dict) -> LoadedModel:
    """A TorchScript archive as a hookable :class:`ScriptedModule` (needs ``trust``)."""
    if not trust:
        raise SegGradCAMError(
            f"{path.name} is TorchScript: it contains executable code, which runs only if you trust it. "
            f"To load it {TRUST_HINT}; or provide the weights as a state_dict with a JSON spec."
        )
    extra = {"metadata": "", "metadata.json": ""}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as error:
        raise SegGradCAMError(f"Cannot read TorchScript file {path.name}: {error}") from error
    scripted.eval()
    fields = dict(fields)
    if not fields:
        fields = _archive_metadata(extra)
        fields.setdefault("name", path.stem)
    if "in_channels" not in fields or "spatial_dims" not in fields:
        in_channels, spatial_dims = _first_convolution(scripted)
        fields.setdefault("in_channels", in_channels)
        fields.setdefault("spatial_dims", spatial_dims)
    size = fields.get("min_size") or fields.get("roi_size") or (64,) * fields["spatial_dims"]
    example = torch.zeros(1, fields["in_channels"], *size)
    expected = _run(scripted, example)
    network = ScriptedModule(scripted)
    if network.opaque:
        raise SegGradCAMError(HOOKS_ERROR.format(reason="its top-level forward uses loops, script functions or operators Python cannot replay"))
    try:
        same = torch.equal(_run(network, example), expected)
    except Exception as error:  # any failure of the Python replay means it cannot be explained
        raise SegGradCAMError(HOOKS_ERROR.format(reason=f"replaying its graph failed: {error}")) from error
    if not same:
        raise SegGradCAMError(HOOKS_ERROR.format(reason="replaying its graph changed the output"))
    loaded = _finish(network, fields, path, expected.shape[1], trusted=True)
    if not loaded.layers:
        raise SegGradCAMError(HOOKS_ERROR.format(reason="no decoder stage is reachable from Python"))
    return loaded


def _archive_metadata(extra: dict[str, bytes | str]) -> dict:
    """Spec fields from the archive's ``metadata`` (spec fields) or ``metadata.json`` (MONAI)."""
    for key, raw in extra.items():
        if raw:
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise SegGradCAMError(f"The TorchScript extra file {key!r} is not valid JSON: {error}") from error
            if not isinstance(data, dict):
                raise SegGradCAMError(f"The TorchScript extra file {key!r} must hold a JSON object.")
            if "network_data_format" in data:
                return _metadata_fields(data)
            return {k: v for k, v in data.items() if k in SPEC_FIELDS}
    log.warning("TorchScript file without a JSON sidecar or metadata: default preprocessing is assumed.")
    return {}


def _first_convolution(module: nn.Module) -> tuple[int, int]:
    """``(in_channels, spatial_dims)`` read from the first 4D/5D weight."""
    for parameter in module.parameters():
        if parameter.ndim in (4, 5):
            return parameter.shape[1], parameter.ndim - 2
    raise SegGradCAMError(
        "Cannot tell the TorchScript model's input channels: give in_channels and spatial_dims in a JSON sidecar."
    )


class _Unsupported(Exception):
    """A TorchScript node that :class:`ScriptedModule` cannot replay."""


Program = list[tuple[str, tuple[int, ...], tuple[int, ...], Any]]
_PLAIN_NODES = frozenset(
    {
        "prim::ListConstruct",
        "prim::TupleConstruct",
        "prim::ListUnpack",
        "prim::TupleUnpack",
        "prim::RaiseException",
        "prim::Uninitialized",
        "prim::unchecked_cast",
    }
)
# Generic list operators, replayed on Python lists (torch.ops cannot type them).
_LIST_OPS: dict[str, Callable] = {
    "aten::__getitem__.t": operator.getitem,
    "aten::len.t": len,
    "aten::append.t": lambda items, item: items.append(item) or items,
    "aten::insert.t": list.insert,
    "aten::reverse.t": list.reverse,
    "aten::add.t": operator.add,
    "aten::list.t": list,
}


@dataclasses.dataclass(frozen=True)
class _Method:
    program: Program
    inputs: tuple[int, ...]
    output: int


class ScriptedModule(nn.Module):
    """A Python mirror of a ScriptModule, on which forward hooks work.

    Children are mirrored under the same names. When the module's forward graph is
    plain data flow (module calls, operators with a schema, ``if``), it is replayed
    node by node in Python, children called through their mirrors so that their
    hooks fire; otherwise the ScriptModule runs as one opaque call (:attr:`opaque`)
    and its children are not mirrored. ``parameters()``/``buffers()``, ``.to()``
    and ``.train()`` act on the ScriptModule.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "scripted", scripted)
        self._methods: dict[str, _Method | None] = {}
        has_forward = scripted._c._has_method("forward")
        self.opaque = has_forward and self._method("forward") is None
        if not self.opaque:
            for name, child in scripted.named_children():
                self.add_module(name, ScriptedModule(child))

    def _method(self, name: str) -> _Method | None:
        """The compiled graph of method ``name``, or ``None`` when it cannot be replayed."""
        if name not in self._methods:
            try:
                graph = getattr(self.scripted, name).graph
                self._methods[name] = _Method(
                    _compile(graph.block()),
                    tuple(v.unique() for v in graph.inputs()),
                    next(iter(graph.outputs())).unique(),
                )
            except (_Unsupported, RuntimeError):
                self._methods[name] = None
        return self._methods[name]

    def call(self, name: str, args: list) -> Any:
        """Run method ``name``: replayed when possible, else by the ScriptModule."""
        method = self._method(name)
        if method is None:
            return getattr(self.scripted, name)(*args)
        values = dict(zip(method.inputs, (self, *args)))
        _execute(method.program, values)
        return values[method.output]

    def forward(self, *args: Any) -> Any:
        return self.call("forward", list(args))

    def train(self, mode: bool = True) -> "ScriptedModule":
        self.scripted.train(mode)
        return super().train(mode)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.scripted.named_parameters(*args, **kwargs)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.scripted.named_buffers(*args, **kwargs)

    def _apply(self, fn: Callable, recurse: bool = True) -> "ScriptedModule":
        self.scripted._apply(fn)
        return self


def _compile(block: torch._C.Block) -> Program:
    """Translate a graph block into ``(kind, inputs, outputs, payload)`` steps."""
    program: Program = []
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            if node.output().type().kind() == "FunctionType":
                raise _Unsupported(kind)
            payload = node.output().toIValue()
        elif kind in ("prim::GetAttr", "prim::CallMethod"):
            payload = node.s("name")
        elif kind == "prim::If":
            payload = tuple((_compile(b), tuple(v.unique() for v in b.outputs())) for b in node.blocks())
        elif kind in _PLAIN_NODES:
            payload = None
        else:
            payload = _operator(node)
        inputs, outputs = (tuple(v.unique() for v in values) for values in (node.inputs(), node.outputs()))
        program.append((kind, inputs, outputs, payload))
    return program


def _operator(node: torch._C.Node) -> tuple[Callable, tuple[str | None, ...]]:
    """The callable a node runs and its keyword-only argument names (``None``: positional)."""
    text = node.schema()
    if text == "(no schema)":
        raise _Unsupported(node.kind())
    schema = torch._C.parse_schema(text)
    qualified = f"{schema.name}.{schema.overload_name}"
    if qualified in _LIST_OPS:
        return _LIST_OPS[qualified], ()
    for argument in schema.arguments:
        kind = argument.type.kind()
        writes = argument.alias_info is not None and argument.alias_info.is_write
        generic = any(t.kind() == "VarType" for t in argument.type.containedTypes())
        if kind in ("ListType", "DictType") and (writes or generic):
            raise _Unsupported(qualified)
    namespace, name = schema.name.split("::")
    try:
        op = getattr(getattr(getattr(torch.ops, namespace), name), schema.overload_name or "default")
    except (AttributeError, RuntimeError) as error:
        raise _Unsupported(qualified) from error
    return op, tuple(a.name if a.kwarg_only else None for a in schema.arguments)


def _execute(program: Program, values: dict[int, Any]) -> None:
    """Run compiled steps, reading and writing ``values`` by value id."""
    for kind, inputs, outputs, payload in program:
        args = [values[i] for i in inputs]
        if kind == "prim::Constant":
            results = (payload,)
        elif kind == "prim::GetAttr":
            owner = args[0]
            if isinstance(owner, ScriptedModule):
                child = owner._modules.get(payload)
                results = (child if child is not None else getattr(owner.scripted, payload),)
            else:
                results = (getattr(owner, payload),)
        elif kind == "prim::CallMethod":
            owner = args[0]
            if isinstance(owner, ScriptedModule):
                results = (owner(*args[1:]) if payload == "forward" else owner.call(payload, args[1:]),)
            else:
                results = (getattr(owner, payload)(*args[1:]),)
        elif kind == "prim::If":
            steps, branch_outputs = payload[0] if args[0] else payload[1]
            _execute(steps, values)
            results = tuple(values[i] for i in branch_outputs)
        elif kind == "prim::ListConstruct":
            results = (list(args),)
        elif kind == "prim::TupleConstruct":
            results = (tuple(args),)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            results = tuple(args[0])
        elif kind == "prim::RaiseException":
            raise RuntimeError(args[0])
        elif kind == "prim::Uninitialized":
            results = (None,)
        elif kind == "prim::unchecked_cast":
            results = (args[0],)
        else:
            op, keywords = payload
            named = {k: a for a, k in zip(args, keywords) if k is not None}
            positional = [a for i, a in enumerate(args) if i >= len(keywords) or keywords[i] is None]
            result = op(*positional, **named)
            results = result if len(outputs) > 1 else (result,)
        values.update(zip(outputs, results))


# --- MONAI bundle --------------------------------------------------------------------


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
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    fields = _metadata_fields(meta)
    fields["name"] = folder.name
    notes = _preprocessing_fields(config, fields)
    weights, torchscript = folder / "models" / "model.pt", folder / "models" / "model.ts"
    fields["description"] = _description(meta, notes)
    if weights.is_file():
        network, target, args = _bundle_network(config, config_path, folder, trust)
        load_weights(network, weights)
        if target is not None:
            _fields_from_args(fields, target, args)
        loaded = _finish(network, fields, weights, args.get("out_channels"), trusted=target is None)
    elif torchscript.is_file():
        loaded = load_torchscript(torchscript, trust, fields)
    else:
        raise SegGradCAMError(f"{folder.name}: no weights found (models/model.pt or models/model.ts).")
    if "window" in notes:
        loaded.network.register_forward_pre_hook(notes["window"])
    return loaded


def _read_config(path: Path) -> dict:
    if path.suffix == ".json":
        return _read_json(path)
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


def _metadata_fields(meta: dict) -> dict:
    """Labels, in_channels, spatial_dims and divisible_by from a bundle's ``metadata.json``."""
    fields: dict = {}
    data_format = meta.get("network_data_format", {})
    pred = data_format.get("outputs", {}).get("pred", {})
    channel_def = pred.get("channel_def")
    if isinstance(channel_def, dict) and channel_def:
        fields["labels"] = [channel_def[k] for k in sorted(channel_def, key=int)]
    image = data_format.get("inputs", {}).get("image", {})
    if "num_channels" in image:
        fields["in_channels"] = int(image["num_channels"])
    shape = image.get("spatial_shape")
    if isinstance(shape, list) and shape:
        fields["spatial_dims"] = len(shape)
        factors = [int(s.split("*")[0]) for s in shape if isinstance(s, str) and s.split("*")[0].isdigit()]
        if factors:
            fields["divisible_by"] = max(factors)
    return fields


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
    elif (
        name == "ScaleIntensityRangePercentiles"
        and (transform.get("b_min"), transform.get("b_max"), transform.get("clip")) == (0, 1, True)
    ):
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
