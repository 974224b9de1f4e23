"""The cases of a cohort list: one volume per case, given as its channel files."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import SegGradCAMError

ID_HASH_CHARS = 12  # hexadecimal digits of the hash of the case's paths in its id
ID_NAME_CHARS = 48  # at most this many characters of the readable part of an id


@dataclass(frozen=True)
class CohortCase:
    """One case: ``id`` (its output folder's name, see :func:`case_id`), its channel files, its
    position in the list (random streams are seeded by it)."""

    id: str
    inputs: tuple[str, ...]
    index: int


def _stem(path: str) -> str:
    """The file name without its volume suffix (``t1.nii.gz`` -> ``t1``)."""
    from ..evaluation.cases import VOLUME_SUFFIXES

    name = Path(path).name
    suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


def _name_part(text: str) -> str:
    """``text`` as part of a folder name: Unicode letters and digits, ``_`` and ``-`` kept (NFC),
    any other run of characters becomes ``-``; never starts with ``.``."""
    return re.sub(r"[^\w-]+", "-", unicodedata.normalize("NFC", text)).strip("-_")


def case_id(inputs: Sequence[str]) -> str:
    """The id of the case of channel files ``inputs``: its first channel's folder and file names
    and a hash of all its files' absolute paths (``case_07/t1.nrrd,case_07/flair.nrrd`` ->
    ``case_07_t1-3f9c0a12de45``). It depends on these paths only, never on the other cases of the
    list nor on the case's position, and is never empty."""
    first = Path(inputs[0])
    name = "_".join(p for p in (_name_part(first.parent.name), _name_part(_stem(first.name))) if p)
    digest = hashlib.sha256("\n".join(os.path.abspath(p) for p in inputs).encode()).hexdigest()
    name = name[:ID_NAME_CHARS].rstrip("-_")
    return f"{name}-{digest[:ID_HASH_CHARS]}" if name else digest[:ID_HASH_CHARS]


def cohort_cases(data: str) -> list[CohortCase]:
    """The cases of ``data`` (a list file, a folder of volumes, or one volume; see
    :func:`~SegGradCAMLib.evaluation.cases.data_entries`) with their :func:`case_id`; refuses
    a case listed twice."""
    from ..evaluation.cases import data_entries

    cases: dict[str, CohortCase] = {}
    for index, paths in enumerate(data_entries(data)):
        case = CohortCase(case_id(paths), tuple(paths), index)
        if case.id in cases:
            raise SegGradCAMError(
                f"{data}: case {index + 1} repeats case {cases[case.id].index + 1} ({', '.join(paths)}); "
                "list each case once."
            )
        cases[case.id] = case
    return list(cases.values())
