"""DICOM in and out of ``explain`` (:class:`DicomOptions`, the ``dicom`` field of its options):
write a DICOM SEG and Parametric Maps for a DICOM input series, read the series from a PACS over
DICOMweb and store the objects back there. Torch-free, like the options that hold it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from .declared_options import CommandOptions, option
from .errors import SegGradCAMError

TOKEN_VARIABLE = "DICOMWEB_TOKEN"
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")  # a DICOM UID: dotted digits, at most 64 characters


def _uids(value: Any) -> tuple[str, ...] | None:
    if value in (None, ""):
        return None
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items)


def shown_url(url: str) -> str:
    """A server's URL as messages and explain.json show it: without the user name and password
    it may hold for HTTP basic authentication (``http://user:password@host/...`` -> ``http://host/...``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else url


def is_uid(text: str) -> bool:
    """Whether ``text`` is a DICOM UID: dotted digits, at most 64 characters."""
    return len(text) <= 64 and UID_PATTERN.fullmatch(text) is not None


def check_uid(uid: str, flag: str) -> None:
    """A DICOM UID (:func:`is_uid`), else a one-line error naming ``flag``."""
    if not is_uid(uid):
        raise SegGradCAMError(f"{flag} {uid!r} is not a DICOM UID (digits and dots, e.g. 1.2.826.0.1.3680043.8.498.1).")


@dataclass(frozen=True)
class DicomOptions(CommandOptions):
    """``--dicom`` (write DICOM objects for a DICOM input series), and the DICOMweb server to
    read the input series from (``--dicomweb`` with ``--study``, ``--series``) and to ``--store``
    the objects on, with a bearer token from ``--dicomweb-token`` or ``$DICOMWEB_TOKEN``."""

    GROUP: ClassVar[str | None] = "DICOM (see docs/dicom.md)"

    write_dicom: bool = option(
        "--dicom",
        False,
        "for a DICOM input series: also write dicom/segmentation.dcm (DICOM SEG) and one "
        "Parametric Map per heatmap, referencing the source series",
        action="store_true",
    )
    dicomweb: str | None = option(
        "--dicomweb",
        None,
        "read the input series from this DICOMweb server (instead of INPUT), e.g. http://pacs:8042/dicom-web",
        metavar="URL",
    )
    study: str | None = option("--study", None, "--dicomweb: the Study Instance UID", metavar="UID")
    series: tuple[str, ...] | None = option(
        "--series",
        None,
        "--dicomweb: the Series Instance UID(s) in channel order (default: the study's one image series)",
        normalise=_uids,
        metavar="UID[,UID]",
    )
    store: bool = option(
        "--store",
        False,
        "--dicomweb: store the SEG and Parametric Maps on the server (STOW-RS) once the run succeeded",
        action="store_true",
    )
    dicomweb_token: str | None = option(
        "--dicomweb-token",
        None,
        f"bearer token for the server (better: the environment variable {TOKEN_VARIABLE}, which no process list shows)",
        metavar="TOKEN",
    )

    def __post_init__(self) -> None:
        self.normalise_fields()
        if self.dicomweb is None:
            given = [flag for flag, value in (("--study", self.study), ("--series", self.series)) if value]
            if given or self.store or self.dicomweb_token:
                raise SegGradCAMError(f"{', '.join(given) or '--store/--dicomweb-token'} needs --dicomweb URL.")
            return
        if not re.match(r"https?://", self.dicomweb):
            raise SegGradCAMError(
                f"--dicomweb {shown_url(self.dicomweb)!r}: give the server's http:// or https:// URL."
            )
        if not self.study:
            raise SegGradCAMError("--dicomweb needs --study UID (the Study Instance UID to explain).")
        check_uid(self.study, "--study")
        for uid in self.series or ():
            check_uid(uid, "--series")

    @property
    def writes_objects(self) -> bool:
        """Whether the run writes the DICOM objects (``--dicom``, or ``--store`` which sends them)."""
        return self.write_dicom or self.store

    def token(self) -> str | None:
        """The bearer token: ``--dicomweb-token``, else ``$DICOMWEB_TOKEN``, else None."""
        return self.dicomweb_token or os.environ.get(TOKEN_VARIABLE) or None
