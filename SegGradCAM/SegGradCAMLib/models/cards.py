"""A model's card: the heatmap method it chose by evidence for ``--method auto`` (else HiResCAM)
and the DICOM codes of its labels (``terminology``, see :mod:`.terminology`).

A card's ``default_method`` records the method with the lowest Deletion AUC on the model's
default (finest) decoder stage in ``seggradcam evaluate``, with the figures and the command.
Where no card holds such evidence, or no perturbation was informative for the model, ``auto``
is HiResCAM: its map is the sum of the gradient x activation terms themselves, where Grad-CAM
averages the gradients over space first (Draelos & Carin 2020). ``auto`` never changes the layer.

Cards: registry models in ``Resources/Models/cards/<name>.json``, the project's trained models
in their own ``model_card.json``, any other model folder in its ``seggradcam_card.json``
(written by ``seggradcam evaluate --write-card``). Read without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import SegGradCAMError
from ..selection import AUTO_METHOD, CAM_METHODS
from .declarations import SHIPPED_MODELS
from .registry import REGISTRY
from .spec import read_json_object
from .terminology import SegmentCodes, check_terminology, segment_codes

FALLBACK_METHOD = "hirescam"
REGISTRY_CARDS = SHIPPED_MODELS / "cards"
SIDECAR_CARD = "seggradcam_card.json"
FALLBACK_BASIS = (
    "no evaluation in a model card: HiResCAM, whose map keeps the gradient x activation terms "
    "(Grad-CAM averages the gradients away first; Draelos & Carin 2020)"
)


@dataclass(frozen=True)
class MethodChoice:
    """The method a run uses, what was asked for, the card read (path or None) and why."""

    method: str
    requested: str
    card: str | None
    basis: str

    def as_report(self) -> dict:
        """explain.json's ``method``, ``method_requested`` and ``method_card`` (for ``auto``)."""
        card = {"file": self.card, "basis": self.basis} if self.requested == AUTO_METHOD else None
        return {"method": self.method, "method_requested": self.requested, "method_card": card}


def card_path(model: str) -> Path:
    """Where the card of ``model`` (a registry name or a model file/folder) lies, present or not."""
    if model in REGISTRY:
        shipped = SHIPPED_MODELS / model / "model_card.json"
        family = model.split("-fold")[0]  # hdbet-fold1..4 share HD-BET's card
        return shipped if shipped.parent.is_dir() else REGISTRY_CARDS / f"{family}.json"
    path = Path(model)
    return (path if path.is_dir() else path.parent) / SIDECAR_CARD


def read_card(path: Path) -> dict | None:
    """A card's JSON object, None when there is none; a damaged card is an error."""
    return read_json_object(path) if path.is_file() else None


def resolve_method(requested: str, model: str) -> MethodChoice:
    """The method to run: ``requested`` itself (checked by the options), or for ``auto`` the card's
    choice (else HiResCAM)."""
    if requested != AUTO_METHOD:
        return MethodChoice(requested, requested, None, "asked for")
    path = card_path(model)
    entry = (read_card(path) or {}).get("default_method")
    if isinstance(entry, dict) and entry.get("method") in CAM_METHODS:
        return MethodChoice(entry["method"], AUTO_METHOD, str(path), str(entry.get("basis", "")))
    if isinstance(entry, dict) and entry.get("method") is None and entry.get("basis"):
        return MethodChoice(FALLBACK_METHOD, AUTO_METHOD, str(path), f"{entry['basis']}; HiResCAM by default")
    return MethodChoice(FALLBACK_METHOD, AUTO_METHOD, None, FALLBACK_BASIS)


def model_terminology(model: str, labels: Sequence[str]) -> dict[str, SegmentCodes]:
    """Each label's DICOM category and type from the card's ``terminology`` (checked against the
    standard's codes and the model's labels); labels without codes get the generic Tissue."""
    path = card_path(model)
    declared = (read_card(path) or {}).get("terminology", {})
    if not isinstance(declared, dict):
        raise SegGradCAMError(f'{path}: "terminology" must be an object {{"label": [category, type]}}.')
    check_terminology(declared, labels, str(path))
    return {label: segment_codes(label, declared, str(path)) for label in labels}
