"""Volume files are read as they are or refused before anything is allocated: a file shorter than
its header promises (NIfTI, NRRD, MetaImage; gzip unpacked), a declared size over the voxel cap,
and ``x.nii.gz`` read from itself, never from a sibling ``x.nii``."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from SegGradCAMLib.cli import main
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.volumes.files import read_volume
from SegGradCAMLib.web.uploads import UploadArea, UploadedFile

SHAPE = (20, 30, 40)  # (Z, Y, X)


def volume_array(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(SHAPE) * 100 + 1).astype(np.float32)


def write(array: np.ndarray, path, compress: bool = False) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=compress)
    return str(path)


def first_quarter(source, target) -> str:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 4])
    return str(target)


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def nifti_declaring(path, size: tuple[int, int, int]) -> str:
    """A tiny uint8 NIfTI (1,376 bytes) whose header declares ``size`` (x, y, z) voxels."""
    write(np.ones((8, 8, 16), np.uint8), path)
    data = bytearray(path.read_bytes())
    assert len(data) == 1376
    struct.pack_into("<3h", data, 42, *size)  # dim[1..3]
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("name", ["ok.nii", "ok.nrrd", "ok.mha"])
def test_a_file_cut_short_is_refused(tmp_path, name):
    ok = tmp_path / name
    write(volume_array(), ok)
    cut = first_quarter(ok, tmp_path / f"cut_{name}")
    with pytest.raises(SegGradCAMError, match=r"cut short: its header promises [\d,]+ bytes.*holds [\d,]+"):
        read_volume(cut)


def test_a_gzip_nifti_that_unpacks_short_is_refused(tmp_path):
    ok = tmp_path / "ok.nii"
    write(volume_array(), ok)
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(ok.read_bytes()[: ok.stat().st_size // 4]))
    with pytest.raises(SegGradCAMError, match=r"short.nii.gz is cut short: .* unpacked"):
        read_volume(str(short))
    whole = tmp_path / "whole.nii.gz"
    whole.write_bytes(gzip.compress(ok.read_bytes()))
    with pytest.raises(SegGradCAMError, match=r"cut.nii.gz is cut short"):
        read_volume(first_quarter(whole, tmp_path / "cut.nii.gz"))
    np.testing.assert_array_equal(read_volume(str(whole)).array, volume_array())


def test_detached_data_files_are_checked(tmp_path):
    for header in ("ok.nhdr", "ok.mhd"):
        write(volume_array(), tmp_path / header)
        raw = tmp_path / "ok.raw"
        raw.write_bytes(raw.read_bytes()[:1000])
        with pytest.raises(SegGradCAMError, match=r"data file ok.raw is cut short"):
            read_volume(str(tmp_path / header))
        raw.unlink()


def test_cli_refuses_a_truncated_nifti(capsys, tmp_path, small_case):
    ok, flair = tmp_path / "ok.nii", tmp_path / "flair.nii"
    sitk.WriteImage(sitk.ReadImage(small_case[0]), str(ok))
    sitk.WriteImage(sitk.ReadImage(small_case[1]), str(flair))
    cut = first_quarter(ok, tmp_path / "trunc.nii")
    argv = ["explain", cut, str(flair), "--model", "demo-lesions-unet2d", "--out", str(tmp_path / "o")]
    assert "trunc.nii is cut short" in run_error(capsys, argv)
    assert not (tmp_path / "o").exists()


def test_web_upload_refuses_a_truncated_nifti(tmp_path):
    ok = tmp_path / "ok.nii"
    write(volume_array(), ok)
    content = ok.read_bytes()[: ok.stat().st_size // 4]
    with pytest.raises(SegGradCAMError, match=r"^trunc.nii is cut short"):
        UploadArea(tmp_path / "area").store([UploadedFile("trunc.nii", content)])


def test_nii_gz_is_read_from_itself_not_from_its_sibling(capsys, tmp_path, small_case):
    sitk.WriteImage(sitk.ReadImage(small_case[0]), str(tmp_path / "x.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(small_case[1]), str(tmp_path / "x.nii"))
    gz = read_volume(str(tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(gz.array, sitk.GetArrayFromImage(sitk.ReadImage(small_case[0])))
    np.testing.assert_array_equal(read_volume(str(tmp_path / "x.nii")).array, read_volume(small_case[1]).array)
    out = tmp_path / "o"
    argv = ["explain", str(tmp_path / "x.nii.gz"), str(tmp_path / "x.nii"), "--model", "demo-lesions-unet2d"]
    assert main([*argv, "--out", str(out), "--threads", "1", "--no-overview"]) == 0
    assert json.loads((out / "explain.json").read_text())["inputs"] == [str(tmp_path / "x.nii.gz"), argv[2]]
    expected = main(["explain", *small_case, "--model", "demo-lesions-unet2d", "--out", str(tmp_path / "e")])
    assert expected == 0
    report, reference = (json.loads((f / "explain.json").read_text()) for f in (out, tmp_path / "e"))
    assert [c["voxels"] for c in report["classes"]] == [c["voxels"] for c in reference["classes"]]


@pytest.mark.parametrize("size", [(300, 300, 300), (800, 800, 800)])
def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path, size):
    path = nifti_declaring(tmp_path / "liar.nii", size)
    with pytest.raises(SegGradCAMError, match=r"liar.nii is cut short: its header promises [\d,]+ bytes"):
        read_volume(path)


def test_voxel_cap_is_checked_before_reading(capsys, tmp_path):
    path = nifti_declaring(tmp_path / "huge.nii", (1500, 1500, 1500))
    err = run_error(capsys, ["explain", path, "--model", "hdbet", "--out", str(tmp_path / "o")])
    assert "declares 1500 x 1500 x 1500 voxels (3,375,000,000)" in err and "--max-voxels" in err
    ok = write(volume_array(), tmp_path / "ok.nrrd")
    with pytest.raises(SegGradCAMError, match=r"declares 40 x 30 x 20 voxels \(24,000\).*limit of 1,000"):
        read_volume(ok, max_voxels=1000)
    err = run_error(capsys, ["explain", ok, "--max-voxels", "1000", "--out", str(tmp_path / "o")])
    assert "limit of 1,000 voxels" in err
    assert read_volume(ok, max_voxels=24_000).array.shape == SHAPE


def test_voxel_cap_covers_dicom_series(tmp_path):
    write_dicom_series(np.ones((4, 16, 16)), tmp_path / "series")
    with pytest.raises(SegGradCAMError, match=r"declares 16 x 16 x 4 voxels \(1,024\)"):
        read_volume(str(tmp_path / "series"), max_voxels=1000)


NNUNET_DEMO = (
    Path(__file__).resolve().parents[2]
    / "SegGradCAM/Resources/Models/demo-lesions-nnunet/Dataset901_DemoLesions"
    / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
)
EVALUATE_QUICKLY = ["--metrics", "deletion", "--step", "0.5", "--baselines", "none", "--max-slices", "1"]


def test_evaluate_applies_the_voxel_cap(capsys, tmp_path, small_case):
    data = tmp_path / "cases.txt"
    data.write_text(",".join(small_case) + "\n")
    argv = ["evaluate", "--model", "demo-lesions-unet2d", "--data", str(data), "--out", str(tmp_path / "o")]
    err = run_error(capsys, [*argv, *EVALUATE_QUICKLY, "--max-voxels", "1000"])
    assert "limit of 1,000 voxels (--max-voxels)" in err


def test_nnunet_models_get_the_same_checks(capsys, tmp_path, small_case):
    """nnU-Net reads its inputs with its own reader (here SimpleITK's): a truncated file is refused
    before evaluate scores it, and x.nii.gz beside x.nii (whose voxels ITK would take) is refused."""
    t1c, flair = tmp_path / "t1c.nii", tmp_path / "flair.nii.gz"
    sitk.WriteImage(sitk.ReadImage(small_case[0]), str(t1c))
    sitk.WriteImage(sitk.ReadImage(small_case[1]), str(flair))
    data = tmp_path / "cases.txt"
    data.write_text(f"{first_quarter(t1c, tmp_path / 'cut.nii')},{flair}\n")
    argv = ["evaluate", "--model", str(NNUNET_DEMO), "--data", str(data), "--out", str(tmp_path / "e")]
    assert "cut.nii is cut short" in run_error(capsys, [*argv, *EVALUATE_QUICKLY, "--methods", "gradcam"])
    sitk.WriteImage(sitk.ReadImage(small_case[0]), str(tmp_path / "flair.nii"))
    argv = ["explain", str(t1c), str(flair), "--model", str(NNUNET_DEMO), "--out", str(tmp_path / "o")]
    assert "flair.nii.gz has a sibling flair.nii" in run_error(capsys, argv)


def test_a_nifti_pair_and_a_missing_data_file_are_named(tmp_path):
    write(volume_array(), tmp_path / "p.hdr")
    np.testing.assert_array_equal(read_volume(str(tmp_path / "p.hdr")).array, volume_array())
    (tmp_path / "p.img").write_bytes((tmp_path / "p.img").read_bytes()[:1000])
    with pytest.raises(SegGradCAMError, match=r"p.hdr: its data file p.img is cut short"):
        read_volume(str(tmp_path / "p.hdr"))
    write(volume_array(), tmp_path / "m.mhd")
    (tmp_path / "m.raw").unlink()
    with pytest.raises(SegGradCAMError, match=r"m.mhd: its data file m.raw is missing"):
        read_volume(str(tmp_path / "m.mhd"))


def test_a_plain_nifti_named_nii_gz_is_read_from_itself(tmp_path):
    """ITK looks for x.nii first whatever x.nii.gz holds; an uncompressed x.nii.gz is read as named."""
    write(volume_array(0), tmp_path / "plain.nii")
    (tmp_path / "plain.nii").rename(tmp_path / "x.nii.gz")
    write(volume_array(1), tmp_path / "x.nii")
    np.testing.assert_array_equal(read_volume(str(tmp_path / "x.nii.gz")).array, volume_array(0))
    (tmp_path / "x.nii.gz").write_bytes((tmp_path / "x.nii.gz").read_bytes()[:5000])
    with pytest.raises(SegGradCAMError, match=r"x.nii.gz is cut short: its header promises 96,352 bytes, the file"):
        read_volume(str(tmp_path / "x.nii.gz"))


def zeroed_in_the_middle(path: Path) -> str:
    """``path`` with 500 bytes in its middle zeroed: same length, its gzip stream damaged."""
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(500) + data[middle + 500 :])
    return str(path)


@pytest.mark.parametrize("name", ["gz.nii.gz", "gz.nrrd"])
@pytest.mark.parametrize("blocky", [False, True])
def test_a_gzip_stream_damaged_in_the_middle_is_refused(tmp_path, name, blocky):
    array = volume_array()
    if blocky:  # packs well: zeroed bytes may decode as other values, with no stream error
        array[:, :, :20], array[:, :, 20:] = 50, 0
    path = zeroed_in_the_middle(Path(write(array, tmp_path / name, compress=True)))
    with pytest.raises(SegGradCAMError, match="damaged") as error:
        read_volume(path)
    assert len(str(error.value).splitlines()) == 1


def test_a_full_temporary_folder_is_named_not_the_input(tmp_path, monkeypatch):
    from SegGradCAMLib.volumes import declared

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):
        return Full() if "w" in mode else open(file, mode, *args, **kwargs)

    path = write(volume_array(), tmp_path / "ok.nii.gz", compress=True)
    monkeypatch.setattr(declared, "open", full_open, raising=False)
    with pytest.raises(SegGradCAMError, match="No space left on device.*TMPDIR") as error:
        read_volume(path)
    assert "cut short" not in str(error.value) and len(str(error.value).splitlines()) == 1


def test_an_analyze_pair_with_gzip_data_is_checked(tmp_path):
    write(volume_array(), tmp_path / "x.hdr")
    data = (tmp_path / "x.img").read_bytes()
    (tmp_path / "x.img").unlink()
    (tmp_path / "x.img.gz").write_bytes(gzip.compress(data[: len(data) // 4]))
    with pytest.raises(SegGradCAMError, match="x.img.gz"):
        read_volume(str(tmp_path / "x.hdr"))


@pytest.mark.parametrize("name", ["spoof.nrrd", "spoof.mha"])
def test_a_nifti_type_key_in_another_format_is_not_taken_for_nifti(tmp_path, name):
    image = sitk.GetImageFromArray(volume_array())
    image.SetMetaData("nifti_type", "1")
    sitk.WriteImage(image, str(tmp_path / name))
    assert read_volume(str(tmp_path / name)).array.shape == SHAPE


def test_compressed_metaimage_data_must_unpack_to_the_promised_bytes(tmp_path):
    array = volume_array()
    array[:, :, :20], array[:, :, 20:] = 50, 0
    damaged = zeroed_in_the_middle(Path(write(array, tmp_path / "damaged.mha", compress=True)))
    lying = Path(write(array, tmp_path / "lying.mha", compress=True))
    header, separator, data = lying.read_bytes().partition(b"ElementDataFile = LOCAL\n")
    size = int(header.split(b"CompressedDataSize = ")[1].split()[0])
    header = header.replace(b"CompressedDataSize = %d" % size, b"CompressedDataSize = %d" % (size // 2))
    lying.write_bytes(header + separator + data)
    for path in (damaged, str(lying)):
        with pytest.raises(SegGradCAMError, match="damaged") as error:
            read_volume(path)
        assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_dicom_series_with_a_lost_slice_is_refused(tmp_path, damage):
    folder = tmp_path / "series"
    write_dicom_series(np.arange(6 * 16 * 16).reshape(6, 16, 16) % 300, folder)
    middle = folder / "slice003.dcm"
    if damage == "missing":
        middle.unlink()
    else:
        middle.write_bytes(middle.read_bytes()[:-300])
    with pytest.raises(SegGradCAMError, match="slice") as error:
        read_volume(str(folder))
    assert len(str(error.value).splitlines()) == 1


def test_gzip_nrrd_data_after_skipped_lines_is_read(tmp_path):
    array = volume_array()
    (tmp_path / "data.gz").write_bytes(b"a line to skip\n" + gzip.compress(array.tobytes()))
    header = f"NRRD0004\ntype: float\ndimension: 3\nsizes: {SHAPE[2]} {SHAPE[1]} {SHAPE[0]}\nendian: little\n"
    (tmp_path / "x.nhdr").write_text(header + "encoding: gzip\nline skip: 1\ndata file: data.gz\n\n")
    np.testing.assert_array_equal(read_volume(str(tmp_path / "x.nhdr")).array, array)


def test_a_gzip_nifti_unpacking_to_far_more_than_promised_is_refused(tmp_path):
    nifti = Path(write(volume_array(), tmp_path / "x.nii"))
    (tmp_path / "long.nii.gz").write_bytes(gzip.compress(nifti.read_bytes() + bytes(3 * 2**20)))
    with pytest.raises(SegGradCAMError, match="unpacks to more than the 96,352 bytes its header promises"):
        read_volume(str(tmp_path / "long.nii.gz"))
