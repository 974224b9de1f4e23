"""The DICOM series a run read: its instances in the order of the volume's slices, checked
against the volume's geometry, so every object written references the right source image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SegGradCAMError
from ..volumes.files import Volume, is_dicom_file

POSITION_TOLERANCE_MM = 1e-2
ORIENTATION_TOLERANCE = 1e-4
# What the objects reference and the plane geometry they copy (type 1), and the patient's and study's
# type 2 attributes they copy, which an anonymised series often lacks: copied empty then (no value is
# invented).
REQUIRED = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)
COPIED_OR_EMPTY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def check_dicom_support() -> None:
    """highdicom (the ``dicom`` extra) is installed, else one line saying how to install it."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise SegGradCAMError(
            "DICOM output needs highdicom: pip install 'seggradcam[dicom]' (highdicom, dicomweb-client)."
        ) from None


def is_dicom_series(path: str) -> bool:
    """Whether an input is a folder of DICOM files (a series, as :func:`read_volume` reads it)."""
    folder = Path(path)
    return folder.is_dir() and any(is_dicom_file(p) for p in folder.iterdir())


def source_instances(volume: Volume) -> list:
    """The headers (pydicom datasets without pixel data) of the series ``volume`` was read from,
    instance ``k`` at slice ``k`` of ``volume.array`` ``(Z, Y, X)``; each instance's position,
    orientation, size and pixel spacing must be the volume's."""
    import pydicom

    folder = Path(volume.path)
    files = [p for p in sorted(folder.iterdir()) if is_dicom_file(p)]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    depth = volume.array.shape[0]
    if len(datasets) != depth or any(int(getattr(d, "NumberOfFrames", 1) or 1) != 1 for d in datasets):
        raise SegGradCAMError(
            f"{folder}: DICOM output needs a series of single-frame images, one per slice "
            f"({len(datasets)} files for {depth} slices)."
        )
    for path, dataset in zip(files, datasets):
        _check_references(dataset, path)
    direction, origin = volume.direction, np.asarray(volume.origin)
    slices = [_slice_index(d, origin, direction, volume.spacing[2], folder) for d in datasets]
    if sorted(slices) != list(range(depth)):
        raise SegGradCAMError(f"{folder}: the instances' positions do not give one instance per slice.")
    ordered = [d for _, d in sorted(zip(slices, datasets), key=lambda pair: pair[0])]
    for d in ordered:
        if not _on_grid(d, volume):
            raise SegGradCAMError(f"{folder}: instance {d.SOPInstanceUID} is not on the series' grid.")
        d.ImageOrientationPatient = ordered[0].ImageOrientationPatient  # equal within tolerance: one for the objects
    return ordered


def _on_grid(dataset, volume: Volume) -> bool:
    """Whether an instance's size, orientation and pixel spacing are the volume's (within tolerance)."""
    _, rows, columns = volume.array.shape
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(dataset.PixelSpacing, dtype=float)[::-1]  # Pixel Spacing: rows (Y), then columns (X)
    return bool(
        (int(dataset.Rows), int(dataset.Columns)) == (rows, columns)
        and np.allclose(orientation, volume.direction[:, :2].T.flatten(), atol=ORIENTATION_TOLERANCE)
        and np.allclose(spacing, volume.spacing[:2], rtol=0, atol=POSITION_TOLERANCE_MM / max(rows, columns))
    )


def _check_references(dataset, path: Path) -> None:
    """The instance has what the objects reference and copy (else one line naming the file); the
    patient's and study's attributes it lacks are set empty on its header."""
    from pydicom.datadict import dictionary_description, tag_for_keyword

    for keyword in REQUIRED:
        if not dataset.get(keyword):
            tag = f"{tag_for_keyword(keyword):08X}"
            raise SegGradCAMError(
                f"{path}: no {dictionary_description(keyword)} ({tag[:4]},{tag[4:]}), which the DICOM objects "
                "need; give a series with it, or leave out --dicom."
            )
    for keyword in COPIED_OR_EMPTY:
        if keyword not in dataset:
            setattr(dataset, keyword, None)


def _slice_index(dataset, origin: np.ndarray, direction: np.ndarray, step: float, folder: Path) -> int:
    """The slice ``k`` whose position ``origin + k * step * normal`` is the instance's (LPS, mm)."""
    position = np.asarray(dataset.ImagePositionPatient, dtype=float)
    k = int(round(float((position - origin) @ direction[:, 2]) / step))
    if np.abs(origin + k * step * direction[:, 2] - position).max() > POSITION_TOLERANCE_MM:
        raise SegGradCAMError(f"{folder}: instance {dataset.SOPInstanceUID} lies off the series' slice grid.")
    return k


def same_study(series: Sequence[list]) -> None:
    """Every channel's series is of one study and one frame of reference (the objects written
    reference them all; their frames lie on the first's slices)."""
    first = series[0][0]
    for instances in series[1:]:
        other = instances[0]
        if (other.StudyInstanceUID, other.FrameOfReferenceUID) != (first.StudyInstanceUID, first.FrameOfReferenceUID):
            raise SegGradCAMError(
                f"DICOM output: series {other.SeriesInstanceUID} is of another study or frame of reference "
                f"than {first.SeriesInstanceUID}; give the channels of one study."
            )
