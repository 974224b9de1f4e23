"""DICOM in and out of an explain run: the input series fetched from a DICOMweb server
(``--dicomweb``), the DICOM objects written into the output folder beside the NRRD files
(``--dicom``) and stored on the server (``--store``).

``dicom/segmentation.dcm`` (SEG, one segment per explained class with the codes of the model's
card, then one per finding with its class's codes), ``dicom/heatmap_<class>[_f<id>][_<layer>].dcm``
(one Parametric Map per heatmap, the values of its NRRD file) and ``dicom/probability_<class>.dcm``,
``dicom/entropy.dcm``, ``dicom/<kind>_disagreement.dcm`` (values 0..1), all referencing every
channel's source series. The source series are
checked before the network runs: an input that is not a DICOM series ends the run in one line
(no patient is ever invented)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from ..dicom.objects import LONG_STRING, Producer, Segment, write_parametric_map, write_segmentation
from ..dicom.series import check_dicom_support, is_dicom_series, same_study, source_instances
from ..dicom_options import DicomOptions, shown_url
from ..errors import SegGradCAMError
from ..inference import VolumeExplanation
from ..models.registry import declared_facts
from ..models.spec import ModelSpec
from ..models.terminology import SegmentCodes
from ..pipelines import InputVolumes
from .heatmap_files import CLASS_KEY, MAP_KEY, HeatmapWriter
from .outputs import DICOM_FOLDER, RunFolder

SEGMENTATION_FILE = f"{DICOM_FOLDER}/segmentation.dcm"
QUANTITIES = {  # a map's kind -> its Real World Value Mapping's LUT label (at most 16 characters) and explanation
    "probability": ("probability", "probability of {name} (the network's output), 0..1"),
    "entropy": ("entropy", "normalised entropy of the class probabilities, 0..1"),
    "fold_disagreement": ("disagreement", "fraction of folds whose label differs from the ensemble's"),
    "mirror_disagreement": ("disagreement", "fraction of mirrorings whose label differs from the ensemble's"),
}


def source_series(inputs: InputVolumes, folder: RunFolder) -> list[list]:
    """Each channel's source instances (headers; instance ``k`` = slice ``k``), all of one study
    and frame of reference; an input that is not a DICOM series, or is the folder the objects go to
    in ``folder`` (they would join it), is a one-line error."""
    check_dicom_support()
    objects = folder.out / DICOM_FOLDER
    for volume in inputs.volumes:
        if not is_dicom_series(volume.path):
            raise SegGradCAMError(
                f"--dicom: DICOM output needs a DICOM input series, and {volume.path} is not a folder of "
                "DICOM files (no patient is ever invented); give the series' folder or leave out --dicom."
            )
        if objects.is_dir() and os.path.samefile(volume.path, objects):
            raise SegGradCAMError(
                f"--dicom: {objects} is an input series' folder, where the DICOM objects would join the series; "
                "give another --out."
            )
    series = [source_instances(volume) for volume in inputs.volumes]
    same_study(series)
    return series


def _map_title(method: str, label: str, layer: str) -> str:
    """A Parametric Map's series description (at most ``LONG_STRING`` characters): a long label is
    cut so that the method and the layer stay."""
    room = LONG_STRING - len(f"SegGradCAM {method}  {layer}")
    return f"SegGradCAM {method} {label[: max(room, 0)]} {layer}"


def _code_text(concept) -> str:
    return f"{concept.scheme}:{concept.value} ({concept.meaning})"


def _finding_label(name: str, finding: int) -> str:
    """A finding's segment label, ``<class> f<id>`` (the class cut so that it fits a LO value)."""
    suffix = f" f{finding}"
    return name[: LONG_STRING - len(suffix)] + suffix


def _segments(
    result: VolumeExplanation, labels: Sequence[str], codes: Mapping[str, SegmentCodes]
) -> tuple[np.ndarray, list[Segment]]:
    """The SEG's segments, each explained class then each finding (its own component, with its
    class's codes), and their masks ``(Z, Y, X, S)`` bool."""
    findings = [] if result.findings is None else result.findings.findings
    segments = [Segment(labels[c], codes[labels[c]]) for c in result.classes]
    segments += [
        Segment(
            _finding_label(labels[f.class_index], f.id),
            codes[labels[f.class_index]],
            f"finding {f.id} of {labels[f.class_index]} (connected component)",
        )
        for f in findings
    ]
    masks = np.zeros((*result.labels.shape, len(segments)), dtype=bool)
    for number, c in enumerate(result.classes):
        masks[..., number] = result.labels == c
    for number, f in enumerate(findings, start=len(result.classes)):
        masks[(*f.box, number)] = f.mask
    return masks, segments


MapFile = tuple[str, str, float, tuple[str, str] | None]  # file, title, max_raw, quantity (None: Seg-Grad-CAM)


