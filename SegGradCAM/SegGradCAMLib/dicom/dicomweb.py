"""A PACS over DICOMweb (dicomweb-client): a study's input series fetched, results stored.

:func:`fetch_series` finds the study's series by QIDO-RS and retrieves the chosen ones by WADO-RS,
one instance at a time as the server streams them, each written to a file at once (memory holds one
instance, never a series). :func:`store_files` sends DICOM files by STOW-RS, one request per file, so
a refusal names what was stored before it. A bearer token goes in the ``Authorization`` header.

Every failure is one line (:class:`SegGradCAMError`) naming the server and, where it answered, its
HTTP status and message; requests' exceptions never escape.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dicom_options import is_uid, shown_url
from ..errors import SegGradCAMError

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
# Series that are no input image: results (SEG, Parametric Map), structures, reports, presentation states.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO"})
NON_IMAGE_SOP_CLASSES = frozenset({SEGMENTATION_STORAGE, PARAMETRIC_MAP_STORAGE})
# DICOM JSON tags (QIDO-RS answers).
MODALITY, SOP_CLASS_UID, SERIES_UID = "00080060", "00080016", "0020000E"
SERIES_DESCRIPTION, SERIES_INSTANCES, SOP_INSTANCE_UID = "0008103E", "00201209", "00080018"

# dicomweb-client retries a request that fails (no connection) or answers 408/429/503/504, waiting
# 2**attempt * RETRY_WAIT_MS between attempts: 3 attempts wait 1 s + 2 s (its default, 5, waits 30 s).
RETRY_ATTEMPTS, RETRY_WAIT_MS = 3, 500

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _Series:
    """A series of the study as QIDO-RS lists it (``instances``: None where the server does not say)."""

    uid: str
    modality: str
    description: str
    instances: int | None

    def __str__(self) -> str:
        count = "?" if self.instances is None else self.instances
        return f"{self.uid} ({self.modality or '?'}, {self.description!r}, {count} instances)"


def _value(item: dict[str, Any], tag: str) -> Any:
    """The first value of attribute ``tag`` in a DICOM JSON dataset, None where absent or empty."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _datasets(found: Any, tag: str, url: str, doing: str) -> list[dict[str, Any]]:
    """A QIDO-RS answer: DICOM JSON datasets, each with attribute ``tag``; anything else one line."""
    if not isinstance(found, list) or not all(
        isinstance(item, dict) and isinstance(item.get(tag), dict) and item[tag].get("Value") for item in found
    ):
        raise _no_dicom_json(url, doing)
    return found


def _no_dicom_json(url: str, doing: str) -> SegGradCAMError:
    """The one line for an answer that is not DICOM JSON (a proxy's login page, another service)."""
    return SegGradCAMError(
        f"The DICOMweb server at {url} sent no DICOM JSON to {doing}; check that the URL is its DICOMweb root."
    )


def _server_message(response) -> str:
    """The server's own words in an error answer, on one line ('' where it sent none)."""
    text = response.text.strip()
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("Message"), str):  # Orthanc's error answers
            text = body["Message"]
    return " ".join(text.split())[:200]


def _reason(error: Exception) -> str:
    """The operating system's reason inside a requests exception (``Connection refused``), else its kind."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    return found.group(1).strip() if found else type(error).__name__


@contextlib.contextmanager
def _server_errors(url: str, doing: str) -> Iterator[None]:
    """Turn requests' exceptions raised in ``doing`` (e.g. 'the series search of study X') into one line."""
    import requests

    try:
        yield
    except requests.HTTPError as error:
        response = error.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(error)
        message = _server_message(response) if response is not None else ""
        raise SegGradCAMError(
            f"The DICOMweb server at {url} answered {status} to {doing}" + (f": {message}" if message else "")
        ) from None
    except requests.JSONDecodeError:
        raise _no_dicom_json(url, doing) from None
    except (requests.ConnectionError, requests.Timeout) as error:
        raise SegGradCAMError(
            f"Cannot reach the DICOMweb server at {url}: {_reason(error)} ({doing}); check the URL and the server."
        ) from None
    except requests.RequestException as error:
        raise SegGradCAMError(f"DICOMweb failed at {url} while {doing}: {_reason(error)}.") from None


