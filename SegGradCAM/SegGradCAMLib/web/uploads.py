"""Files sent from the browser, stored only under the server's own temporary folder.

No name or path from the client is used as a file path: each upload is stored as
``upload-N<known extension>`` and each zip member as ``member-N``; a zip member whose name
would leave its folder (absolute, ``..``) is refused (zip-slip), and the unpacked size is capped
as well as the upload. Volumes are read by :func:`SegGradCAMLib.volumes.files.read_volume`
(NRRD, NIfTI, MHA; a zipped DICOM series) and stored again as NRRD for the scene.
"""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..errors import SegGradCAMError
from ..volumes.files import read_volume

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_UPLOAD_MB = 512
MAX_UNPACKED_MB = 2048


@dataclass
class UploadedFile:
    """One file as the browser sent it: its (untrusted) name and its bytes."""

    name: str
    content: bytes


class UploadArea:
    """A folder for uploads; each :meth:`store` gets a fresh sub-folder."""

    def __init__(self, root: Path, max_upload_mb: float = MAX_UPLOAD_MB, max_unpacked_mb: float = MAX_UNPACKED_MB):
        self.root = Path(root)
        self.max_upload = int(max_upload_mb * 2**20)
        self.max_unpacked = int(max_unpacked_mb * 2**20)
        self._count = itertools.count()

    def store(self, files: Sequence[UploadedFile]) -> list[Path]:
        """The uploaded volumes as NRRD files, one per channel in the order given. Raises
        :class:`SegGradCAMError` naming the problem (nothing of the failed upload is kept)."""
        import shutil

        if not files:
            raise SegGradCAMError("No file was uploaded.")
        total = sum(len(f.content) for f in files)
        if total > self.max_upload:
            raise SegGradCAMError(
                f"The upload is {total / 2**20:.0f} MB; the limit is {self.max_upload / 2**20:.0f} MB "
                "(the server's --max-upload-mb)."
            )
        folder = self.root / f"upload{next(self._count)}"
        folder.mkdir(parents=True)
        try:
            return [self._store_one(f, folder, i) for i, f in enumerate(files)]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _store_one(self, upload: UploadedFile, folder: Path, index: int) -> Path:
        name = upload.name.lower()
        if name.endswith(".zip"):
            source = self._unpack(upload, folder / f"dicom{index}")
        else:
            ending = next((e for e in VOLUME_ENDINGS if name.endswith(e)), None)
            if ending is None:
                raise SegGradCAMError(
                    f"{display_name(upload.name)}: not a volume file; upload NRRD, NIfTI (.nii.gz), "
                    "MHA or a zipped DICOM series."
                )
            source = folder / f"upload-{index}{ending}"
            source.write_bytes(upload.content)
        try:
            volume = read_volume(str(source))
        except SegGradCAMError as error:  # named as the user knows it, not by the server's path
            raise SegGradCAMError(str(error).replace(str(source), display_name(upload.name))) from None
        import SimpleITK as sitk

        path = folder / f"volume-{index}.nrrd"
        sitk.WriteImage(volume.image, str(path))  # a 3D scalar volume with its geometry (read_volume checked)
        return path

    def _unpack(self, upload: UploadedFile, folder: Path) -> Path:
        """The members of a zip (a DICOM series) as ``member-N`` files; zip-slip and oversize refused."""
        import io

        try:
            archive = zipfile.ZipFile(io.BytesIO(upload.content))
        except zipfile.BadZipFile:
            raise SegGradCAMError(f"{display_name(upload.name)}: not a valid zip file.") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for member in members:
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
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
            written = 0
            for index, member in enumerate(members):
                with archive.open(member) as source, open(folder / f"member-{index}", "wb") as target:
                    while chunk := source.read(2**20):  # the declared sizes may lie: count what comes out
                        written += len(chunk)
                        if written > self.max_unpacked:
                            raise SegGradCAMError(
                                f"{display_name(upload.name)} unpacks to more than {self.max_unpacked / 2**20:.0f} MB."
                            )
                        target.write(chunk)
        return folder


def display_name(name: str) -> str:
    """An untrusted client file name, shortened for messages (never used as a path)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return base[:80] or "upload"
