"""The browser viewer's DICOM download (its own server, in real headless Chromium): a case uploaded
as zipped DICOM series, one per channel, is run with ``explain --dicom`` and the page offers the
DICOM SEG and the Parametric Maps as one zip; a NRRD upload offers none."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from browser import Browser, viewer_page

from SegGradCAMLib.demo.dicom_series import write_mr_series
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.reports import ExplainReport
from SegGradCAMLib.web.case import dicom_download
from SegGradCAMLib.web.uploads import DicomUpload

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
DOWNLOADS = "[...document.querySelectorAll('.download')].map(b => b.textContent.trim())"


@pytest.fixture(scope="module")
def page():
    with viewer_page() as (_, browser):
        yield browser


def zipped_series(small_case: list[str], folder: Path) -> tuple[list[Path], list[str], str]:
    """The cut demo case's channels as MR series of one study, each zipped (``t1c.zip``,
    ``flair.zip``); the zips, the series' UIDs and the study's UID."""
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    zips, series = [], []
    for number, path in enumerate(small_case, start=1):
        channel = Path(path).name.removesuffix("_cut.nrrd")
        files = write_mr_series(
            sitk.ReadImage(path),
            folder / channel,
            study_uid=study,
            frame_of_reference_uid=frame,
            series_number=number,
            series_description=channel,
        )
        series.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
        zips.append(folder / f"{channel}.zip")
        with zipfile.ZipFile(zips[-1], "w") as archive:
            for file in files:
                archive.write(file, f"{channel}/{file.name}")
    return zips, series, study


def upload_and_run(page: Browser, paths: list[Path]) -> list[str]:
    """Upload ``paths`` as the case's channels, run the demo model; the downloads offered."""
    page.set_files("#upload", [str(p) for p in paths])
    page.wait_for(f"document.querySelector('#case').innerText.startsWith({json.dumps(paths[0].name)})", timeout=60)
    assert page.text("#error") == "" and page.text("#message") == "", page.text("#error") + page.text("#message")
    assert page.js(DOWNLOADS) == []  # the new case's: none before its run
    page.choose("#model", "demo-lesions-unet2d")
    page.click("#run")
    page.wait_for(f"{DOWNLOADS}.length || !!document.querySelector('#error').offsetParent", timeout=120)
    assert page.text("#error") == "", page.text("#error")
    return page.js(DOWNLOADS)


@pytest.fixture(scope="module")
def dicom_run(page, small_case, tmp_path_factory):
    """The cut demo case uploaded as two zipped DICOM series and run: the zip and explain.json
    fetched from the page, the downloads offered, the series' UIDs and the study's UID."""
    folder = tmp_path_factory.mktemp("dicom_upload")
    zips, series, study = zipped_series(small_case, folder / "series")
    downloads = upload_and_run(page, zips)
    assert "t1c-dicom.zip" in downloads, downloads
    report = page.download(f".download:nth-of-type({downloads.index('explain.json') + 1})", folder, "explain.json")
    fetched = page.download(f".download:nth-of-type({downloads.index('t1c-dicom.zip') + 1})", folder, "t1c-dicom.zip")
    return fetched, report, series, study


def test_a_dicom_upload_offers_the_seg_and_parametric_maps(dicom_run, page):
    fetched, report_file, series, study = dicom_run
    report = json.loads(report_file.read_text())
    with zipfile.ZipFile(fetched) as archive:
        objects = {name: pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()}
    heatmaps = [info["file"] for entry in report["classes"] for info in entry["layers"].values()]
    assert len(heatmaps) >= 1 and sorted(objects) == sorted(
        ["segmentation.dcm", *(Path(f).stem + ".dcm" for f in heatmaps)]
    )
    seg = objects.pop("segmentation.dcm")
    assert seg.Modality == "SEG" and seg.SOPClassUID == SEG_STORAGE
    assert len(seg.SegmentSequence) == len(report["classes"])
    for dataset in [seg, *objects.values()]:
        assert dataset.StudyInstanceUID == study
        assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0]  # the uploaded t1c series
    assert all(d.SOPClassUID == PARAMETRIC_MAP_STORAGE for d in objects.values())
    assert [c for c in page.console if c.get("exceptionDetails")] == []


def test_a_dicom_object_linking_outside_the_run_folder_is_not_zipped(dicom_run, tmp_path):
    """The zip's members pass the served-file check: one that became a link out of the run's
    folder is refused (one line) and no zip is left; a case not uploaded as DICOM gets none."""
    fetched, report_file, _, _ = dicom_run
    report = ExplainReport.read(report_file.parent)
    folder = tmp_path / "run"
    with zipfile.ZipFile(fetched) as archive:
        archive.extractall(folder / "dicom")
    outside = tmp_path / "elsewhere.dcm"
    linked = folder / report.dicom["files"][-1]
    linked.replace(outside)
    linked.symlink_to(outside)
    upload = DicomUpload((tmp_path / "series",), "case-dicom.zip")
    with pytest.raises(SegGradCAMError, match=f"{linked.name} lies outside run"):
        dicom_download(upload, report, folder)
    assert not (folder / "case-dicom.zip").exists()
    linked.unlink()
    linked.write_bytes(outside.read_bytes())
    assert dicom_download(upload, report, folder) == ["case-dicom.zip"]
    assert dicom_download(None, report, folder) == []


def test_a_second_run_offers_its_own_dicom_zip_only(dicom_run, page, tmp_path):
    """The same DICOM upload run again (Grad-CAM after the card's HiResCAM): the zip offered holds
    exactly the second run's objects, new ones, never the first run's beside them."""
    first, _, _, _ = dicom_run
    with zipfile.ZipFile(first) as archive:
        before = pydicom.dcmread(io.BytesIO(archive.read("segmentation.dcm"))).SOPInstanceUID
    page.choose("#method", "gradcam")
    page.click("#run")
    page.wait_for("document.querySelector('#legend').innerText.includes('gradcam on')", timeout=120)
    downloads = page.js(DOWNLOADS)
    report = page.download(f".download:nth-of-type({downloads.index('explain.json') + 1})", tmp_path, "explain.json")
    fetched = page.download(f".download:nth-of-type({downloads.index('t1c-dicom.zip') + 1})", tmp_path, "t1c-dicom.zip")
    files = json.loads(report.read_text())["dicom"]["files"]
    with zipfile.ZipFile(fetched) as archive:
        assert sorted(archive.namelist()) == sorted(Path(name).name for name in files)
        objects = [pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()]
    assert before not in {d.SOPInstanceUID for d in objects}
    maps = [d for d in objects if d.SOPClassUID == PARAMETRIC_MAP_STORAGE]
    assert maps and all("gradcam" in d.SeriesDescription for d in maps), [d.SeriesDescription for d in maps]


def test_a_nrrd_upload_offers_no_dicom(page, small_case):
    downloads = upload_and_run(page, [Path(p) for p in small_case])
    assert "segmentation.nrrd" in downloads
    assert not [name for name in downloads if name.endswith(".zip") or name.endswith(".dcm")], downloads
