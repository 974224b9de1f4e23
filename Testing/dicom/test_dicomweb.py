"""DICOMweb against a real Orthanc: series fetched by QIDO-RS + WADO-RS, files stored by STOW-RS, and
one line for each failure (bad URL, unknown study or series, refused STOW, a retrieval cut short)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from orthanc import free_port
from pydicom.uid import generate_uid

from SegGradCAMLib.demo.dicom_series import write_mr_series
from SegGradCAMLib.dicom.dicomweb import NON_IMAGE_MODALITIES, fetch_series, store_files
from SegGradCAMLib.errors import SegGradCAMError

SHAPE = (8, 32, 32)  # (Z, Y, X)


def mr_series(folder: Path, seed: int, study: str, description: str) -> list[Path]:
    """A small real MR series (``SHAPE``, random int16 values) of ``study`` in ``folder``."""
    values = np.random.default_rng(seed).integers(-1000, 3000, SHAPE).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 3.0))
    return write_mr_series(
        image, folder, study_uid=study, series_description=description, series_number=seed, patient_id=study[-16:]
    )


def parametric_map(sources: list[Path], folder: Path) -> Path:
    """A highdicom Parametric Map of the ``sources`` series, written to ``folder``: its modality (OT) is an
    image modality, so only its SOP class tells it from an input series."""
    from highdicom import UID, VOILUTTransformation
    from highdicom.pm import ParametricMap, RealWorldValueMapping
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(path) for path in sources]
    mapping = RealWorldValueMapping("HEAT", "heatmap", codes.UCUM.NoUnits, (0.0, 1.0), slope=1, intercept=0)
    values = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    pm = ParametricMap(
        datasets,
        values,
        UID(),
        90,
        UID(),
        1,
        "SegGradCAM",
        "test",
        "0",
        "0",
        False,
        [mapping],
        voi_lut_transformations=[VOILUTTransformation(window_center=0.5, window_width=1.0)],
    )
    assert pm.Modality not in NON_IMAGE_MODALITIES
    path = folder / "pm.dcm"
    pm.save_as(path)
    return path


class Progress:
    """Records ``progress(stage, done, total)`` calls."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))


def store_study(server, folder: Path, count: int) -> tuple[str, list[list[Path]]]:
    """A new study of ``count`` MR series stored into ``server``: its UID and each series' files."""
    study = generate_uid()
    series = [mr_series(folder / f"source{i}", i + 1, study, f"channel {i}") for i in range(count)]
    progress = Progress()
    store_files(server.dicomweb, [path for files in series for path in files], None, progress)
    assert progress.calls[-1] == ("store", count * SHAPE[0], count * SHAPE[0])
    return study, series


def series_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def test_fetch_gets_every_instance_back(orthanc, tmp_path):
    study, (source,) = store_study(orthanc, tmp_path, 1)
    progress = Progress()
    (folder,) = fetch_series(orthanc.dicomweb, study, None, 1, None, tmp_path / "fetched", progress)

    assert folder == tmp_path / "fetched" / "series_0"
    fetched = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, sorted(folder.iterdir()))}
    assert len(fetched) == len(source) == SHAPE[0]
    for original in map(pydicom.dcmread, source):
        copy = fetched[original.SOPInstanceUID]
        assert copy.PixelData == original.PixelData
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID"):
            assert copy[keyword].value == original[keyword].value
    assert progress.calls[0] == ("fetch", 0, SHAPE[0]) and progress.calls[-1] == ("fetch", SHAPE[0], SHAPE[0])
    assert [done for _, done, _ in progress.calls] == list(range(SHAPE[0] + 1))


