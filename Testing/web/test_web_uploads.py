"""What the browser viewer does with uploaded files: only under its own folder, never by the
client's names; zip-slip and oversize refused; a zipped DICOM series read with its geometry."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.demo.dicom_series import write_mr_series
from SegGradCAMLib.web.uploads import DicomUpload, UploadArea, UploadedFile


def nrrd_bytes(tmp_path, array: np.ndarray, spacing=(1.0, 1.2, 2.0)) -> bytes:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path = tmp_path / "source.nrrd"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def files_under(folder) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_volumes_are_stored_under_generated_names_only(tmp_path):
    area = UploadArea(tmp_path / "uploads")
    content = nrrd_bytes(tmp_path, np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    paths = area.store([UploadedFile("../../etc/evil name.nrrd", content), UploadedFile("/abs/b.nrrd", content)])
    assert all(p.resolve().is_relative_to((tmp_path / "uploads").resolve()) for p in paths)
    assert files_under(tmp_path / "uploads") == ["upload0/volume-0.nrrd", "upload0/volume-1.nrrd"]
    image = sitk.ReadImage(str(paths[0]))
    assert image.GetSpacing() == pytest.approx((1.0, 1.2, 2.0)) and image.GetSize() == (6, 5, 4)


@pytest.mark.parametrize("member", ["../escape.dcm", "/etc/escape.dcm", "a/../../escape.dcm", "C:/escape.dcm"])
def test_zip_slip_is_refused_and_nothing_is_kept(tmp_path, member):
    area = UploadArea(tmp_path / "uploads")
    with pytest.raises(SegGradCAMError, match="points outside the archive"):
        area.store([UploadedFile("series.zip", zipped({"ok.dcm": b"x", member: b"y"}))])
    assert files_under(tmp_path / "uploads") == [] and not (tmp_path / "escape.dcm").exists()


def test_upload_and_unpacked_sizes_are_capped(tmp_path):
    area = UploadArea(tmp_path / "uploads", max_upload_mb=1, max_unpacked_mb=1)
    with pytest.raises(SegGradCAMError, match="the limit is 1 MB"):
        area.store([UploadedFile("big.nrrd", b"0" * (2 * 2**20))])
    bomb = zipped({"zeros.dcm": b"\0" * (3 * 2**20)})  # a few kB packed, 3 MB unpacked
    assert len(bomb) < 2**20
    with pytest.raises(SegGradCAMError, match="unpacks to 3 MB; the limit is 1 MB"):
        area.store([UploadedFile("bomb.zip", bomb)])
    assert files_under(tmp_path / "uploads") == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "not a volume file"),
        ("scan.nii.gz", b"not a nifti", "Cannot read scan.nii.gz"),
        ("series.zip", b"not a zip", "not a valid zip file"),
        ("series.zip", zipped({"readme.txt": b"no dicom here"}), "holds no DICOM series"),
    ],
)
def test_bad_uploads_name_the_problem(tmp_path, name, content, message):
    with pytest.raises(SegGradCAMError, match=message) as raised:
        UploadArea(tmp_path / "uploads").store([UploadedFile(name, content)])
    assert str(tmp_path) not in str(raised.value)  # the message names the user's file, not the server's path


def test_a_zipped_dicom_series_is_read_with_its_geometry(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (6, 16, 20)).astype(np.int16)
    write_dicom_series(array, tmp_path / "series", spacing=(0.8, 0.9, 2.5))
    members = {f"dicom/{p.name}": p.read_bytes() for p in sorted((tmp_path / "series").iterdir())}
    [path] = UploadArea(tmp_path / "uploads").store([UploadedFile("series.zip", zipped(members))])
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx((0.8, 0.9, 2.5))
    assert np.array_equal(sitk.GetArrayFromImage(image), array)


WITHOUT_TRAME = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("trame", "trame_slicer", "trame_server"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
from SegGradCAMLib.cli import main
sys.exit(main(["web"]))
"""


def test_without_the_web_extra_one_line_names_it():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WITHOUT_TRAME], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[web]"' in lines[0], done.stderr


def mr_series(folder) -> list:
    """An MR series (5 slices) of the project's writer, in a new study: its files."""
    image = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 900, (5, 12, 14)).astype(np.float32))
    return write_mr_series(image, folder)


def mr_series_zip(folder) -> bytes:
    return zipped({f"s/{p.name}": p.read_bytes() for p in mr_series(folder)})


