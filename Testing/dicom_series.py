"""Real DICOM MR series on disk, for the tests that read DICOM folders: a small one written by
ITK's GDCM, and the demo case as two MR series of one study (the demo model's channels)."""

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.demo.dicom_series import write_mr_series

DEMO = "demo-lesions-unet2d"


def write_dicom_series(array: np.ndarray, folder, spacing=(1.5, 1.5, 2.0), origin=(-30.0, -40.0, 10.0)) -> None:
    """A real DICOM MR series written slice by slice by ITK's GDCM (one file per slice). GDCM's writer
    sets the process's locale to "C" and leaves it so (text then reads as ASCII): it is put back."""
    import locale
    import time

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(array, folder, spacing, origin, time.time())
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(array: np.ndarray, folder, spacing, origin, now: float) -> None:
    folder.mkdir()
    volume = sitk.GetImageFromArray(array.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + str(int(now))
    for k in range(volume.GetDepth()):
        piece = volume[:, :, k]
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000e", uid + ".1"),
            ("0020|000d", uid),
            ("0020|0013", str(k + 1)),
            ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
            ("0018|0050", str(spacing[2])),
            ("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k))))),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
        ):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


def demo_series(folder: Path, transform=None) -> list[Path]:
    """The first held-out demo case (t1c, flair) as two MR series of one study; ``transform``
    (SimpleITK image -> image) changes the grid first."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    paths = demo_data.write_case(case, folder / "nrrd")
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folders = []
    for number, channel in enumerate(demo_data.CHANNELS, start=1):
        image = sitk.ReadImage(str(paths[channel]))
        image = transform(image) if transform else image
        target = folder / channel
        write_mr_series(
            image,
            target,
            study_uid=study,
            frame_of_reference_uid=frame,
            series_number=number,
            series_description=channel,
        )
        folders.append(target)
    return folders
