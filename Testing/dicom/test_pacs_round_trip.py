"""A round trip through a real PACS (Orthanc over DICOMweb): the source study stored, ``seggradcam explain
--dicomweb URL --study UID --series A,B --store`` run as a CLI process, then the SEG and the Parametric Maps
found on the server by QIDO-RS, retrieved by WADO-RS, read by highdicom and compared with the run's NRRD
outputs; a bad server URL, an unknown study and a server refusing STOW each end in one line, exit 2, with
nothing stored."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicomweb_client.api import DICOMwebClient
from orthanc import free_port
from pydicom.uid import generate_uid
from dicom_series import DEMO, demo_series

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.demo.dicom_series import MR_IMAGE_STORAGE
from SegGradCAMLib.dicom.dicomweb import PARAMETRIC_MAP_STORAGE, SEGMENTATION_STORAGE, store_files
from SegGradCAMLib.reports import ExplainReport

SEGGRADCAM = Path(sys.executable).with_name("seggradcam")  # the console script installed beside this Python
SLICES = 10  # axial slices kept around the lesions: one slice batch of the 2D demo model


def cut_to_lesions(image):
    """The demo case's ``SLICES`` axial slices around its lesions' centre."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    centre = int(np.argwhere(case.labels > 0)[:, 0].mean())
    return image[:, :, centre - SLICES // 2 : centre + SLICES // 2]


@pytest.fixture(scope="module")
def source_study(tmp_path_factory) -> tuple[str, list[Path]]:
    """The demo case (t1c, flair) cut to ``SLICES`` slices, as two MR series of one study on disk."""
    folders = demo_series(tmp_path_factory.mktemp("pacs_source"), cut_to_lesions)
    return str(pydicom.dcmread(next(folders[0].iterdir())).StudyInstanceUID), folders


def files_of(folders: list[Path]) -> list[Path]:
    return [path for folder in folders for path in sorted(folder.iterdir())]


def series_uids(folders: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID) for folder in folders]


def explain_from_pacs(url: str, study: str, series: list[str], out: Path) -> subprocess.CompletedProcess:
    """``seggradcam explain --dicomweb url --study study --series A,B --store`` as a process of its own."""
    command = [str(SEGGRADCAM), "explain", "--dicomweb", url, "--study", study, "--series", ",".join(series)]
    command += ["--store", "--model", DEMO, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def round_trip(orthanc, source_study, tmp_path_factory):
    """The source study stored on the shared Orthanc, explained from there with --store (one run)."""
    study, folders = source_study
    store_files(orthanc.dicomweb, files_of(folders), None, lambda *_: None)
    out = tmp_path_factory.mktemp("pacs_run") / "out"
    run = explain_from_pacs(orthanc.dicomweb, study, series_uids(folders), out)
    return run, out


def test_the_run_stores_a_seg_and_parametric_maps_equal_to_its_outputs(orthanc, source_study, round_trip):
    study, folders = source_study
    run, out = round_trip
    assert run.returncode == 0, run.stderr
    report = ExplainReport.read(out)
    client = DICOMwebClient(orthanc.dicomweb)
    found = client.search_for_instances(study_instance_uid=study, fields=["Modality"])
    results = [item for item in found if item["00080016"]["Value"][0] != MR_IMAGE_STORAGE]
    by_class = {item["00080016"]["Value"][0]: [] for item in results}
    for item in results:
        by_class[item["00080016"]["Value"][0]].append(item)
    assert sorted(by_class) == sorted([SEGMENTATION_STORAGE, PARAMETRIC_MAP_STORAGE])
    assert len(by_class[SEGMENTATION_STORAGE]) == 1 and by_class[SEGMENTATION_STORAGE][0]["00080060"]["Value"] == [
        "SEG"
    ]
    assert len(by_class[PARAMETRIC_MAP_STORAGE]) == len(list(report.heatmaps())) > 0

    def retrieve(item) -> pydicom.Dataset:
        uids = (item[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
        return client.retrieve_instance(*uids)

    seg = hd.seg.Segmentation.from_dataset(retrieve(by_class[SEGMENTATION_STORAGE][0]))
    assert seg.SOPInstanceUID == pydicom.dcmread(out / "dicom" / "segmentation.dcm").SOPInstanceUID
    source = sorted(map(pydicom.dcmread, sorted(folders[0].iterdir())), key=lambda d: float(d.ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source], combine_segments=True, skip_overlap_checks=True
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    expected = np.zeros_like(labels)
    for number, entry in enumerate(report.classes, start=1):
        expected[labels == entry.index] = number
    assert pixels.shape == labels.shape == (SLICES, 96, 96) and np.array_equal(pixels, expected)
    assert (pixels > 0).sum() > 100  # the slices hold lesions
    referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    assert referenced <= set(series_uids(folders)) and seg.StudyInstanceUID == study
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID

    local = {pydicom.dcmread(path).SOPInstanceUID: path for path in (out / "dicom").glob("heatmap_*.dcm")}
    for item in by_class[PARAMETRIC_MAP_STORAGE]:
        pm = hd.pm.ParametricMap.from_dataset(retrieve(item))
        written = pydicom.dcmread(local[pm.SOPInstanceUID])
        assert np.array_equal(pm.pixel_array, written.pixel_array) and pm.pixel_array.dtype == np.float32
        assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID in series_uids(folders)


def one_line_exit_2(run: subprocess.CompletedProcess) -> str:
    """The run's one error line, checked to end stderr after progress lines only, and the exit code 2."""
    *progress, last = run.stderr.splitlines()
    assert run.returncode == 2 and last.startswith("seggradcam: error: "), run.stderr
    assert all(re.fullmatch(r"explain: \w+ \d+/\d+ in [0-9.]+ s", line) for line in progress), run.stderr
    return last


def test_a_bad_server_url_is_one_line(source_study, tmp_path):
    study, folders = source_study
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    line = one_line_exit_2(explain_from_pacs(url, study, series_uids(folders), tmp_path / "out"))
    assert f"Cannot reach the DICOMweb server at {url}: Connection refused" in line
    assert not (tmp_path / "out").exists()


def test_an_unknown_study_is_one_line_and_stores_nothing(orthanc, source_study, tmp_path):
    _, folders = source_study
    study = generate_uid()
    before = orthanc.instance_count()
    line = one_line_exit_2(explain_from_pacs(orthanc.dicomweb, study, series_uids(folders), tmp_path / "out"))
    assert f"No study {study} on {orthanc.dicomweb}." in line
    assert orthanc.instance_count() == before and not (tmp_path / "out").exists()


def test_a_server_refusing_stow_is_one_line_and_holds_nothing_new(refusing_orthanc, source_study, tmp_path):
    study, folders = source_study
    refusing_orthanc.upload(files_of(folders))  # Orthanc's REST API: the filter refuses DICOMweb STOW only
    before = refusing_orthanc.instance_count()
    assert before >= 2 * SLICES
    line = one_line_exit_2(explain_from_pacs(refusing_orthanc.dicomweb, study, series_uids(folders), tmp_path / "out"))
    assert "answered HTTP 403 Forbidden" in line and "nothing was stored" in line
    assert refusing_orthanc.instance_count() == before
    found = DICOMwebClient(refusing_orthanc.dicomweb).search_for_instances(study_instance_uid=study)
    assert len(found) == 2 * SLICES
