"""The DICOM MR series writer: valid by dciodvfy, read back by GDCM with the source's geometry and values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, generate_uid

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.demo.dicom_series import main, write_colin27_series, write_mr_series

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="needs Debian dicom3tools (dciodvfy)")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy reports on one file; fails where it does not recognise an MR image."""
    report = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert "MRImage" in text, text
    return [line for line in text.splitlines() if line.startswith("Error")]


def read_series(folder: Path):
    """The folder's one series as GDCM (SimpleITK's ImageSeriesReader) reads it."""
    reader = sitk.ImageSeriesReader()
    (series,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series))
    return reader.Execute()


def assert_same_geometry(read, source) -> None:
    assert read.GetSize() == source.GetSize()
    for name in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(read, name)(), getattr(source, name)(), atol=1e-4, err_msg=name)


def quantisation(source) -> float:
    """The largest change the writer may make to a float volume's values (its module docstring)."""
    values = sitk.GetArrayViewFromImage(source)
    return (float(values.max()) - float(values.min())) / 131068 * (1 + 1e-9)


def oblique_volume(colin: Path, left_handed: bool = False):
    """Colin27 resampled (linear, float32) on a 64 x 64 x 20 grid of 0.9 x 1.1 x 2.5 mm rotated 20 deg about
    x and then 20 deg about z, centred on the head; slice normal reversed where ``left_handed``."""
    head = sitk.ReadImage(str(colin))
    angle = np.deg2rad(20.0)
    about_x = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    about_z = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = about_z @ about_x @ np.diag([1.0, 1.0, -1.0 if left_handed else 1.0])
    size, spacing = np.array([64, 64, 20]), np.array([0.9, 1.1, 2.5])
    centre = head.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in head.GetSize()])
    origin = np.asarray(centre) - direction @ ((size - 1) / 2 * spacing)
    reference = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    reference.SetSpacing(spacing.tolist())
    reference.SetOrigin(origin.tolist())
    reference.SetDirection(direction.flatten().tolist())
    return sitk.Resample(sitk.Cast(head, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)


@pytest.fixture(scope="module")
def colin_series(colin27, tmp_path_factory) -> list[Path]:
    return write_colin27_series(tmp_path_factory.mktemp("colin") / "series")


@needs_dciodvfy
def test_colin27_series_is_valid_mr_image_storage(colin_series):
    assert len(colin_series) == 181
    for path in (colin_series[0], colin_series[len(colin_series) // 2], colin_series[-1]):
        assert dciodvfy_errors(path) == [], path.name
    first = pydicom.dcmread(colin_series[0], stop_before_pixels=True)
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_colin27_round_trip_keeps_geometry_and_values(colin27, colin_series):
    source, read = sitk.ReadImage(str(colin27)), read_series(colin_series[0].parent)
    assert_same_geometry(read, source)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(source))


@needs_dciodvfy
def test_oblique_anisotropic_float_round_trip(colin27, tmp_path):
    source = oblique_volume(colin27)
    paths = write_mr_series(source, tmp_path / "oblique")
    assert dciodvfy_errors(paths[0]) == []
    read = read_series(tmp_path / "oblique")
    assert_same_geometry(read, source)
    error = np.abs(sitk.GetArrayViewFromImage(read) - sitk.GetArrayViewFromImage(source)).max()
    assert 0 < error <= quantisation(source)


def test_left_handed_volume_is_written_as_the_same_physical_image(colin27, tmp_path):
    source = oblique_volume(colin27, left_handed=True)
    paths = write_mr_series(source, tmp_path / "flipped")
    read, same = read_series(tmp_path / "flipped"), sitk.Flip(source, (False, False, True))
    assert_same_geometry(read, same)
    for k, path in enumerate(paths):  # the files in the order a reader stacks them
        position = pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], read.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-4
        )
    error = np.abs(sitk.GetArrayViewFromImage(read) - sitk.GetArrayViewFromImage(same)).max()
    assert error <= quantisation(source)


def test_refuses_a_used_folder_a_sheared_grid_and_nan(tmp_path):
    image = sitk.Image([4, 4, 3], sitk.sitkInt16)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(SegGradCAMError, match="not an empty folder"):
        write_mr_series(image, tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]
    image.SetDirection([1, 0.3, 0, 0, 1, 0, 0, 0, 1])
    with pytest.raises(SegGradCAMError, match="not orthonormal"):
        write_mr_series(image, tmp_path / "sheared")
    image = sitk.GetImageFromArray(np.full((3, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(SegGradCAMError, match="NaN"):
        write_mr_series(image, tmp_path / "nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


def test_two_series_share_study_and_frame_of_reference(colin27, tmp_path):
    study, frame = generate_uid(), generate_uid()
    source = oblique_volume(colin27)
    paths = [
        path
        for number, name in enumerate(("t1c", "flair"), start=1)
        for path in write_mr_series(
            source, tmp_path / name, study_uid=study, frame_of_reference_uid=frame, series_number=number
        )
    ]
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    assert {d.StudyInstanceUID for d in datasets} == {study}
    assert {d.FrameOfReferenceUID for d in datasets} == {frame}
    series = {d.SeriesInstanceUID for d in datasets}
    instances = [d.SOPInstanceUID for d in datasets]
    assert len(series) == 2 and not series & {study, frame}
    assert len(set(instances)) == len(instances) == 40
    assert all(UID(uid).is_valid for uid in [*series, *instances])


def test_command_writes_volumes_as_one_study_and_refuses_a_taken_folder(tmp_path, capsys):
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    for name in ("t1c", "flair"):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
    volumes = [str(tmp_path / "t1c.nrrd"), str(tmp_path / "flair.nrrd")]
    main([str(tmp_path / "study"), "--volume", *volumes])
    firsts = [pydicom.dcmread(tmp_path / "study" / name / "slice0001.dcm") for name in ("t1c", "flair")]
    assert [d.SeriesDescription for d in firsts] == ["t1c", "flair"]
    assert firsts[0].StudyInstanceUID == firsts[1].StudyInstanceUID
    assert firsts[0].SeriesInstanceUID != firsts[1].SeriesInstanceUID
    before = sorted((tmp_path / "study").rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "study"), "--volume", *volumes])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert sorted((tmp_path / "study").rglob("*")) == before