def test_only_the_volume_and_its_series_are_kept_and_unread_members_are_never_unpacked(tmp_path):
    area = UploadArea(tmp_path / "uploads")
    series = {f"dicom/{p.name}": p.read_bytes() for p in mr_series(tmp_path / "series")}
    content = zipped({**series, "padding.bin": b"\0" * (64 * 2**20)})  # 64 MB of zeros beside the series
    assert len(content) < 2**20
    uploaded = [UploadedFile("../My Series (1).ZIP", content)]
    [path] = area.store(uploaded)
    members = [f"upload0/dicom0/member-{i}" for i in range(5)]  # the series' 5 files; padding.bin never unpacked
    assert files_under(tmp_path / "uploads") == [*members, "upload0/volume-0.nrrd"]
    assert sitk.ReadImage(str(path)).GetSize() == (14, 12, 5)
    upload = DicomUpload((path.parent / "dicom0",), "My_Series_1-dicom.zip")
    assert area.dicom_upload(uploaded, [path]) == (upload, "")
    assert files_under(tmp_path / "uploads") == [*members, "upload0/volume-0.nrrd"]  # kept for the runs


def test_a_case_not_all_dicom_keeps_no_series(tmp_path):
    area = UploadArea(tmp_path / "uploads")
    volume = nrrd_bytes(tmp_path, np.zeros((5, 12, 14), np.float32), spacing=(1.0, 1.0, 1.0))
    uploaded = [UploadedFile("series.zip", mr_series_zip(tmp_path / "a")), UploadedFile("b.nrrd", volume)]
    paths = area.store(uploaded)
    assert area.dicom_upload(uploaded, paths) == (
        None,
        "No DICOM download for this case: b.nrrd is no zipped DICOM series; DICOM objects need every channel as one.",
    )
    assert files_under(tmp_path / "uploads") == ["upload0/volume-0.nrrd", "upload0/volume-1.nrrd"]
    nrrd_only = [UploadedFile("a.nrrd", volume), UploadedFile("b.nrrd", volume)]
    assert area.dicom_upload(nrrd_only, area.store(nrrd_only)) == (None, "")  # no DICOM meant: nothing said


def test_series_of_two_studies_get_no_dicom_download_and_say_why(tmp_path):
    area = UploadArea(tmp_path / "uploads")
    uploaded = [UploadedFile(f"{c}.zip", mr_series_zip(tmp_path / c)) for c in ("t1c", "flair")]  # a study each
    paths = area.store(uploaded)
    upload, note = area.dicom_upload(uploaded, paths)
    assert upload is None and note.startswith("No DICOM download for this case: ") and "another study" in note
    assert "\n" not in note and str(tmp_path) not in note
    assert files_under(tmp_path / "uploads") == ["upload0/volume-0.nrrd", "upload0/volume-1.nrrd"]


def test_the_servers_disk_quota_holds_across_uploads(tmp_path):
    area = UploadArea(tmp_path / "uploads", max_disk_mb=2)
    content = nrrd_bytes(tmp_path, np.zeros((50, 50, 60), np.float32))  # 0.6 MB
    area.store([UploadedFile("a.nrrd", content)])
    area.store([UploadedFile("b.nrrd", content)])
    with pytest.raises(SegGradCAMError, match="disk quota of 2 MB"):
        area.store([UploadedFile("c.nrrd", content)])
    assert files_under(tmp_path / "uploads") == ["upload0/volume-0.nrrd", "upload1/volume-0.nrrd"]


def lying_zip() -> bytes:
    """A zip whose local and central headers declare 100 bytes for a 200 kB member."""
    content = bytearray(zipped({"a.dcm": b"DICM" * 50_000}))
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = content.find(signature) + size_at
        content[at : at + 4] = (100).to_bytes(4, "little")
    return bytes(content)


def test_a_zip_whose_sizes_lie_is_refused_with_one_line(tmp_path):
    with pytest.raises(SegGradCAMError, match="series.zip: damaged zip file"):
        UploadArea(tmp_path / "uploads").store([UploadedFile("series.zip", lying_zip())])
    assert files_under(tmp_path / "uploads") == []


def test_an_upload_declaring_more_voxels_than_the_cap_is_refused_unread(tmp_path):
    content = nrrd_bytes(tmp_path, np.zeros((20, 20, 20), np.float32))
    with pytest.raises(SegGradCAMError, match=r"^a.nrrd declares 20 x 20 x 20 voxels \(8,000\).*--max-voxels"):
        UploadArea(tmp_path / "uploads", max_voxels=1000).store([UploadedFile("a.nrrd", content)])
    assert files_under(tmp_path / "uploads") == []
    assert UploadArea(tmp_path / "uploads").max_voxels == 512**3  # the viewer's default cap


