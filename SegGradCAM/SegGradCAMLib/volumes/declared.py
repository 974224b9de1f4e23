"""What a volume file declares, checked before ITK allocates it: the number of values against a
cap, and the bytes its header promises against the bytes on disk (ITK reads a short NIfTI as
zeros, and allocates the declared size before it finds a short NRRD or MetaImage).

The bytes are checked for NIfTI (``.nii``, a ``.hdr``/``.img`` or ``.img.gz`` pair, ``.nii.gz``:
unpacked once, into a private temporary ``.nii`` that ITK then reads, so that ITK never takes the
voxels of a sibling ``x.nii`` for ``x.nii.gz``), and for NRRD and MetaImage with raw or zlib/gzip data
attached or in one detached file. A compressed stream is read to its end, so that its checksum is
checked (ITK does not), with no more memory than a chunk. Data split over several files and other
formats get the cap only: ITK finds their short data itself, in a buffer the cap bounds. The
format is the one ITK picks from the file's name and magic bytes, never a header key.
"""

from __future__ import annotations

import math
import re
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

from ..errors import SegGradCAMError

CHUNK = 2**22
HEADER_LIMIT = 2**16  # longest header line read
ALLOWANCE = 2**20  # unpacked bytes allowed beyond those a header promises
SINGLE_NIFTI, PAIRED_NIFTI = ("1", "4"), ("0", "2", "5")  # niftilib's nifti_type: NIfTI-1/2 .nii, Analyze and pairs


class Extent(NamedTuple):
    """Where a header's data lies: its file, the offset it starts at (-1: raw data at the end of
    the file), whether it is zlib/gzip packed, and its packed bytes (-1: up to the file's end)."""

    data: Path
    start: int
    packed: bool = False
    length: int = -1


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
    image_io = reader.GetImageIOFromFileName(str(path))  # from the name and magic bytes, never a header key
    reader.SetImageIO(image_io)
    reader.ReadImageInformation()
    components = reader.GetNumberOfComponents()
    check_voxel_count(path, reader.GetSize(), components, max_voxels)
    meta = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    if image_io == "NiftiImageIO":
        with _checked_nifti(path, meta) as source:
            yield source
        return
    values = math.prod(reader.GetSize()) * components
    data_bytes = values * sitk.Image([1, 1], reader.GetPixelID(), components).GetSizeOfPixelComponent()
    read_header = {"NrrdImageIO": _nrrd_data, "MetaImageIO": _metaimage_data}.get(image_io)
    extent = read_header(path) if read_header else None
    if extent is not None:
        data, start, packed, length = extent
        if not data.is_file():
            raise SegGradCAMError(f"{path}: its data file {data.name} is missing; keep it beside the header.")
        have = _counted(path, data, start, data_bytes, packed, length=length) if packed else data.stat().st_size
        _check_size(path, data, have, data_bytes + (0 if packed else max(start, 0)), unpacked=packed)
    yield path


@contextmanager
def _checked_nifti(path: Path, meta: dict[str, str]) -> Iterator[Path]:
    """NIfTI-1/2 and Analyze: ``vox_offset`` + dim[1..dim[0]] x bitpix bits, in the file itself
    (single file) or in the ``.img`` (else ``.img.gz``) beside the ``.hdr`` (pair); a gzip file unpacked once, and a
    ``*.gz`` file read from a private copy."""
    dims = [int(meta[f"dim[{i}]"]) for i in range(1, int(meta["dim[0]"]) + 1)]
    needed = int(float(meta["vox_offset"])) + (math.prod(dims) * int(meta["bitpix"]) + 7) // 8
    if meta["nifti_type"] in PAIRED_NIFTI:  # the data in the .img beside the header, else in .img.gz
        data, packed_data = path.with_suffix(".img"), path.with_suffix(".img.gz")
        if data.is_file():
            _check_size(path, data, data.stat().st_size, needed)
        elif packed_data.is_file():
            packed = _is_gzip(packed_data)
            have = _counted(path, packed_data, 0, needed, packed)
            _check_size(path, packed_data, have, needed, unpacked=packed)
        yield path
    elif meta["nifti_type"] not in SINGLE_NIFTI:
        yield path
    elif _is_gzip(path) or path.name.lower().endswith(".gz"):  # ITK reads x.nii, if any, for x.nii.gz
        with _private_copy(path, needed, _is_gzip(path)) as copy:
            yield copy
    else:
        _check_size(path, path, path.stat().st_size, needed)
        yield path


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


@contextmanager
def _private_copy(path: Path, needed: int, packed: bool) -> Iterator[Path]:
    """A private temporary ``.nii`` holding the first ``needed`` bytes of ``path`` (unpacked when
    ``packed``, the whole stream checked), removed afterwards."""
    try:
        temporary = tempfile.TemporaryDirectory(prefix="seggradcam-")
    except OSError as error:
        raise _unwritable(path, needed, error) from None
    with temporary as folder:
        copy = Path(folder) / "volume.nii"
        try:
            with open(copy, "wb") as out:
                have = _counted(path, path, 0, needed, packed, out.write)
        except OSError as error:  # reading errors are SegGradCAMError already: this is the copy's
            raise _unwritable(path, needed, error) from None
        _check_size(path, path, have, needed, unpacked=packed)
        yield copy


