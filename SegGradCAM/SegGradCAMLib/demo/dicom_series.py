"""A real DICOM MR series from a volume, for tests, docs and a DICOM study to send to a PACS.

:func:`write_mr_series` writes a SimpleITK 3D image as MR Image Storage, one file per slice
(pydicom, explicit VR little endian), with the attributes the MR Image IOD requires. Geometry:
ITK's physical space is LPS, DICOM's patient space, so slice ``k`` lies at
``origin + k * spacing_z * direction[:, 2]`` with Image Orientation (Patient) = direction columns
0 and 1. A left-handed direction (slice normal opposite to row x column) is written as the same
physical image with its slices in reverse order, so a reader gets it z-flipped.

Pixel values: an integer-valued volume within int16 is stored exactly (slope 1, intercept 0);
any other volume is stored as int16 with Rescale Slope/Intercept spanning its range, which
changes each value by at most half a slope: (max - min) / 131068 (1/65534 of the range, halved).

The acquisition parameters (TR, TE, ...) are nominal, :data:`MR_ACQUISITION` unless given: a
volume file carries none.

``python -m SegGradCAMLib.demo.dicom_series OUT [--volume FILE ...]`` writes Colin27, or the
given volumes, as series of one study on one frame of reference into ``OUT/<series name>/``.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import SegGradCAMError
from .data import _MRICRON

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
COLIN27 = _MRICRON / "ch2.nii.gz"
INT16 = np.iinfo(np.int16)
# Nominal parameters of a 3D T1-weighted gradient-echo acquisition at 1.5 T (DICOM keywords).
MR_ACQUISITION: dict[str, Any] = {
    "ScanningSequence": "GR",
    "SequenceVariant": "SP",
    "ScanOptions": "",
    "MRAcquisitionType": "3D",
    "RepetitionTime": 18.0,
    "EchoTime": 10.0,
    "EchoTrainLength": 1,
    "FlipAngle": 30.0,
    "MagneticFieldStrength": 1.5,
    "ImagedNucleus": "1H",
}


def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _right_handed(image):
    """``image``, or the same physical image with its slices reversed where its direction is left-handed;
    refused where the direction is not orthonormal (DICOM cannot describe a sheared grid)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise SegGradCAMError("A DICOM MR series needs a scalar 3D image; pick one volume of the file.")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise SegGradCAMError("The image's direction is not orthonormal; resample it before writing it as DICOM.")
    return sitk.Flip(image, (False, False, True)) if np.linalg.det(direction) < 0 else image


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """``(Z, Y, X)`` values -> (int16 array ``(Z, Y, X)``, rescale and window attributes), where
    value = stored * RescaleSlope + RescaleIntercept (no rescale where the values are stored as they are)."""
    if not np.isfinite(array).all():
        raise SegGradCAMError("The image holds NaN or infinite values; DICOM pixel data cannot store them.")
    low, high = float(array.min()), float(array.max())
    if np.array_equal(array, np.round(array)) and INT16.min <= low and high <= INT16.max:
        stored, rescale = array.astype(np.int16), {}
    else:
        slope = float(_ds((high - low) / (INT16.max - INT16.min - 1) or 1.0))
        intercept = float(_ds(low - INT16.min * slope))
        stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), INT16.min, INT16.max)
        stored = stored.astype(np.int16)
        rescale = {"RescaleSlope": _ds(slope), "RescaleIntercept": _ds(intercept)}
    window = {"WindowCenter": _ds((low + high) / 2), "WindowWidth": _ds(max(high - low, 1.0))}
    return stored, {**rescale, **window}


def _series_dataset(image, when: datetime, attributes: Mapping[str, Any]):
    """The attributes every slice of the series shares (modules Patient to SOP Common, less the slice's own)."""
    from pydicom.dataset import Dataset

    spacing = image.GetSpacing()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    values: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",
        "SOPClassUID": MR_IMAGE_STORAGE,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyDate": date,
        "StudyTime": time,
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": "",
        "Modality": "MR",
        "BodyPartExamined": "HEAD",
        "SeriesDate": date,
        "SeriesTime": time,
        "PatientPosition": "HFS",
        "PositionReferenceIndicator": "",
        "Manufacturer": "SegGradCAM",
        "ContentDate": date,
        "ContentTime": time,
        "ImageType": ["DERIVED", "SECONDARY", "OTHER"],
        "ImageOrientationPatient": [_ds(v) for v in direction[:, :2].T.flatten()],
        "PixelSpacing": [_ds(spacing[1]), _ds(spacing[0])],
        "SliceThickness": _ds(spacing[2]),
        "SpacingBetweenSlices": _ds(spacing[2]),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": image.GetSize()[1],
        "Columns": image.GetSize()[0],
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
        **MR_ACQUISITION,
        **attributes,
    }
    shared = Dataset()
    for keyword, value in values.items():
        setattr(shared, keyword, value)
    return shared


