"""DICOM in and out of an explain run: the input series fetched from a DICOMweb server
(``--dicomweb``), the DICOM objects written into the output folder beside the NRRD files
(``--dicom``) and stored on the server (``--store``).

``dicom/segmentation.dcm`` (SEG, one segment per explained class with the codes of the model's
card) and ``dicom/heatmap_<class>[_<layer>].dcm`` (one Parametric Map per heatmap, the values
of its NRRD file), all referencing every channel's source series. The source series are
checked before the network runs: an input that is not a DICOM series ends the run in one line
(no patient is ever invented)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

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
from .heatmap_files import HeatmapWriter
from .outputs import DICOM_FOLDER, RunFolder

SEGMENTATION_FILE = f"{DICOM_FOLDER}/segmentation.dcm"


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


def write_dicom_objects(
    folder: RunFolder,
    series: Sequence[list],
    result: VolumeExplanation,
    writer: HeatmapWriter,
    spec: ModelSpec,
    codes: Mapping[str, SegmentCodes],
) -> dict:
    """The SEG (each class coded by ``codes``, :func:`~..models.cards.model_terminology`) and the
    Parametric Maps into ``folder`` (the heatmaps read back from their NRRD files there); returns
    explain.json's ``dicom`` entry."""
    import SimpleITK as sitk

    producer = Producer(spec.name, spec.sha256, __version__)
    segments = [Segment(c, spec.labels[c], codes[spec.labels[c]]) for c in result.classes]
    objects = {}
    with folder.writing(SEGMENTATION_FILE) as path:
        objects[SEGMENTATION_FILE] = write_segmentation(path, series, result.labels, segments, producer)
    writer.file_written()
    heatmaps = [
        (writer.entries[c], layer, info) for c in result.classes for layer, info in writer.entries[c].layers.items()
    ]
    for number, (entry, layer, info) in enumerate(heatmaps, start=1):
        name = f"{DICOM_FOLDER}/{Path(info.file).stem}.dcm"
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(folder.staging / info.file)))
        title = _map_title(writer.method, entry.name, layer)
        with folder.writing(name) as path:
            objects[name] = write_parametric_map(path, series, values, info.max_raw, title, producer, number)
        writer.file_written()
    first = series[0][0]
    return {
        "files": list(objects),
        "objects": objects,
        "study": str(first.StudyInstanceUID),
        "source_series": [str(instances[0].SeriesInstanceUID) for instances in series],
        "frame_of_reference": str(first.FrameOfReferenceUID),
        "segments": [
            {"number": n, "label": s.label, "category": _code_text(s.codes.category), "type": _code_text(s.codes.type)}
            for n, s in enumerate(segments, start=1)
        ],
    }


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
