"""The output folder of one run: its outputs whole or absent, the inputs and the user's other
files untouched.

A run writes into a hidden temporary folder inside ``--out`` (``.seggradcam-partial-*``: inside,
so that ``--out .`` works where the parent folder is not writable and every move is a rename
on one file system). Only a run that succeeded replaces the earlier outputs: the earlier run's
``explain.json`` goes first (the folder no longer looks complete), then the earlier run's maps
that this run does not write, then the new files move in, ``explain.json`` last. A failed or
interrupted run leaves the folder as it was and removes the folders it created; a killed one
leaves its hidden folder (named with its process id), which the next run into ``--out``
removes. No output may be one of the run's input files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

from ..errors import SegGradCAMError
from ..volumes.files import split_selector

PARTIAL_PREFIX = ".seggradcam-partial-"
REPORT_FILE = "explain.json"
FIXED_FILES = ("segmentation.nrrd", "overview.png")  # with explain.json and the maps (_is_map)
FINDINGS_FILE, FINDINGS_TABLE = "findings.json", "findings.csv"  # --findings/--point
DICOM_FOLDER = "dicom"  # --dicom: segmentation.dcm and one <map>.dcm per map


def _is_map(stem: str) -> bool:
    """Whether ``stem`` names a map a run writes: a class's or a finding's heatmap, a probability,
    the entropy or a disagreement map (the kinds of :class:`~..uncertainty.UncertaintyMap`)."""
    return stem.startswith(("heatmap_", "probability_")) or stem == "entropy" or stem.endswith("_disagreement")


def is_run_output(name: str) -> bool:
    """Whether ``name`` is a file a run writes (a name, or ``dicom/<name>.dcm``; never another
    path, never the user's other files)."""
    path = PurePosixPath(name)
    stem, suffix = path.stem, path.suffix
    if path.parent == PurePosixPath(DICOM_FOLDER):
        return suffix == ".dcm" and (stem == "segmentation" or _is_map(stem))
    named = name in (*FIXED_FILES, FINDINGS_FILE, FINDINGS_TABLE, REPORT_FILE)
    return name == path.name and (named or (suffix == ".nrrd" and _is_map(stem)))


def earlier_outputs(out: Path) -> set[str]:
    """The files of the earlier run in ``out``, as its ``explain.json`` names them (none without one):
    its class and finding maps, probability and entropy maps, findings tables and DICOM objects."""
    try:
        report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
        findings = report.get("findings")
        entries = report["classes"] + ([] if findings is None else findings["findings"])
        names = {layer["file"] for entry in entries for layer in entry["layers"].values()}
        names |= set(report.get("uncertainty") or []) | set((report.get("dicom") or {}).get("files", []))
        names |= set() if findings is None else {FINDINGS_FILE, FINDINGS_TABLE}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {name for name in names if isinstance(name, str) and is_run_output(name)} | set(FIXED_FILES)


def is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder (not a link to one): never a run's output."""
    return path.is_dir() and not path.is_symlink()


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file, before any work is done."""
    if out.exists() and not out.is_dir():
        raise SegGradCAMError(f"--out {out} is a file, not a folder; give a folder.")


def unwritable(out: Path, error: OSError) -> SegGradCAMError:
    """The one-line error for an ``--out`` that cannot be written (read-only, full, gone)."""
    return SegGradCAMError(f"cannot write into {out}: {error.strerror or error}; give another --out.")


def remove_abandoned_staging(out: Path) -> None:
    """Remove the hidden folders of runs in ``out`` that were killed (their process is gone);
    a running one's is kept."""
    for folder in out.glob(f"{PARTIAL_PREFIX}*"):
        pid = folder.name[len(PARTIAL_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it is an empty folder (an earlier run's DICOM folder)."""
    if is_folder(folder) and not any(folder.iterdir()):
        folder.rmdir()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (or not checkable here): keep its folder
        return True
    return True


class RunFolder:
    """``out`` and the hidden folder a run writes into (``staging``); ``inputs``: the run's
    input paths (``FILE@N`` too), never replaced. Use as a context manager around the run, ending in :meth:`commit`."""

    def __init__(self, out: Path, inputs: Sequence[str | Path]) -> None:
        paths = [Path(split_selector(str(p))[0]) for p in inputs if p is not None]  # FILE@N: FILE
        self.out, self.inputs = Path(out), [p for p in paths if p.exists()]
        check_out_folder(self.out)
        self.refuse_inputs((REPORT_FILE, *FIXED_FILES))
        self.created = [p for p in (self.out, *self.out.parents) if not p.exists()]  # deepest first
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_abandoned_staging(self.out)
            self.staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=self.out))
        except OSError as error:
            self._remove_created()
            raise unwritable(self.out, error) from None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, trace) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if kind is not None:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()  # only an empty folder
            except OSError:
                return

    def is_input(self, path: Path) -> bool:
        """Whether ``path`` is (a link to) one of the run's input files."""
        return path.exists() and any(os.path.samefile(path, p) for p in self.inputs)

    def refuse_inputs(self, names: Iterable[str]) -> None:
        """Refuse to run when an output file ``out/name`` is one of the inputs."""
        for name in names:
            if self.is_input(self.out / name):
                raise SegGradCAMError(
                    f"{self.out / name} is an input of this run and would be overwritten by an output; "
                    "give another --out."
                )

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """The temporary path of output ``name`` (its folder made); a failed write as one line."""
        try:
            (self.staging / name).parent.mkdir(exist_ok=True)
            yield self.staging / name
        except (OSError, RuntimeError) as error:  # SimpleITK reports a failed write as a RuntimeError
            free = shutil.disk_usage(self.staging).free / 2**20
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed"
            raise SegGradCAMError(
                f"cannot write {name} into {self.out}: {reason} ({free:.0f} MiB free there); "
                "free some space or give another --out."
            ) from None

    def check_places(self) -> list[str]:
        """The names of the outputs written so far (``explain.json`` last), once each can take its
        place in ``out`` (no input there, no folder where a file goes, no file where a folder goes):
        before :meth:`commit`, and before the outputs leave the machine."""
        names = sorted(
            (p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file()),
            key=lambda name: name == REPORT_FILE,
        )
        self.refuse_inputs(names)
        for name in names:
            parent = (self.out / name).parent
            if is_folder(self.out / name):
                raise SegGradCAMError(
                    f"{self.out / name} is a folder where this run writes an output: "
                    "move it away or give another --out."
                )
            if parent.exists() and not is_folder(parent):
                raise SegGradCAMError(
                    f"{parent} is a file or link where this run writes its {parent.name}/ folder: "
                    "move it away or give another --out."
                )
        return names

    def commit(self) -> None:
        """Replace the earlier run's outputs in ``out`` by this run's (``explain.json`` last)."""
        names = self.check_places()
        stale = earlier_outputs(self.out) - set(names)
        try:
            (self.out / REPORT_FILE).unlink(missing_ok=True)
            for name in stale:
                if not self.is_input(self.out / name) and not is_folder(self.out / name):
                    (self.out / name).unlink(missing_ok=True)
            for name in names:
                (self.out / name).parent.mkdir(exist_ok=True)
                os.replace(self.staging / name, self.out / name)
            _remove_if_empty(self.out / DICOM_FOLDER)
        except OSError as error:
            raise SegGradCAMError(
                f"cannot move the outputs into {self.out}: {error.strerror or error} ({error.filename}); "
                "the folder holds part of this run: run again, or give another --out."
            ) from None