def write_mr_series(
    image,
    folder: Path | str,
    *,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "SegGradCAM demo MR",
    series_number: int = 1,
    patient_name: str = "Demo^Colin27",
    patient_id: str = "SGC-DEMO-0001",
    when: datetime | None = None,
    acquisition: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the SimpleITK 3D ``image`` as a new DICOM MR series in ``folder`` (absent or empty), one
    file per slice; the paths in slice order. ``study_uid``/``frame_of_reference_uid`` put series
    in one study on one frame of reference (new ones where None); ``when``: the study date and time
    (now); ``acquisition``: DICOM keywords and values over :data:`MR_ACQUISITION`. Written whole
    or not at all."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SegGradCAMError(f"{folder} exists and is not an empty folder; give a new folder for the series.")
    image = _right_handed(image)
    stored, pixel_attributes = _stored_values(sitk.GetArrayViewFromImage(image))
    shared = _series_dataset(
        image,
        when or datetime.now(),
        {
            "PatientName": patient_name,
            "PatientID": patient_id,
            "StudyInstanceUID": study_uid or generate_uid(),
            "SeriesInstanceUID": generate_uid(),
            "SeriesNumber": series_number,
            "SeriesDescription": series_description,
            "FrameOfReferenceUID": frame_of_reference_uid or generate_uid(),
            **pixel_attributes,
            **(acquisition or {}),
        },
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_slices(shared, image, stored, partial)
        if folder.exists():
            folder.rmdir()
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return sorted(folder.glob("slice*.dcm"))


def _write_slices(shared, image, stored: np.ndarray, folder: Path) -> None:
    """One file per slice of ``stored`` ``(Z, Y, X)`` into ``folder``: ``shared`` plus the slice's own attributes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    for k, plane in enumerate(stored):
        dataset = shared.copy()
        dataset.SOPInstanceUID = generate_uid()
        dataset.InstanceNumber = k + 1
        position = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k)))
        dataset.ImagePositionPatient = [_ds(v) for v in position]
        dataset.SliceLocation = _ds(position @ normal)
        dataset.PixelData = np.ascontiguousarray(plane).astype("<i2").tobytes()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.save_as(folder / f"slice{k + 1:04d}.dcm", enforce_file_format=True)


def write_colin27_series(folder: Path | str) -> list[Path]:
    """Colin27 (Debian ``mricron-data``) as one MR series in ``folder``; the paths in slice order."""
    import SimpleITK as sitk

    if not COLIN27.is_file():
        raise SegGradCAMError(f"{COLIN27} not found: install the Debian package mricron-data.")
    return write_mr_series(sitk.ReadImage(str(COLIN27)), folder, series_description="Colin27 T1")


def main(argv: list[str] | None = None) -> None:
    """``python -m SegGradCAMLib.demo.dicom_series OUT [--volume FILE ...]``: a DICOM study in ``OUT/<series>/``."""
    import argparse
    import sys

    from pydicom.uid import generate_uid

    from ..volumes.files import read_volume, safe_filename

    parser = argparse.ArgumentParser(
        prog="python -m SegGradCAMLib.demo.dicom_series",
        description="Write Colin27, or the given volumes, as DICOM MR series of one study (OUT/<series name>/).",
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--volume", nargs="+", metavar="FILE", help="volume files (default: Colin27)")
    args = parser.parse_args(argv)
    texts = args.volume or [str(COLIN27)]
    names = [safe_filename(Path(text).name.split(".")[0]) for text in args.volume] if args.volume else ["colin27"]
    if len(set(names)) < len(names) or "" in names:
        parser.error(f"the volumes' file names give series names {names}: make them distinct.")
    study, frame, when = generate_uid(), generate_uid(), datetime.now()
    try:
        taken = [args.out / name for name in names if (args.out / name).exists()]
        if taken:
            raise SegGradCAMError(f"{taken[0]} exists; give a new output folder.")
        images = [read_volume(text).image for text in texts]
        for number, (name, image) in enumerate(zip(names, images), start=1):
            write_mr_series(
                image,
                args.out / name,
                study_uid=study,
                frame_of_reference_uid=frame,
                series_description=name,
                series_number=number,
                when=when,
            )
            print(f"{name}: {args.out / name}")
    except SegGradCAMError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