def _client(url: str, token: str | None):
    """A DICOMweb client of ``url`` (``http(s)://HOST[:PORT]/PATH``), with the bearer ``token`` where given."""
    from urllib.parse import urlsplit

    from dicomweb_client.api import DICOMwebClient

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SegGradCAMError(
            f"Not a DICOMweb URL: {shown_url(url)!r}; give http(s)://HOST[:PORT]/PATH (e.g. .../dicom-web)."
        )
    if token and (re.search(r"\s", token) or not token.isprintable()):
        raise SegGradCAMError("The DICOMweb token holds a space or control character; give the token alone.")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        client = DICOMwebClient(url.rstrip("/"), headers=headers)
    except ValueError as error:
        raise SegGradCAMError(f"Not a DICOMweb URL: {shown_url(url)!r} ({error}).") from None
    client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


def _study_series(client, url: str, study: str) -> list[_Series]:
    """The series of ``study`` on the server (QIDO-RS); refused where the server holds no such study."""
    if not is_uid(study):
        raise SegGradCAMError(f"{study!r} is not a valid Study Instance UID (digits and dots, at most 64).")
    doing = f"the series search of study {study}"
    with _server_errors(url, doing):
        found = client.search_for_series(
            study_instance_uid=study,
            fields=["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"],
        )
    found = _datasets(found, SERIES_UID, url, doing)
    if not found:
        raise SegGradCAMError(f"No study {study} on {url}.")
    series = []
    for item in found:
        count = _value(item, SERIES_INSTANCES)
        series.append(
            _Series(
                uid=str(_value(item, SERIES_UID)),
                modality=str(_value(item, MODALITY) or ""),
                description=str(_value(item, SERIES_DESCRIPTION) or ""),
                instances=int(count) if str(count).isdigit() else None,
            )
        )
    return series


def _is_image(client, url: str, study: str, series: _Series) -> bool:
    """Whether ``series`` holds images to explain: neither a non-image modality nor a SEG or Parametric Map
    SOP class (whose modality is the source's), asked of its first instance."""
    if series.modality in NON_IMAGE_MODALITIES:
        return False
    doing = f"the instance search of series {series.uid}"
    with _server_errors(url, doing):
        first = _datasets(
            client.search_for_instances(study_instance_uid=study, series_instance_uid=series.uid, limit=1),
            SOP_INSTANCE_UID,
            url,
            doing,
        )
    return bool(first) and _value(first[0], SOP_CLASS_UID) not in NON_IMAGE_SOP_CLASSES


def _chosen_series(client, url: str, study: str, wanted: Sequence[str] | None, channels: int) -> list[_Series]:
    """The study's series to read as the model's ``channels`` channels, in channel order: ``wanted``
    where given, else the study's one image series (a model of several channels needs ``wanted``)."""
    series = _study_series(client, url, study)
    if wanted is not None:
        by_uid = {item.uid: item for item in series}
        for uid in wanted:
            if uid not in by_uid:
                listing = "; ".join(map(str, series))
                raise SegGradCAMError(f"Series {uid} is not in study {study}; its series: {listing}.")
        if len(wanted) != channels:
            raise SegGradCAMError(f"{len(wanted)} series given for a model of {channels} channels; give {channels}.")
        for uid in wanted:
            if not _is_image(client, url, study, by_uid[uid]):
                images = "; ".join(str(item) for item in series if _is_image(client, url, study, item)) or "none"
                raise SegGradCAMError(
                    f"Series {uid} of study {study} holds no images to explain ({by_uid[uid]}: a result, "
                    f"structure or report); its image series: {images}."
                )
        return [by_uid[uid] for uid in wanted]
    images = [item for item in series if _is_image(client, url, study, item)]
    if len(images) == channels == 1:
        return images
    order = " in channel order" if channels > 1 else ""
    listing = "; ".join(map(str, images)) or "none"
    raise SegGradCAMError(
        f"Study {study} holds {len(images)} image series for a model of {channels} channel(s): {listing}; "
        f"give --series UID[,UID]{order}."
    )