def _unwritable(path: Path, needed: int, error: OSError) -> SegGradCAMError:
    return SegGradCAMError(
        f"Cannot write the unpacked copy of {path} into the temporary folder {tempfile.gettempdir()} "
        f"({error.strerror or error}): it is full or not writable; free space there or set TMPDIR to a "
        f"folder with room for {needed:,} bytes."
    )


def _counted(
    path: Path,
    data: Path,
    start: int,
    limit: int,
    packed: bool,
    write: Callable[[bytes], object] | None = None,
    length: int = -1,
) -> int:
    """The bytes ``data`` holds from ``start`` (unpacked from zlib or gzip when ``packed``, the
    stream read to its end so that its checksum is checked), the first ``limit`` passed to
    ``write``. Refuses a stream unpacking to more than ``limit`` + ``ALLOWANCE`` bytes."""
    have = 0
    for piece in _pieces(path, data, start, packed, length):
        if write is not None and have < limit:
            write(piece[: limit - have])
        have += len(piece)
        if not packed and have >= limit:
            break
        if have > limit + ALLOWANCE:
            raise SegGradCAMError(
                f"{_named(path, data)} unpacks to more than the {limit:,} bytes its header promises; "
                "it is damaged or does not belong to this header: copy it again."
            )
    return have


def _pieces(path: Path, data: Path, start: int, packed: bool, length: int = -1) -> Iterator[bytes]:
    """The bytes of ``data`` from ``start`` (``length`` of them; -1: all), at most ``CHUNK`` at a
    time; unpacked when ``packed`` (zlib or gzip, read up to the end of the stream and its checksum)."""
    inflater = zlib.decompressobj(47)  # 32 + 15: a zlib or a gzip header
    left = length if length >= 0 else 2**63
    try:
        with open(data, "rb") as file:
            file.seek(start)
            while left > 0 and (chunk := file.read(min(CHUNK, left))) and not inflater.eof:
                left -= len(chunk)
                while packed and chunk and not inflater.eof:
                    yield inflater.decompress(chunk, CHUNK)
                    chunk = inflater.unconsumed_tail
                if not packed:
                    yield chunk
    except OSError as error:
        raise SegGradCAMError(f"Cannot read {data}: {error.strerror or error}.") from None
    except zlib.error as error:
        raise SegGradCAMError(
            f"{_named(path, data)} is damaged: its compressed data does not unpack ({error}); copy it again."
        ) from None
    if packed and not inflater.eof:
        raise SegGradCAMError(
            f"{_named(path, data)} is cut short: its compressed stream stops before its end; "
            "it is damaged or was not copied completely: copy it again."
        )


def _named(path: Path, data: Path) -> str:
    return f"{path}" if data == path else f"{path}: its data file {data.name}"


def _check_size(path: Path, data: Path, have: int, needed: int, unpacked: bool = False) -> None:
    if have < needed:
        raise SegGradCAMError(
            f"{_named(path, data)} is cut short: its header promises {needed:,} bytes"
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


def _nrrd_data(path: Path) -> Extent | None:
    """Raw or gzip NRRD data, attached or in one file; None when ITK checks it itself (other
    encodings, data split over several files, gzip data after skipped lines or bytes)."""
    fields, end = _nrrd_fields(path)
    name = fields.get("data file", fields.get("datafile"))
    skip = _integer(path, fields, "byte skip", fields.get("byteskip", "0"))
    packed = fields.get("encoding") in ("gzip", "gz")
    plain_gzip = packed and skip == 0 and _integer(path, fields, "line skip", fields.get("lineskip", "0")) == 0
    if (fields.get("encoding") != "raw" and not plain_gzip) or (
        name is not None and (" " in name or name.startswith("LIST"))
    ):
        return None
    data = path if name is None else path.parent / name
    return Extent(data, -1 if skip == -1 else (end if name is None else 0) + skip, packed)


def _metaimage_data(path: Path) -> Extent | None:
    """Raw or compressed MetaImage data, attached or in one file; None when ITK checks it itself
    (data split over several files)."""
    fields, end = _metaimage_fields(path)
    name = fields.get("elementdatafile", "")
    if name.upper().startswith("LIST") or " " in name:
        return None
    packed = fields.get("compresseddata", "false").lower() == "true"
    length = _integer(path, fields, "compresseddatasize", "-1") if packed else -1
    if name.upper() == "LOCAL":
        return Extent(path, end, packed, length)
    return Extent(path.parent / name, 0 if packed else _integer(path, fields, "headersize", "0"), packed, length)


def _integer(path: Path, fields: dict[str, str], key: str, default: str) -> int:
    text = fields.get(key, default)
    if not re.fullmatch(r"-?\d+", text):
        raise SegGradCAMError(f"{path}: its header field {key!r} is {text!r}, not a whole number; fix the header.")
    return int(text)


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
