"""Reading and writing volumes with their geometry (SimpleITK), with user-facing checks.

An input is a file SimpleITK reads (NRRD, NIfTI, MHA, ...) or a folder holding one
DICOM series. ``FILE@N`` picks volume/component ``N`` of a 4D or multi-component file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SegGradCAMError
from ..options import MAX_VOXELS
from .declared import check_voxel_count, checked_file

GEOMETRY_TOLERANCE = 1e-4
SLICE_TOLERANCE = 1e-2  # relative deviation of a slice gap from the mean gap


@dataclass
class Volume:
    """A scalar 3D volume: ``array`` ``(Z, Y, X)`` float32 plus its ITK geometry.

    spacing/origin are in ITK order (x, y, z); direction is the 3x3 ITK matrix
    (columns i, j, k); ``image`` keeps the SimpleITK image for writing alike.
    """

    path: str
    array: np.ndarray
    image: object

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.image.GetSpacing())

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(self.image.GetOrigin())

    @property
    def direction(self) -> np.ndarray:
        return np.asarray(self.image.GetDirection(), dtype=float).reshape(3, 3)

    def index_to_ras(self, index_zyx: np.ndarray) -> np.ndarray:
        """Voxel indices ``(..., 3)`` in array order ``(z, y, x)`` -> RAS (mm), as Slicer shows them."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        lps = np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction.T
        return lps * np.array([-1.0, -1.0, 1.0])

    def ras_to_index(self, ras: np.ndarray) -> np.ndarray:
        """RAS (mm) ``(..., 3)`` -> continuous voxel indices in array order ``(z, y, x)``."""
        lps = np.asarray(ras, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
        ijk = np.linalg.solve(self.direction, (lps - np.asarray(self.origin)).T).T / np.asarray(self.spacing)
        return ijk[..., ::-1]

    def geometry(self) -> dict:
        return {
            "size": list(self.image.GetSize()),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.flatten().tolist(),
        }


def safe_filename(text: str) -> str:
    """``text`` as a file-name part: runs of anything but ASCII letters, digits, ``_`` and ``-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def split_selector(text: str) -> tuple[str, int | None]:
    """``PATH@N`` -> (``PATH``, ``N``); any other text (or an existing file named so) -> (text, None)."""
    match = re.fullmatch(r"(.+)@(\d+)", text)
    if match and not Path(text).exists():
        return match.group(1), int(match.group(2))
    return text, None


def _read_image(path: Path, max_voxels: int):
    """The image of a file or of a folder's one DICOM series, checked before it is allocated
    (:mod:`.declared`)."""
    import SimpleITK as sitk

    if path.is_dir():
        return _read_series(path, max_voxels)
    with checked_file(path, max_voxels) as source:
        return sitk.ReadImage(str(source))


def _read_series(path: Path, max_voxels: int):
    """The image of a folder's one DICOM series, refused where a slice is lost: a DICOM file that
    GDCM leaves out of the series (unreadable, cut short), or unevenly spaced slices."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise SegGradCAMError(f"Folder {path} holds no DICOM series.")
    if len(series) > 1:
        raise SegGradCAMError(f"Folder {path} holds {len(series)} DICOM series; put one series per folder.")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    left_out = sorted({p.name for p in path.iterdir() if is_dicom_file(p)} - {Path(f).name for f in files})
    if left_out:
        raise SegGradCAMError(
            f"Folder {path}: DICOM file {left_out[0]} ({len(left_out)} in all) is not read with its series of "
            f"{len(files)} slices (damaged or cut short); copy the series again, or remove files of other series."
        )
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    check_voxel_count(path, [*first.GetSize()[:2], len(files)], first.GetNumberOfComponents(), max_voxels)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_even_slices(path, reader, len(files), np.asarray(image.GetDirection()).reshape(-1, image.GetDimension()))
    return image


def is_dicomdir(name: str) -> bool:
    """The file name of a file set's DICOMDIR index (PS3.10; DICM at byte 128, but no image)."""
    return name.upper() == "DICOMDIR"


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble ("DICM" at byte 128), other than a DICOMDIR index."""
    if not path.is_file() or is_dicomdir(path.name):
        return False
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def _check_even_slices(path: Path, reader, count: int, direction: np.ndarray) -> None:
    """Refuse slices whose positions (0020,0032) along the slice normal are not evenly spaced: a
    missing slice (ITK only warns, and spaces the volume by the mean gap)."""
    key = "0020|0032"
    placed = [reader.HasMetaDataKey(i, key) for i in range(count)]
    if any(placed) and not all(placed):  # ITK then orders and spaces the slices by guesswork
        name = Path(reader.GetFileNames()[placed.index(False)]).name
        raise SegGradCAMError(
            f"Folder {path}: DICOM file {name} has no Image Position (Patient) (0020,0032), so the slices' order "
            "and spacing are unknown; copy the series again, or remove that file."
        )
    if count < 3 or direction.shape[0] < 3 or not all(placed):
        return
    try:
        points = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")] for i in range(count)])
        gaps = np.diff(points @ direction[:, 2])
    except ValueError:
        raise SegGradCAMError(
            f"Folder {path}: a slice's position (0020,0032) is not three numbers; the series is damaged."
        ) from None
    if np.abs(gaps - gaps.mean()).max() > SLICE_TOLERANCE * abs(gaps.mean()):
        at = int(np.abs(gaps - gaps.mean()).argmax())
        raise SegGradCAMError(
            f"Folder {path}: its slices are not evenly spaced (gap of {abs(gaps[at]):g} mm after slice {at + 1}, "
            f"{abs(gaps.mean()):g} mm on average): a slice is missing; copy the whole series again."
        )


def _cannot_read(path: Path, error: RuntimeError) -> SegGradCAMError:
    first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown format"
    return SegGradCAMError(f"Cannot read {path}: not a readable image or DICOM series ({first[:200]}).")


def read_volume(text: str, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read one scalar 3D volume; ``text`` is a path, optionally ``PATH@N``. A file is read exactly
    as named, and refused when its header declares more than ``max_voxels`` values or more bytes
    than it holds."""
    import SimpleITK as sitk

    name, index = split_selector(text)
    path = Path(name)
    if not path.exists():
        raise SegGradCAMError(f"Input not found: {path}")
    try:
        image = _read_image(path, max_voxels)
    except RuntimeError as error:
        raise _cannot_read(path, error) from None
    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4 or components > 1:
        count = image.GetSize()[3] if image.GetDimension() == 4 else components
        if index is None:
            raise SegGradCAMError(
                f"{path} holds {count} volumes (4D or multi-component); pick one with {path}@N, N = 0..{count - 1}."
            )
        if index >= count:
            raise SegGradCAMError(f"{path}@{index}: there are only {count} volumes (0..{count - 1}).")
        if image.GetDimension() == 4:
            size = list(image.GetSize())
            image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, index])
        else:
            image = sitk.VectorIndexSelectionCast(image, index)
    elif index is not None:
        raise SegGradCAMError(f"{path} holds a single volume; drop '@{index}'.")
    if image.GetDimension() == 2 or 1 in image.GetSize():
        raise SegGradCAMError(
            f"{path} is a 2D image {tuple(image.GetSize())}; the model needs a 3D volume. "
            "Give the whole series (a DICOM folder or a 3D file), not a single slice."
        )
    if image.GetDimension() != 3:
        raise SegGradCAMError(f"{path} has {image.GetDimension()} dimensions; a 3D volume is needed.")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return Volume(str(path) if index is None else f"{path}@{index}", array, image)


