"""The findings of a whole volume for ``evaluate --findings``, found as ``explain --findings`` finds
them: the same segmentation pass (2D models slice by slice, 3D models over the whole volume or in
MONAI's sliding windows, no gradients), its labels on the input grid, and their components
(:func:`~.findings.find_findings`), so a finding's id and voxels are those of explain's findings.json.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .findings import FindingRequest, FindingSet
from .volume_runner import VolumeRunner  # explain's own segmentation pass: the findings are explain's
from .model_grid import Direction, check_volume, prepare_input
from .models.spec import LoadedModel
from .targets import TargetRequest, targets_from_logits


def volume_findings(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    direction: Direction | None,
    classes: Sequence[int],
    request: FindingRequest | None,
    batch_size: int,
    device: str,
) -> FindingSet | None:
    """The findings of ``classes`` in a volume ``(Cin, Z, Y, X)`` (``spacing`` in mm, array order) as
    ``request`` asks (None without one); 2D models segment ``batch_size`` slices at a time."""
    if request is None:
        return None
    check_volume(image, model.spec)
    x, grid = prepare_input(model.spec, image, spacing, direction)
    runner = VolumeRunner(model, [], list(classes), "gradcam", device, None, None, batch_size=batch_size)
    _, targets = targets_from_logits(
        runner.segment(x), model.spec, grid, spacing, list(classes), TargetRequest(findings=request)
    )
    return targets.findings
