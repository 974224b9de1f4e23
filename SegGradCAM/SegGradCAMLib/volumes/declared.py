"""What a volume file declares, checked before ITK allocates it: the number of values against a
cap, and the bytes its header promises against the bytes on disk (ITK reads a short NIfTI as
zeros, and allocates the declared size before it finds a short NRRD or MetaImage).

The bytes are checked for NIfTI (``.nii``, a ``.hdr``/``.img`` pair, ``.nii.gz``: unpacked once,
into a private temporary ``.nii`` that ITK then reads, so that ITK never takes the voxels of a
sibling ``x.nii`` for ``x.nii.gz``), and for NRRD and MetaImage with raw data attached or in one
detached file. Compressed NRRD/MetaImage data, data split over several files and other formats
get the cap only: ITK finds their short data itself, in a buffer the cap bounds.
"""

from __future__ import annotations

import gzip
import math
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import SegGradCAMError

CHUNK = 2**22
HEADER_LIMIT = 2**16  # longest header line read
SINGLE_NIFTI, PAIRED_NIFTI = ("1", "4"), ("0", "2", "5")  # niftilib's nifti_type: NIfTI-1/2 .nii, Analyze and pairs


def check_voxel_count(path: Path, size: Sequence[int], components: int, max_voxels: int) -> None:
    """Refuse a volume of ``size`` (ITK order) x ``components`` values over ``max_voxels``."""
    count = math.prod(size) * components
    if count > max_voxels:
        shape = " x ".join(map(str, size)) + (f" x {components} components" if components > 1 else "")
        raise SegGradCAMError(
            f"{path} declares {shape} voxels ({count:,}), more than the limit of {max_voxels:,} voxels "
            "(--max-voxels); raise the limit if the machine has the memory, or crop the volume."
        )


