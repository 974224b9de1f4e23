"""A run's segments in 3D Slicer's terminology: each class's DICOM category and type codes
(:mod:`..models.terminology`, from the model's card) as the segment's terminology entry, and the
model as its DICOM segment algorithm.

These tags are what Slicer's DICOM SEG export reads (QuantitativeReporting's
``DICOMSegmentationPlugin``, through dcmqi's ``itkimage2segimage``): the entry parsed by
``vtkSlicerTerminologiesModuleLogic::DeserializeTerminologyEntry`` gives each segment's Segmented
Property Category and Type Code Sequences; ``DICOM.SegmentAlgorithmType`` and
``DICOM.SegmentAlgorithmName`` give its Segment Algorithm Type and Name (without them the export
writes MANUAL). An entry is Slicer's serialised string (``SerializeTerminologyEntry``): seven
``~``-separated fields, terminology context ~ category ~ type ~ type modifier ~ region context ~
region ~ region modifier, each code ``scheme^value^meaning``. Since Slicer 5.8 the parser takes
the codes from the string itself, so codes outside the context's list are kept. The entry has no
escapes: a meaning's ``^`` (the standard's superscripts: SCT 422855001 "ATSM Cu^64^") and ``~``
become spaces there ("ATSM Cu 64"), the scheme and value stay exact.
"""

from __future__ import annotations

import re
from typing import Mapping

from ..dicom.objects import LONG_STRING
from ..models.terminology import CodedConcept, SegmentCodes

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"  # Slicer's DICOM lists
REGION_CONTEXT = "Anatomic codes - DICOM master list"
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"


def terminologyEntry(codes: SegmentCodes) -> str:
    """Slicer's terminology entry string of a segment with these category and type codes (no
    type modifier, no anatomic region)."""
    import slicer

    none = ("", "", "")
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        TERMINOLOGY_CONTEXT, *_slicerCode(codes.category), *_slicerCode(codes.type), *none, REGION_CONTEXT, *none, *none
    )


def _slicerCode(concept: CodedConcept) -> tuple[str, str, str]:
    """A code in the order Slicer's serialiser takes it: value, scheme, meaning (its separators
    ``^`` and ``~`` made spaces)."""
    meaning = " ".join(re.sub(r"[\^~]", " ", concept.meaning).split())
    return concept.value, concept.scheme, meaning


def tagSegments(segmentationNode, terminology: Mapping[str, SegmentCodes], model: str) -> None:
    """Give each segment (named by its class) its class's terminology entry, and ``model`` as its
    automatic segmentation algorithm (the name's last 64 characters)."""
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminologyEntry(terminology[segment.GetName()]))
        segment.SetTag(ALGORITHM_TYPE_TAG, "AUTOMATIC")
        segment.SetTag(ALGORITHM_NAME_TAG, model[-LONG_STRING:])


__all__ = ["REGION_CONTEXT", "TERMINOLOGY_CONTEXT", "tagSegments", "terminologyEntry"]