def test_two_series_need_their_channel_order(orthanc, tmp_path):
    study, sources = store_study(orthanc, tmp_path, 2)
    first, second = map(series_uid, sources)

    with pytest.raises(SegGradCAMError) as error:
        fetch_series(orthanc.dicomweb, study, None, 1, None, tmp_path / "one", Progress())
    message = str(error.value)
    assert "\n" not in message and "2 image series" in message and "--series UID[,UID]" in message
    assert f"{first} (MR, 'channel 0', 8 instances)" in message and second in message
    assert not (tmp_path / "one").exists()
    # two image series for two channels: which is which only the user knows
    with pytest.raises(SegGradCAMError, match=r"give --series UID\[,UID\] in channel order\.$"):
        fetch_series(orthanc.dicomweb, study, None, 2, None, tmp_path / "one", Progress())

    folders = fetch_series(orthanc.dicomweb, study, [second, first], 2, None, tmp_path / "two", Progress())
    assert [folder.name for folder in folders] == ["series_0", "series_1"]
    for folder, expected in zip(folders, (second, first)):
        uids = {pydicom.dcmread(path).SeriesInstanceUID for path in folder.iterdir()}
        assert uids == {expected}


def test_results_in_the_study_are_no_input_series(orthanc, tmp_path):
    """A Parametric Map stored back into the study is not taken as an input series."""
    study, (source,) = store_study(orthanc, tmp_path, 1)
    store_files(orthanc.dicomweb, [parametric_map(source, tmp_path)], None, Progress())

    (folder,) = fetch_series(orthanc.dicomweb, study, None, 1, None, tmp_path / "fetched", Progress())
    assert {pydicom.dcmread(path).SeriesInstanceUID for path in folder.iterdir()} == {series_uid(source)}


def test_unknown_series_and_study_are_one_line(orthanc, tmp_path):
    study, (source,) = store_study(orthanc, tmp_path, 1)
    unknown = generate_uid()
    with pytest.raises(SegGradCAMError, match=f"^Series {unknown} is not in study {study}; its series: ") as error:
        fetch_series(orthanc.dicomweb, study, [unknown], 1, None, tmp_path / "a", Progress())
    assert series_uid(source) in str(error.value)

    with pytest.raises(SegGradCAMError, match=f"^No study {unknown} on {orthanc.dicomweb}.$"):
        fetch_series(orthanc.dicomweb, unknown, None, 1, None, tmp_path / "b", Progress())
    with pytest.raises(SegGradCAMError, match="is not a valid Study Instance UID"):
        fetch_series(orthanc.dicomweb, "study-1", None, 1, None, tmp_path / "c", Progress())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unreachable_server_and_bad_url_are_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(SegGradCAMError, match=f"^Cannot reach the DICOMweb server at {url}: Connection refused"):
        fetch_series(url, generate_uid(), None, 1, None, tmp_path, Progress())
    with pytest.raises(SegGradCAMError, match="^Not a DICOMweb URL: 'ftp://pacs/dicom-web'"):
        store_files("ftp://pacs/dicom-web", [], None, Progress())


def test_refused_store_names_the_status_and_stores_nothing(refusing_orthanc, tmp_path):
    files = mr_series(tmp_path / "source", 1, generate_uid(), "refused")
    before = refusing_orthanc.instance_count()
    with pytest.raises(SegGradCAMError) as error:
        store_files(refusing_orthanc.dicomweb, files, None, Progress())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"The DICOMweb server at {refusing_orthanc.dicomweb} answered HTTP 403 Forbidden")
    assert message.endswith("nothing was stored.")
    assert refusing_orthanc.instance_count() == before


