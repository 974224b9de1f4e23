"""What each class is, in codes a PACS and 3D Slicer understand: a segmentation category and
type per label (DICOM Segmented Property Category and Type, mostly SNOMED CT).

A model declares codes as ``{"label": ["SCT:91723000", "SCT:12738006"]}`` (category, type):
HD-BET's and deepbet's in :mod:`.declarations`, a JSON spec, ``model_card.json`` or nnU-Net's
``seggradcam_card.json`` under ``"terminology"``. A code's meaning is never typed in: it is looked
up in the DICOM standard's context groups (PS3.16, as pydicom ships them), so a code the standard
does not list is refused. The category must come from CID 7150 (Segmentation Property
Categories). A label without codes gets the generic Tissue/Tissue (CID 7150 / CID 7166) with the
label as its description. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from ..errors import SegGradCAMError

CATEGORY_CID = 7150  # DICOM CID 7150 Segmentation Property Categories
TISSUE = "SCT:85756007"  # SNOMED CT Tissue: CID 7150 (category) and CID 7166 (type)
GENERIC = (TISSUE, TISSUE)
SEGMENTATION_CIDS = (7150, 7199)  # the context groups of segmentation properties


@dataclass(frozen=True)
class CodedConcept:
    """One code: scheme designator (``SCT``), value (``12738006``) and meaning (``Brain``)."""

    scheme: str
    value: str
    meaning: str

    def text(self) -> str:
        """``SCT:12738006``, as a model declares it."""
        return f"{self.scheme}:{self.value}"


@dataclass(frozen=True)
class SegmentCodes:
    """A class's Segmented Property Category and Type; ``declared`` is False for the generic
    Tissue codes given to a label its model does not code."""

    category: CodedConcept
    type: CodedConcept
    declared: bool


@lru_cache(maxsize=1)
def _dicom_concepts() -> dict[tuple[str, str], tuple[str, tuple[int, ...]]]:
    """``(scheme, value) -> (meaning, context group ids)`` of every code in PS3.16's context groups.
    A code listed under several meanings (``Brain`` and ``Brain structure``) keeps the one of
    the segmentation context groups (CID 7150-7199), with the groups of all its listings."""
    from pydicom.sr._concepts_dict import concepts

    table: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {}
    for scheme, keywords in concepts.items():
        for codes in keywords.values():
            for value, (meaning, cids) in codes.items():
                known, groups = table.get((scheme, value), (meaning, ()))
                segmentation = any(SEGMENTATION_CIDS[0] <= cid <= SEGMENTATION_CIDS[1] for cid in cids)
                table[(scheme, value)] = (meaning if segmentation else known, groups + tuple(cids))
    return table


def lookup_code(text: str, where: str) -> tuple[CodedConcept, tuple[int, ...]]:
    """The code written ``SCHEME:VALUE`` with its meaning and context groups; ``where`` names the
    declaration in the one-line error for a code the DICOM standard does not list."""
    scheme, _, value = str(text).partition(":")
    found = _dicom_concepts().get((scheme.strip(), value.strip()))
    if found is None:
        raise SegGradCAMError(
            f"{where}: code {text!r} is not in the DICOM standard's context groups (PS3.16); "
            "write SCHEME:VALUE, e.g. SCT:12738006 (Brain)."
        )
    return CodedConcept(scheme.strip(), value.strip(), found[0]), found[1]


def segment_codes(label: str, terminology: Mapping[str, Sequence[str]], model: str = "model") -> SegmentCodes:
    """The category and type codes of ``label`` from its model's ``terminology``, else the
    generic Tissue codes; a bad declaration is a one-line error naming the model and label."""
    declared = terminology.get(label)
    pair = GENERIC if declared is None else declared
    where = f"{model} terminology of {label!r}"
    if isinstance(pair, str) or len(pair) != 2:
        raise SegGradCAMError(f'{where}: give [category, type], e.g. ["SCT:91723000", "SCT:12738006"].')
    category, groups = lookup_code(pair[0], where)
    if CATEGORY_CID not in groups:
        raise SegGradCAMError(
            f"{where}: the category {category.text()} ({category.meaning}) is not a segmentation "
            f"category (DICOM CID {CATEGORY_CID}); use e.g. SCT:91723000 (Anatomical Structure)."
        )
    return SegmentCodes(category, lookup_code(pair[1], where)[0], declared is not None)


def check_terminology(terminology: Mapping[str, Sequence[str]], labels: Sequence[str], model: str) -> None:
    """Every coded label is one of ``labels`` and its codes are the standard's."""
    for label in terminology:
        if label not in labels:
            raise SegGradCAMError(f"{model} terminology: {label!r} is not one of its labels ({', '.join(labels)}).")
        segment_codes(label, terminology, model)
