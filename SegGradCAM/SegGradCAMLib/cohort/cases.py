"""The cases of a cohort list: one volume per case, given as its channel files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..volumes.files import safe_filename


@dataclass(frozen=True)
class CohortCase:
    """One case: ``id`` (its output folder's name), its channel files, its position in the list
    (random streams are seeded by it)."""

    id: str
    inputs: tuple[str, ...]
    index: int


def _stem(path: str) -> str:
    """The file name without its volume suffix (``t1.nii.gz`` -> ``t1``)."""
    from ..evaluation.cases import VOLUME_SUFFIXES

    name = Path(path).name
    suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


def cohort_cases(data: str) -> list[CohortCase]:
    """The cases of ``data`` (a list file, a folder of volumes, or one volume; see
    :func:`~SegGradCAMLib.evaluation.cases.data_entries`). Ids are the first channel's file
    name without its suffix; where those repeat, its folder's name (``case_07/t1.nrrd`` ->
    ``case_07``), else both (``case_07_t1``), numbered where they still repeat."""
    from ..evaluation.cases import data_entries

    entries = data_entries(data)
    stems = [safe_filename(_stem(paths[0])) for paths in entries]
    folders = [safe_filename(Path(paths[0]).parent.name) for paths in entries]
    for ids in (stems, folders, [f"{f}_{s}" for f, s in zip(folders, stems)]):
        if len(set(ids)) == len(ids):
            break
    repeated = {i for i, n in Counter(ids).items() if n > 1}
    ids = [f"{i}-{k + 1}" if i in repeated else i for k, i in enumerate(ids)]
    return [CohortCase(i, tuple(paths), k) for k, (i, paths) in enumerate(zip(ids, entries))]