class RecordingServer(http.server.ThreadingHTTPServer):
    """A small real HTTP server that records each request's Authorization header and answers each path
    from ``answers`` (path -> status, content type, body); 404 elsewhere."""

    def __init__(self, answers: dict[str, tuple[int, str, bytes]]):
        self.answers = answers
        self.authorizations: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N802 (http.server's name)
                self.authorizations.append(handler.headers.get("Authorization"))
                status, kind, body = self.answers.get(handler.path.split("?")[0], (404, "text/plain", b""))
                handler.send_response(status)
                handler.send_header("Content-Type", kind)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/dicom-web"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def test_the_bearer_token_reaches_the_server(tmp_path):
    study = generate_uid()
    answers = {f"/dicom-web/studies/{study}/series": (200, "application/dicom+json", b"[]")}
    with RecordingServer(answers) as server, pytest.raises(SegGradCAMError, match="^No study"):
        fetch_series(server.url, study, None, 1, "secret-token.1", tmp_path, Progress())
    assert server.authorizations == ["Bearer secret-token.1"]
    with pytest.raises(SegGradCAMError, match="token holds a space"):
        fetch_series(server.url, study, None, 1, "two words", tmp_path, Progress())


def test_a_retrieval_cut_short_leaves_nothing(tmp_path):
    """The server lists two instances but sends one: one line naming the count, no folder left behind."""
    files = mr_series(tmp_path / "source", 1, generate_uid(), "cut")
    first = pydicom.dcmread(files[0])
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    root = f"/dicom-web/studies/{study}/series"

    def listed(path: Path) -> dict:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return {"0020000E": {"vr": "UI", "Value": [series]}, "00080018": {"vr": "UI", "Value": [ds.SOPInstanceUID]}}

    series_json = [{"0020000E": {"vr": "UI", "Value": [series]}, "00080060": {"vr": "CS", "Value": ["MR"]}}]
    boundary = b"part"
    multipart = b"--part\r\nContent-Type: application/dicom\r\n\r\n" + files[0].read_bytes() + b"\r\n--part--"
    answers = {
        root: (200, "application/dicom+json", json.dumps(series_json).encode()),
        f"{root}/{series}/instances": (
            200,
            "application/dicom+json",
            json.dumps(list(map(listed, files[:2]))).encode(),
        ),
        f"{root}/{series}": (
            200,
            f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
            multipart,
        ),
    }
    with RecordingServer(answers) as server, pytest.raises(SegGradCAMError) as error:
        fetch_series(server.url, study, [series], 1, None, tmp_path / "fetched", Progress())
    assert str(error.value).startswith(f"The DICOMweb server at {server.url} sent 1 of the 2 instances of series")
    assert not (tmp_path / "fetched" / "series_0").exists()


def test_a_named_series_that_holds_no_images_is_refused(orthanc, tmp_path):
    """``--series`` naming the study's Parametric Map (a result): refused in one line, nothing fetched."""
    study, (source,) = store_study(orthanc, tmp_path, 1)
    result = parametric_map(source, tmp_path)
    store_files(orthanc.dicomweb, [result], None, Progress())
    uid = str(pydicom.dcmread(result, stop_before_pixels=True).SeriesInstanceUID)
    with pytest.raises(SegGradCAMError, match=f"^Series {uid} of study {study} holds no images to explain") as error:
        fetch_series(orthanc.dicomweb, study, [uid], 1, None, tmp_path / "fetched", Progress())
    assert series_uid(source) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "fetched").exists()


@pytest.mark.parametrize(
    "kind, body",
    [
        ("text/html", b"<html><body>Please log in</body></html>"),
        ("application/dicom+json", b"[1, 2]"),
        ("application/dicom+json", b'{"error": "no such thing"}'),
        ("application/dicom+json", b'[{"00080060": {"vr": "CS", "Value": ["MR"]}}]'),
    ],
)
def test_a_search_answered_without_dicom_json_is_one_line(tmp_path, kind, body):
    """A proxy's login page or a server's own JSON where QIDO-RS answers DICOM JSON datasets."""
    study = generate_uid()
    answers = {f"/dicom-web/studies/{study}/series": (200, kind, body)}
    with RecordingServer(answers) as server, pytest.raises(SegGradCAMError) as error:
        fetch_series(server.url, study, None, 1, None, tmp_path, Progress())
    message = str(error.value)
    assert message.startswith(f"The DICOMweb server at {server.url} sent no DICOM JSON to the series search of")
    assert "\n" not in message


def test_a_series_count_that_is_no_number_is_left_unknown(tmp_path):
    study, series = generate_uid(), generate_uid()
    listing = [{"0020000E": {"vr": "UI", "Value": [series]}, "00201209": {"vr": "IS", "Value": ["many"]}}]
    answers = {f"/dicom-web/studies/{study}/series": (200, "application/dicom+json", json.dumps(listing).encode())}
    with RecordingServer(answers) as server, pytest.raises(SegGradCAMError, match="answered HTTP 404 Not Found"):
        fetch_series(server.url, study, [series], 1, None, tmp_path, Progress())
