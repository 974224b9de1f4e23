"""A real DICOM MR series on disk, for the tests that read DICOM folders."""

import numpy as np
import SimpleITK as sitk


def write_dicom_series(array: np.ndarray, folder, spacing=(1.5, 1.5, 2.0), origin=(-30.0, -40.0, 10.0)) -> None:
    """A real DICOM MR series written slice by slice by ITK's GDCM (one file per slice)."""
    import time

    folder.mkdir()
    volume = sitk.GetImageFromArray(array.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time()))
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