def _heatmaps(result: VolumeExplanation, writer: HeatmapWriter) -> list[MapFile]:
    """Each heatmap file (classes, then findings) with its Parametric Map's title and raw maximum."""
    named = [(writer.entries[c].name, writer.entries[c].layers) for c in result.classes]
    if result.findings is not None:
        named += [
            (_finding_label(writer.labels[f.class_index], f.id), writer.finding_layers.get(f.id, {}))
            for f in result.findings.findings
        ]
    return [
        (info.file, _map_title(writer.method, name, layer), info.max_raw, None)
        for name, layers in named
        for layer, info in layers.items()
    ]


def _quantity_maps(folder: RunFolder, writer: HeatmapWriter) -> list[MapFile]:
    """Each probability, entropy or disagreement file (values 0..1) with its Parametric Map's title
    and quantity (LUT label, explanation), from the kind and class its NRRD file records."""
    import SimpleITK as sitk

    maps: list[MapFile] = []
    reader = sitk.ImageFileReader()
    for file in writer.maps:
        reader.SetFileName(str(folder.staging / file))
        reader.ReadImageInformation()
        kind = reader.GetMetaData(MAP_KEY)
        name = reader.GetMetaData(CLASS_KEY) if reader.HasMetaDataKey(CLASS_KEY) else ""
        label, explanation = QUANTITIES[kind]
        title = f"SegGradCAM {kind.replace('_', ' ')} {name}".strip()
        maps.append((file, title, 1.0, (label, explanation.format(name=name))))
    return maps


def write_dicom_objects(
    folder: RunFolder,
    series: Sequence[list],
    result: VolumeExplanation,
    writer: HeatmapWriter,
    spec: ModelSpec,
    codes: Mapping[str, SegmentCodes],
) -> dict:
    """The SEG (each class coded by ``codes``, :func:`~..models.cards.model_terminology`, then
    each finding) and the Parametric Maps into ``folder`` (the heatmaps, probability, entropy and
    disagreement maps read back from their NRRD files there); returns explain.json's ``dicom`` entry."""
    import SimpleITK as sitk

    producer = Producer(spec.name, spec.sha256, __version__)
    masks, segments = _segments(result, spec.labels, codes)
    objects = {}
    with folder.writing(SEGMENTATION_FILE) as path:
        objects[SEGMENTATION_FILE] = write_segmentation(path, series, masks, segments, producer)
    del masks
    writer.file_written()
    maps = _heatmaps(result, writer) + _quantity_maps(folder, writer)
    for number, (file, title, max_raw, quantity) in enumerate(maps, start=1):
        name = f"{DICOM_FOLDER}/{Path(file).stem}.dcm"
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(folder.staging / file)))
        with folder.writing(name) as path:
            objects[name] = write_parametric_map(path, series, values, max_raw, title, producer, number, quantity)
        writer.file_written()
    first = series[0][0]
    return {
        "files": list(objects),
        "objects": objects,
        "study": str(first.StudyInstanceUID),
        "source_series": [str(instances[0].SeriesInstanceUID) for instances in series],
        "frame_of_reference": str(first.FrameOfReferenceUID),
        "segments": [_segment_json(n, s) for n, s in enumerate(segments, start=1)],
    }


def _segment_json(number: int, segment: Segment) -> dict:
    """A segment's entry in explain.json's ``dicom.segments``."""
    entry = {
        "number": number,
        "label": segment.label,
        "category": _code_text(segment.codes.category),
        "type": _code_text(segment.codes.type),
    }
    if segment.description is not None:
        entry["description"] = segment.description
    return entry


@contextlib.contextmanager
def fetched_inputs(
    options: DicomOptions, inputs: Sequence[str], model: str, progress: Callable[[str, int, int], None]
) -> Iterator[list[str]]:
    """The run's input paths: ``inputs``, or with ``--dicomweb`` the study's series fetched into a
    private temporary folder (one folder per channel), removed when the run ends."""
    if options.dicomweb is None:
        yield list(inputs)
        return
    from ..dicom.dicomweb import fetch_series

    facts = declared_facts(model)
    channels = len(options.series) if options.series else (facts.in_channels if facts else 1)
    with tempfile.TemporaryDirectory(prefix="seggradcam-dicomweb-") as folder:
        study = options.study or ""
        folders = fetch_series(
            options.dicomweb, study, options.series, channels, options.token(), Path(folder), progress
        )
        yield [str(path) for path in folders]


def store_objects(
    options: DicomOptions, folder: RunFolder, entry: dict, progress: Callable[[str, int, int], None]
) -> SegGradCAMError | None:
    """With ``--store``: send the run's DICOM objects (still in ``folder``'s staging) to the server
    and record it in ``entry``; a refusal is recorded and returned (the run's outputs are still
    written, then the run ends with it)."""
    if not options.store or options.dicomweb is None:
        return None
    from ..dicom.dicomweb import store_files

    folder.check_places()  # an output that cannot take its place ends the run before anything is stored
    try:
        store_files(options.dicomweb, [folder.staging / name for name in entry["files"]], options.token(), progress)
    except SegGradCAMError as error:
        entry["store"] = {"server": shown_url(options.dicomweb), "stored": False, "error": str(error)}
        return SegGradCAMError(f"{error} The outputs are in {folder.out}.")
    entry["store"] = {"server": shown_url(options.dicomweb), "stored": True}
    return None