def _instance_uids(client, url: str, study: str, series: _Series) -> set[str]:
    """The SOP Instance UIDs of ``series`` (QIDO-RS)."""
    doing = f"the instance search of series {series.uid}"
    with _server_errors(url, doing):
        found = _datasets(
            client.search_for_instances(study_instance_uid=study, series_instance_uid=series.uid),
            SOP_INSTANCE_UID,
            url,
            doing,
        )
    if not found:
        raise SegGradCAMError(f"Series {series.uid} on {url} lists no instances; check the series on the server.")
    return {str(_value(item, SOP_INSTANCE_UID)) for item in found}


def _retrieve(client, url: str, study: str, series: _Series, expected: set[str], target: Path, tick) -> None:
    """WADO-RS of ``series`` into ``target``, one file per instance as it arrives; ``tick()`` after each.
    Refused where the server sends an instance of another series or not every instance QIDO-RS listed."""
    from pydicom.errors import InvalidDicomError

    received: set[str] = set()
    doing = f"the retrieval of series {series.uid}"
    with _server_errors(url, doing):
        try:
            for dataset in client.iter_series(study, series.uid):
                uid = str(dataset.SOPInstanceUID)
                if dataset.SeriesInstanceUID != series.uid or uid not in expected or uid in received:
                    raise SegGradCAMError(f"The DICOMweb server at {url} sent instance {uid}, not listed, in {doing}.")
                dataset.save_as(target / f"instance_{len(received):05d}.dcm", enforce_file_format=True)
                received.add(uid)
                tick()
        except (InvalidDicomError, ValueError, AttributeError) as error:
            reason = " ".join(str(error).split())
            raise SegGradCAMError(f"The DICOMweb server at {url} sent no DICOM instance in {doing}: {reason}") from None
    if received != expected:
        raise SegGradCAMError(
            f"The DICOMweb server at {url} sent {len(received)} of the {len(expected)} instances of series "
            f"{series.uid}; try again or check the series on the server."
        )


def fetch_series(
    url: str,
    study: str,
    series: Sequence[str] | None,
    channels: int,
    token: str | None,
    folder: Path,
    progress: Progress,
) -> list[Path]:
    """Fetch the study's input series from the DICOMweb server at ``url`` into ``folder/series_<i>/`` (one
    folder per channel ``i``, in channel order; one file per instance); the folders. ``series``: the
    Series Instance UIDs in channel order (None: the study's one image series). ``progress("fetch", done,
    total)`` counts instances. On failure nothing fetched is left in ``folder``."""
    client, url = _client(url, token), shown_url(url)  # from here on, url is for messages
    chosen = _chosen_series(client, url, study, series, channels)
    expected = [_instance_uids(client, url, study, item) for item in chosen]
    total, done = sum(map(len, expected)), 0
    progress("fetch", 0, total)

    def tick() -> None:
        nonlocal done
        done += 1
        progress("fetch", done, total)

    targets = [Path(folder) / f"series_{i}" for i in range(len(chosen))]
    try:
        for item, uids, target in zip(chosen, expected, targets):
            try:
                target.mkdir(parents=True)
                _retrieve(client, url, study, item, uids, target, tick)
            except OSError as error:
                raise SegGradCAMError(f"Cannot write the fetched series into {target}: {error.strerror}.") from None
    except BaseException:
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return targets


def store_files(url: str, files: Sequence[Path], token: str | None, progress: Progress) -> None:
    """Store the DICOM ``files`` into the DICOMweb server at ``url`` (STOW-RS, one request per file, in
    order); ``progress("store", done, total)``. A refusal names the file, the server's status and reason,
    and which files were stored before it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    client, url = _client(url, token), shown_url(url)  # from here on, url is for messages
    progress("store", 0, len(files))
    for done, path in enumerate(files):
        names = ", ".join(Path(file).name for file in files[:done])
        stored = f"stored before it: {names}" if names else "nothing was stored"
        try:
            dataset = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as error:
            raise SegGradCAMError(f"Cannot read {path} as DICOM ({error}); {stored}.") from None
        try:
            with _server_errors(url, f"storing {Path(path).name}"):
                answer = client.store_instances([dataset])
            failed = answer.get("FailedSOPSequence") or []
            if failed:
                reason = failed[0].get("FailureReason", 0)
                raise SegGradCAMError(
                    f"The DICOMweb server at {url} refused to store {Path(path).name} (failure reason 0x{reason:04X})"
                )
        except SegGradCAMError as error:
            raise SegGradCAMError(f"{error}; {stored}.") from None
        progress("store", done + 1, len(files))
