"""The DICOM objects of a run (highdicom): a Segmentation (SEG, BINARY, one segment per explained
class and per finding with its coded terminology) and one Parametric Map per heatmap, probability,
entropy or disagreement map, each referencing the source
series (its instances, Frame of Reference and study; the patient copied from it), with new UIDs
and the model (name, weights sha256) as the algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.terminology import CodedConcept, SegmentCodes

MANUFACTURER = "SegGradCAM"
LONG_STRING = 64  # the DICOM LO value representation's length


@dataclass(frozen=True)
class Segment:
    """One segment (an explained class, or a finding): its label, its codes and, for a finding, a
    description saying which component it is."""

    label: str
    codes: SegmentCodes
    description: str | None = None


@dataclass(frozen=True)
class Producer:
    """What wrote the objects: the model (name, weights sha256) and the SegGradCAM version."""

    model: str
    sha256: str
    version: str

    def identification(self):
        """The Algorithm Identification Sequence: model name, weights sha256 as version, SegGradCAM."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.AlgorithmIdentificationSequence(
            name=self.model[-LONG_STRING:],
            family=codes.cid7162.ArtificialIntelligence,
            version=self.sha256[:LONG_STRING] or "unknown",
            source=MANUFACTURER,
        )

    def common(self, series_number: int, description: str) -> dict:
        """The keyword arguments every object of the run shares, with a new series and instance."""
        import highdicom as hd

        return {
            "series_instance_uid": hd.UID(),
            "series_number": series_number,
            "sop_instance_uid": hd.UID(),
            "instance_number": 1,
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.model[-LONG_STRING:],
            "software_versions": self.version,
            "device_serial_number": "none",
            "series_description": description[:LONG_STRING],
            # UTF-8 whatever the source's: labels in any script, the source's texts re-encoded
            "specific_character_set": "ISO_IR 192",
        }


def _copy_body_part(source, dataset) -> None:
    """The source's Body Part Examined (General Series), which tells a reader whether the imaged
    part is paired (Laterality is then required)."""
    if "BodyPartExamined" in source:
        dataset.BodyPartExamined = source.BodyPartExamined


def _sources(series: Sequence[Sequence]) -> dict:
    """highdicom's source images: the first channel's instances give each frame its plane; the other
    channels' instances (one study, one frame of reference) are referenced as further sources."""
    further = [instance for instances in series[1:] for instance in instances]
    return {"source_images": series[0], "further_source_images": further or None}


def _coded(concept: CodedConcept):
    import highdicom as hd

    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning)


def _description(number: int, segment: Segment, producer: Producer):
    """Segment ``number``'s item of the Segment Sequence."""
    import highdicom as hd

    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label[:LONG_STRING],
        segmented_property_category=_coded(segment.codes.category),
        segmented_property_type=_coded(segment.codes.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.identification(),
    )
    if segment.description is not None:
        description.SegmentDescription = segment.description
    return description


def write_segmentation(
    path: Path, series: Sequence[Sequence], masks: np.ndarray, segments: Sequence[Segment], producer: Producer
) -> dict[str, str]:
    """A BINARY SEG of ``masks`` ``(Z, Y, X, S)`` bool (slice ``k`` on the first channel's instance
    ``series[0][k]``; the other channels' series referenced too): segment ``n`` (1-based) is
    ``segments[n - 1]``, its voxels ``masks[..., n - 1]`` (segments may overlap: a finding lies
    within its class); returns its series and instance UIDs."""
    import highdicom as hd

    descriptions = [_description(number, segment, producer) for number, segment in enumerate(segments, start=1)]
    seg = hd.seg.Segmentation(
        **_sources(series),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        omit_empty_frames=bool(masks.any()),  # a SEG holds at least one frame
        **producer.common(100, f"SegGradCAM segmentation ({producer.model})"),
    )
    _copy_body_part(series[0][0], seg)
    seg.save_as(path)
    return {"series": str(seg.SeriesInstanceUID), "instance": str(seg.SOPInstanceUID)}


def write_parametric_map(
    path: Path,
    series: Sequence[Sequence],
    values: np.ndarray,
    max_raw: float,
    title: str,
    producer: Producer,
    number: int,
    quantity: tuple[str, str] | None = None,
) -> dict[str, str]:
    """A Parametric Map (frames as :func:`write_segmentation`'s) of a map as its NRRD file stores
    it, ``values`` ``(Z, Y, X)`` float32 (0..1) or uint8 (0..255): the Real World Value Mapping's
    slope turns the stored values back into the map's own units (``max_raw`` per 1.0, or per 255
    for uint8): raw Seg-Grad-CAM units, or with ``quantity`` (LUT label of at most 16 characters,
    explanation) a quantity such as a probability (``max_raw`` 1.0); returns its series and
    instance UIDs."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    integer = values.dtype == np.uint8
    stored_max = 255 if integer else 1.0
    slope = float(max_raw) / stored_max
    label, explanation = quantity or ("SegGradCAM", f"raw Seg-Grad-CAM = stored x {slope:.6g}")
    low, high = (0, 255) if integer else (float(values.min()), float(values.max()))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label,
        lut_explanation=explanation[:LONG_STRING],
        unit=codes.UCUM.NoUnits,
        value_range=(low, high),
        slope=slope,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        **_sources(series),
        pixel_array=values.astype(np.uint16) if integer else values.astype(np.float32),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=stored_max / 2, window_width=stored_max)],
        **producer.common(100 + number, title),
    )
    _copy_body_part(series[0][0], pm)
    pm.save_as(path)
    return {"series": str(pm.SeriesInstanceUID), "instance": str(pm.SOPInstanceUID)}
