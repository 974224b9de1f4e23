"""A TorchScript archive (``trust=True`` only: it is executable code).

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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import SegGradCAMError
from .checks import finish_loading, run_example
from .safe_load import TRUST_HINT
from .spec import DECLARED_FIELDS, LoadedModel, metadata_fields
from .torchscript_replay import ScriptedModule

log = logging.getLogger(__name__)

HOOKS_ERROR = (
    "Hooks cannot be placed in this TorchScript module ({reason}). Provide the weights as a "
    "state_dict (torch.save(model.state_dict(), 'model.pt')) with a JSON spec instead."
)


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
    expected = run_example(scripted, example)
    network = ScriptedModule(scripted)
    if network.opaque:
        raise SegGradCAMError(
            HOOKS_ERROR.format(
                reason="its top-level forward uses loops, script functions or operators Python cannot replay"
            )
        )
    try:
        same = torch.equal(run_example(network, example), expected)
    except Exception as error:  # any failure of the Python replay means it cannot be explained
        raise SegGradCAMError(HOOKS_ERROR.format(reason=f"replaying its graph failed: {error}")) from error
    if not same:
        raise SegGradCAMError(HOOKS_ERROR.format(reason="replaying its graph changed the output"))
    loaded = finish_loading(network, fields, path, expected.shape[1], trusted=True)
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
                return metadata_fields(data)
            return {k: v for k, v in data.items() if k in DECLARED_FIELDS}
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