def check_files(paths: Sequence[str], max_voxels: int = MAX_VOXELS) -> None:
    """For files another reader reads (nnU-Net's): what :func:`read_volume` checks before reading,
    the declared size against ``max_voxels`` and the bytes the header promises."""
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise SegGradCAMError(f"Input not found: {path}")
        try:
            with checked_file(path, max_voxels):
                pass
        except RuntimeError as error:
            raise _cannot_read(path, error) from None


def check_no_itk_sibling(paths: Sequence[str]) -> None:
    """Refuse an ``x.nii.gz`` beside an ``x.nii``: ITK's NIfTI reader (used by readers other than
    :func:`read_volume`, such as nnU-Net's SimpleITKIO) takes the voxels of ``x.nii`` for it."""
    for text in paths:
        path = Path(text)
        sibling = path.with_name(path.name[:-3])
        if path.name.lower().endswith(".nii.gz") and sibling.exists():
            raise SegGradCAMError(
                f"{path} has a sibling {sibling.name}, whose voxels ITK-based readers (nnU-Net's SimpleITKIO) "
                "take instead; move one of the two elsewhere."
            )


def same_geometry(a: Volume, b: Volume, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """True when both volumes lie on the same voxel grid."""
    return (
        a.image.GetSize() == b.image.GetSize()
        and np.allclose(a.spacing, b.spacing, atol=tolerance)
        and np.allclose(a.origin, b.origin, atol=tolerance * max(1.0, max(map(abs, a.origin))))
        and np.allclose(a.direction, b.direction, atol=tolerance)
    )


def read_channels(paths: Sequence[str], max_voxels: int = MAX_VOXELS) -> list[Volume]:
    """Read co-registered input volumes (one per model channel); all on one grid."""
    volumes = [read_volume(p, max_voxels) for p in paths]
    for other in volumes[1:]:
        if not same_geometry(volumes[0], other):
            raise SegGradCAMError(
                f"{other.path} does not lie on the same grid as {volumes[0].path} "
                f"(size/spacing/origin/direction differ); resample the channels onto one grid first."
            )
    return volumes


def write_like(array: np.ndarray, reference: Volume, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``array`` ``(Z, Y, X)`` with exactly the reference's spacing, origin and direction,
    and ``metadata`` as the file's key/value fields."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference.image)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), useCompression=True)