@contextmanager
def checked_file(path: Path, max_voxels: int) -> Iterator[Path]:
    """The file for ITK to read for ``path`` (itself, or the unpacked copy of a ``.nii.gz``), once
    the declared size passed the cap and the data file holds the bytes promised. Raises
    :class:`SegGradCAMError` naming a failed check, ``RuntimeError`` where ITK cannot read the header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    components = reader.GetNumberOfComponents()
    check_voxel_count(path, reader.GetSize(), components, max_voxels)
    meta = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    if "nifti_type" in meta:
        with _checked_nifti(path, meta) as source:
            yield source
        return
    values = math.prod(reader.GetSize()) * components
    data_bytes = values * sitk.Image([1, 1], reader.GetPixelID(), components).GetSizeOfPixelComponent()
    read_header = {"NrrdImageIO": _nrrd_data, "MetaImageIO": _metaimage_data}.get(meta.get("ITK_InputFilterName", ""))
    extent = read_header(path) if read_header else None
    if extent is not None:
        data, start = extent
        if not data.is_file():
            raise SegGradCAMError(f"{path}: its data file {data.name} is missing; keep it beside the header.")
        _check_size(path, data, data.stat().st_size, data_bytes + max(start, 0))
    yield path


@contextmanager
def _checked_nifti(path: Path, meta: dict[str, str]) -> Iterator[Path]:
    """NIfTI-1/2 and Analyze: ``vox_offset`` + dim[1..dim[0]] x bitpix bits, in the file itself
    (single file) or in the ``.img`` beside the ``.hdr`` (pair); a gzip file unpacked once, and a
    ``*.gz`` file read from a private copy."""
    dims = [int(meta[f"dim[{i}]"]) for i in range(1, int(meta["dim[0]"]) + 1)]
    needed = int(float(meta["vox_offset"])) + (math.prod(dims) * int(meta["bitpix"]) + 7) // 8
    if meta["nifti_type"] in PAIRED_NIFTI:  # the data in the .img beside the header
        data = path.with_suffix(".img")
        if data.is_file():
            _check_size(path, data, data.stat().st_size, needed)
        yield path
    elif meta["nifti_type"] not in SINGLE_NIFTI:
        yield path
    elif _is_gzip(path) or path.name.lower().endswith(".gz"):  # ITK reads x.nii, if any, for x.nii.gz
        packed = _is_gzip(path)
        with tempfile.TemporaryDirectory(prefix="seggradcam-") as folder:
            copy = Path(folder) / "volume.nii"
            _check_size(path, path, _copy(path, copy, needed, packed), needed, unpacked=packed)
            yield copy
    else:
        _check_size(path, path, path.stat().st_size, needed)
        yield path


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


def _copy(path: Path, target: Path, limit: int, packed: bool) -> int:
    """Copy ``path`` into ``target`` (unpacked from gzip if ``packed``), at most ``limit`` bytes;
    the number copied (a damaged or cut stream counts what came out of it)."""
    written = 0
    with open(target, "wb") as out:
        try:
            with (gzip.open if packed else open)(path, "rb") as source:
                while written < limit and (chunk := source.read(min(CHUNK, limit - written))):
                    out.write(chunk)
                    written += len(chunk)
        except (OSError, EOFError, zlib.error):
            pass
    return written


def _check_size(path: Path, data: Path, have: int, needed: int, unpacked: bool = False) -> None:
    if have < needed:
        what = f"{path}" if data == path else f"{path}: its data file {data.name}"
        raise SegGradCAMError(
            f"{what} is cut short: its header promises {needed:,} bytes"
            + (" unpacked" if unpacked else "")
            + f", the file holds {have:,}; it is damaged or was not copied completely: copy it again."
        )


def _header_lines(path: Path, last: str | None) -> tuple[list[str], int]:
    """The header's lines up to a blank line or the line starting with ``last`` (included), and
    the offset of the first byte after them."""
    lines = []
    with open(path, "rb") as file:
        while line := file.readline(HEADER_LIMIT):
            text = line.decode("latin-1").strip()
            if not text and last is None:
                break
            lines.append(text)
            if last is not None and text.lower().startswith(last):
                break
        return lines, file.tell()


def _nrrd_data(path: Path) -> tuple[Path, int] | None:
    """Raw NRRD data: its file and the offset it starts at (-1: at the end); None when ITK checks
    it itself (compressed or text encodings, data split over several files)."""
    fields, end = _nrrd_fields(path)
    name = fields.get("data file", fields.get("datafile"))
    if fields.get("encoding") != "raw" or (name is not None and (" " in name or name.startswith("LIST"))):
        return None
    skip = int(fields.get("byte skip", "0"))
    data = path if name is None else path.parent / name
    return data, -1 if skip == -1 else (end if name is None else 0) + skip


def _metaimage_data(path: Path) -> tuple[Path, int] | None:
    """Raw MetaImage data: its file and the offset it starts at (-1: at the end); None when ITK
    checks it itself (compressed data, data split over several files)."""
    fields, end = _metaimage_fields(path)
    name = fields.get("elementdatafile", "")
    if fields.get("compresseddata", "false").lower() == "true" or name.upper().startswith("LIST") or " " in name:
        return None
    if name.upper() == "LOCAL":
        return path, end
    skip = int(fields.get("headersize", "0"))
    return path.parent / name, skip


def detached_data_name(path: Path) -> str | None:
    """The data file(s) a NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) header
    names, as written; None when the data is attached or the file is of another format."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        fields = _nrrd_fields(path)[0]
        return fields.get("data file", fields.get("datafile"))
    if name.endswith((".mha", ".mhd")):
        data = _metaimage_fields(path)[0].get("elementdatafile", "LOCAL")
        return None if data.upper() == "LOCAL" else data
    return None


def _nrrd_fields(path: Path) -> tuple[dict[str, str], int]:
    """A NRRD header's fields (keys lower-case) and the offset of the first byte after it."""
    lines, end = _header_lines(path, None)
    fields = {}
    for line in lines[1:]:
        key, separator, value = line.partition(": ")
        if separator and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return fields, end


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int]:
    """A MetaImage header's fields (keys lower-case) up to ``ElementDataFile`` and the offset after it."""
    lines, end = _header_lines(path, "elementdatafile")
    fields = {}
    for line in lines:
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
    return fields, end
