"""Shared fixtures of the DICOM tests: real Orthanc servers (one per session) and small MR series."""

from __future__ import annotations

import pytest
from orthanc import running_orthanc


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc with DICOMweb, shared by the session (each test stores a study of its own)."""
    with running_orthanc() as server:
        yield server


@pytest.fixture(scope="session")
def refusing_orthanc():
    """A running Orthanc that refuses every STOW-RS request (403 Forbidden)."""
    with running_orthanc(refuse_stow=True) as server:
        yield server