@pytest.mark.parametrize(
    "name, header",
    [
        ("x.nhdr", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 2\nencoding: raw\ndata file: {data}\n\n"),
        ("x.nrrd", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 2\nencoding: raw\ndatafile: {data}\n\n"),
        (
            "x.mhd",
            "ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\nElementDataFile = {data}\n",
        ),
        (
            "x.mha",
            "ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\nElementDataFile = {data}\n",
        ),
    ],
    ids=["nhdr", "nrrd", "mhd", "mha"],
)
def test_a_header_naming_a_data_file_elsewhere_is_refused_unread(tmp_path, name, header):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(32)))
    area = UploadArea(tmp_path / "uploads")
    for data in (str(secret), "../../secret.bin"):
        with pytest.raises(SegGradCAMError, match=r"^x\.\w+: .*data file") as raised:
            area.store([UploadedFile(name, header.format(data=data).encode())])
        assert "\n" not in str(raised.value) and files_under(tmp_path / "uploads") == []


def test_a_series_off_its_grid_gets_no_dicom_download_and_the_note_names_the_upload(tmp_path):
    files = mr_series(tmp_path / "series")
    tilted = pydicom.dcmread(files[2])
    tilted.ImageOrientationPatient = [1, 0.002, 0, 0, 1, 0]  # one slice off the series' grid
    tilted.save_as(files[2])
    area = UploadArea(tmp_path / "uploads")
    uploaded = [UploadedFile("odd.zip", zipped({f"s/{p.name}": p.read_bytes() for p in files}))]
    upload, note = area.dicom_upload(uploaded, area.store(uploaded))
    assert upload is None
    assert (
        note
        == f"No DICOM download for this case: odd.zip: instance {tilted.SOPInstanceUID} is not on the series' grid."
    )


def test_a_zipped_file_set_with_its_dicomdir_index_is_a_dicom_upload(tmp_path):
    """A series copied from a CD or a PACS export comes with the file set's DICOMDIR index (DICM at
    byte 128 too): it is no slice of the series and is never unpacked."""
    from pydicom.fileset import FileSet

    file_set = FileSet()
    for path in mr_series(tmp_path / "series"):
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "cd")
    files = [p for p in (tmp_path / "cd").rglob("*") if p.is_file()]
    members = {p.relative_to(tmp_path / "cd").as_posix(): p.read_bytes() for p in files}
    assert "DICOMDIR" in members and len(members) == 6
    area = UploadArea(tmp_path / "uploads")
    uploaded = [UploadedFile("cd.zip", zipped(members))]
    [path] = area.store(uploaded)
    upload, note = area.dicom_upload(uploaded, [path])
    assert (upload, note) == (DicomUpload((path.parent / "dicom0",), "cd-dicom.zip"), "")
    assert len(list((path.parent / "dicom0").iterdir())) == 5  # the slices only


def test_a_damaged_member_is_named_as_the_zip_names_it(tmp_path):
    files = mr_series(tmp_path / "series")
    members = {f"s/{p.name}": p.read_bytes() for p in files}
    members["s/broken.dcm"] = files[0].read_bytes()[:400]  # a slice cut short
    with pytest.raises(SegGradCAMError) as raised:
        UploadArea(tmp_path / "uploads").store([UploadedFile("case.zip", zipped(members))])
    assert str(raised.value).startswith("Folder case.zip: DICOM file broken.dcm (1 in all) is not read with its series")
    assert "member-" not in str(raised.value) and files_under(tmp_path / "uploads") == []


def test_a_series_the_objects_cannot_reference_gets_no_dicom_download_and_says_why(tmp_path):
    """An anonymised series without a Frame of Reference UID: explain --dicom would fail on it, so
    the case is run without DICOM objects and the note names the upload, not a server file."""
    files = mr_series(tmp_path / "series")
    for path in files:
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)
    area = UploadArea(tmp_path / "uploads")
    uploaded = [UploadedFile("anon.zip", zipped({f"s/{p.name}": p.read_bytes() for p in files}))]
    upload, note = area.dicom_upload(uploaded, area.store(uploaded))
    assert upload is None and note.startswith("No DICOM download for this case: anon.zip: ")
    assert "Frame of Reference UID" in note and "member-" not in note and str(tmp_path) not in note, note
    assert files_under(tmp_path / "uploads") == ["upload0/volume-0.nrrd"]
