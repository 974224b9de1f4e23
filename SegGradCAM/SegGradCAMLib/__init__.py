"""SegGradCAMLib: Seg-Grad-CAM explanations for segmentation networks.

The heavy parts (torch, monai) are imported lazily so that 3D Slicer can load the
module without them. Public API::

    from SegGradCAMLib import ExplainOptions, explain      # files in, files out (explain.json)
    from SegGradCAMLib import seg_grad_cam, decoder_layers, explain_volume, load_model   # arrays
"""

__version__ = "0.1.0"

_LAZY = {
    "explain": "api",
    "evaluate": "api",
    "ExplainOptions": "options",
    "EvaluateOptions": "options",
    "EngineOptions": "engine_options",
    "ExplainReport": "reports",
    "EvaluationReport": "reports",
    "seg_grad_cam": "cam",
    "CAM_METHODS": "selection",
    "decoder_layers": "layers",
    "default_layer": "layers",
    "resolve_layers": "layers",
    "explain_volume": "inference",
    "VolumeExplanation": "inference",
    "load_model": "models",
    "list_models": "models",
    "LoadedModel": "models",
    "SegGradCAMError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
