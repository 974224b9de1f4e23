"""Files sent from the browser, stored only under the server's own temporary folder.

No name or path from the client is used as a file path: each upload is stored as
``upload-N<known extension>`` and each zip member as ``member-N`` (messages name it as the zip
does); a zip member whose name would leave its folder (absolute, ``..``) is refused (zip-slip).
Only the members that are read (DICOM files: ``DICM`` at byte 128; not a file set's DICOMDIR
index) are unpacked. Capped: the upload, what a zip unpacks to, and the bytes all uploads hold on
disk (the server's disk quota). A NRRD or MetaImage header naming a
separate data file is refused unread (it could name any file of the server's). Volumes are read by
:func:`SegGradCAMLib.volumes.files.read_volume` (NRRD, NIfTI, MHA; a zipped DICOM series) and
stored again as NRRD for the scene; the uploaded files are deleted then. The unpacked DICOM
series are kept when every channel was one that DICOM objects can reference
(:meth:`UploadArea.dicom_upload`: runs on them write DICOM objects), else deleted too.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..dicom.series import check_dicom_support, same_study, source_instances
from ..errors import SegGradCAMError
from ..volumes.declared import detached_data_name
from ..volumes.files import Volume, is_dicomdir, read_volume

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_UPLOAD_MB = 512
MAX_UNPACKED_MB = 2048
MAX_DISK_MB = 4096
WEB_MAX_VOXELS = 512**3  # an upload's declared size cap (the web's --max-voxels): 0.5 GiB as float32
DICOM_MAGIC = (128, b"DICM")  # a DICOM file's preamble ends at byte 128 with "DICM"


@dataclass
class UploadedFile:
    """One file as the browser sent it: its (untrusted) name and its bytes."""

    name: str
    content: bytes


@dataclass(frozen=True)
class DicomUpload:
    """A case uploaded as zipped DICOM series, one per channel: the series' folders (channel
    order), on which runs also write the DICOM SEG and Parametric Maps, and the name of their
    download (:func:`download_name`)."""

    series: tuple[Path, ...]
    download: str


class UploadArea:
    """A folder for uploads; each :meth:`store` gets a fresh sub-folder."""

    def __init__(
        self,
        root: Path,
        max_upload_mb: float = MAX_UPLOAD_MB,
        max_unpacked_mb: float = MAX_UNPACKED_MB,
        max_disk_mb: float = MAX_DISK_MB,
        max_voxels: int = WEB_MAX_VOXELS,
    ):
        self.root = Path(root)
        self.max_upload = int(max_upload_mb * 2**20)
        self.max_unpacked = int(max_unpacked_mb * 2**20)
        self.max_disk = int(max_disk_mb * 2**20)
        self.max_voxels = max_voxels
        self._count = itertools.count()

    def held(self) -> int:
        """Bytes the uploads hold on disk now."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def store(self, files: Sequence[UploadedFile]) -> list[Path]:
        """The uploaded volumes as NRRD files, one per channel in the order given (nothing else
        is kept). Raises :class:`SegGradCAMError` naming the problem (nothing of the failed
        upload is kept)."""
        if not files:
            raise SegGradCAMError("No file was uploaded.")
        total = sum(len(f.content) for f in files)
        if total > self.max_upload:
            raise SegGradCAMError(
                f"The upload is {total / 2**20:.0f} MB; the limit is {self.max_upload / 2**20:.0f} MB "
                "(the server's --max-upload-mb)."
            )
        self._check_quota(total)
        folder = self.root / f"upload{next(self._count)}"
        folder.mkdir(parents=True)
        try:
            return [self._store_one(f, folder, i) for i, f in enumerate(files)]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def dicom_upload(self, files: Sequence[UploadedFile], paths: Sequence[Path]) -> tuple[DicomUpload | None, str]:
        """The DICOM series that the volumes ``paths`` (:meth:`store` of ``files``) were read from,
        when every channel was a zipped DICOM series that DICOM objects can reference (as
        ``explain --dicom`` checks: single-frame instances on the volume's grid, one study), and
        why a DICOM upload (a channel or more) gets none (else ""). The unpacked series are kept only then."""
        folders = [series_folder(path.parent, index) for index, path in enumerate(paths)]
        upload, note = None, ""
        others = [file.name for file, folder in zip(files, folders) if not folder.is_dir()]
        if others and len(others) < len(folders):
            note = (
                f"No DICOM download for this case: {display_name(others[0])} is no zipped DICOM series; "
                "DICOM objects need every channel as one."
            )
        if paths and not others:
            try:
                check_dicom_support()
                same_study([self._instances(*channel) for channel in zip(folders, paths, files)])
                upload = DicomUpload(tuple(folders), download_name(files[0].name))
            except SegGradCAMError as error:
                note = f"No DICOM download for this case: {error}"
        if upload is None:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
        return upload, note

    def _instances(self, folder: Path, path: Path, upload: UploadedFile) -> list:
        """The source instances of the series in ``folder``, read as the volume stored at
        ``path`` (a failure names the upload, not the server's folder or files)."""
        volume = read_volume(str(path), self.max_voxels)
        try:
            return source_instances(Volume(str(folder), volume.array, volume.image))
        except SegGradCAMError as error:
            server_name, shown = re.escape(str(folder)) + r"(/member-\d+)?", display_name(upload.name)
            raise SegGradCAMError(re.sub(server_name, lambda _: shown, str(error))) from None

    def _check_quota(self, adding: int, held: int | None = None) -> None:
        """Refuse ``adding`` bytes more beyond the disk quota (``held``: the bytes held, when known)."""
        held = self.held() if held is None else held
        if held + adding > self.max_disk:
            raise SegGradCAMError(
                f"The server's disk quota of {self.max_disk / 2**20:.0f} MB for uploads is reached "
                f"({held / 2**20:.0f} MB held, {adding / 2**20:.0f} MB more needed); open the volume "
                "again after the current one is replaced, or start the server with a larger --max-disk-mb."
            )

    def _store_one(self, upload: UploadedFile, folder: Path, index: int) -> Path:
        name = upload.name.lower()
        members: dict[str, str] = {}  # an unpacked file's name -> its member's name in the zip
        if name.endswith(".zip"):
            source, members = self._unpack(upload, series_folder(folder, index))
        else:
            ending = next((e for e in VOLUME_ENDINGS if name.endswith(e)), None)
            if ending is None:
                raise SegGradCAMError(
                    f"{display_name(upload.name)}: not a volume file; upload NRRD, NIfTI (.nii.gz), "
                    "MHA or a zipped DICOM series."
                )
            source = folder / f"upload-{index}{ending}"
            source.write_bytes(upload.content)
            if detached_data_name(source) is not None:  # it would read a file of the server's
                raise SegGradCAMError(
                    f"{display_name(upload.name)}: its header names a separate data file, which an upload "
                    "cannot bring; save the volume as one file (.nrrd, .mha or .nii.gz) and upload that."
                )
        try:
            volume = read_volume(str(source), self.max_voxels)  # the declared size checked before reading
        except SegGradCAMError as error:  # named as the user knows it, not by the server's names
            text = str(error).replace(str(source), display_name(upload.name))
            raise SegGradCAMError(re.sub(r"member-\d+", lambda m: members.get(m[0], m[0]), text)) from None
        import SimpleITK as sitk

        path = folder / f"volume-{index}.nrrd"
        self._check_quota(volume.image.GetNumberOfPixels() * volume.image.GetSizeOfPixelComponent())
        sitk.WriteImage(volume.image, str(path))  # a 3D scalar volume with its geometry (read_volume checked)
        if not source.is_dir():  # an unpacked DICOM series stays for dicom_upload()
            source.unlink()
        return path

    def _unpack(self, upload: UploadedFile, folder: Path) -> tuple[Path, dict[str, str]]:
        """The DICOM members of a zip as ``member-N`` files in ``folder`` (the others are never
        unpacked), and each one's member name for messages; zip-slip, oversize and damaged
        archives refused."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(upload.content))
        except zipfile.BadZipFile:
            raise SegGradCAMError(f"{display_name(upload.name)}: not a valid zip file.") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for member in members:
                parts = member_path(member).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise SegGradCAMError(
                        f"{display_name(upload.name)}: refused, member {member.filename!r} points outside the archive."
                    )
            unpacked = sum(m.file_size for m in members)
            if unpacked > self.max_unpacked:
                raise SegGradCAMError(
                    f"{display_name(upload.name)} unpacks to {unpacked / 2**20:.0f} MB; the limit is "
                    f"{self.max_unpacked / 2**20:.0f} MB."
                )
            folder.mkdir()
            try:
                names = self._unpack_dicom(archive, members, folder, display_name(upload.name))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
                raise SegGradCAMError(
                    f"{display_name(upload.name)}: damaged zip file ({error}); zip the series again."
                ) from None
        return folder, names

    def _unpack_dicom(self, archive: zipfile.ZipFile, members: list, folder: Path, shown: str) -> dict[str, str]:
        """Unpack the DICOM ``members`` into ``folder``, counting the bytes that come out (the
        declared sizes may lie) against the unpacked limit and the disk quota; ``member-N`` ->
        the member's name (shortened) of each file written."""
        at, magic = DICOM_MAGIC
        held, written, names = self.held(), 0, {}
        for index, member in enumerate(members):
            if is_dicomdir(member_path(member).name):
                continue
            with archive.open(member) as source:
                head = source.read(at + len(magic))
                if head[at:] != magic:
                    continue
                names[f"member-{index}"] = display_name(member.filename)
                with open(folder / f"member-{index}", "wb") as target:
                    chunk = head
                    while chunk:
                        written += len(chunk)
                        if written > self.max_unpacked:
                            raise SegGradCAMError(f"{shown} unpacks to more than {self.max_unpacked / 2**20:.0f} MB.")
                        self._check_quota(written, held)
                        target.write(chunk)
                        chunk = source.read(2**20)
        return names


def display_name(name: str) -> str:
    """An untrusted client file name, shortened for messages (never used as a path)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return base[:80] or "upload"


def member_path(member: zipfile.ZipInfo) -> PurePosixPath:
    """A zip member's (untrusted) name as a path, ``\\`` read as ``/`` (never used on disk)."""
    return PurePosixPath(member.filename.replace("\\", "/"))


def series_folder(folder: Path, index: int) -> Path:
    """Where :meth:`UploadArea.store` unpacks channel ``index`` of an upload in ``folder`` when it is a zip."""
    return folder / f"dicom{index}"


def download_name(name: str) -> str:
    """The DICOM download's name for an upload named ``name`` (untrusted): ``<stem>-dicom.zip``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", re.sub(r"(?i)\.zip$", "", display_name(name))).strip("._")
    return f"{stem or 'case'}-dicom.zip"
