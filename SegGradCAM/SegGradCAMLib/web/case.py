"""What the browser viewer shows, and the files behind it: the case's volume nodes and the
outputs of one run on them, each with the folder of its files. A case opened replaces the one
before it, nodes and files (the server's own files; never a folder the user named). A case
uploaded as DICOM series gets its runs' DICOM objects offered as one zip."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..demo import data as demo_data
from ..errors import SegGradCAMError
from ..mrml.outputs import removeWithDisplayAndStorage
from ..reports import EXPLAIN_FILE, ExplainReport
from ..runs.findings_files import FINDINGS_FILE, FINDINGS_TABLE
from .uploads import DicomUpload

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
KMEANS = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
DEMO_CASE = "Demo lesion case (t1c, flair)"
OVERVIEW = "overview.png"  # offered for download when the folder has it


@dataclass
class Shown:
    """The case's volume nodes (``own``: the server's folder of their files, or None), and the
    outputs shown on them: nodes, report, folder (``owned``: the server's, deleted with them),
    the names offered for download (kept here: the page's state is the client's) and the run
    key that tags their nodes. ``dicom``: the case's DICOM series, when it was uploaded as such."""

    volumes: list
    own: Path | None = None
    outputs: object = None
    report: ExplainReport | None = None
    folder: Path | None = None
    owned: bool = False
    files: tuple[str, ...] = ()
    run_key: str = ""
    dicom: DicomUpload | None = None

    def replace_outputs(self, logic, outputs, report: ExplainReport, folder: Path, run_key: str, owned: bool) -> None:
        """Show ``outputs`` instead of the previous ones (their nodes and the server's folder removed)."""
        if self.outputs is not None and self.run_key != run_key:  # the same key: replaced when added
            logic.removeRunOutputs(self.run_key)
        if self.owned and self.folder is not None and self.folder != folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.outputs, self.report, self.folder, self.owned, self.run_key = outputs, report, folder, owned, run_key

    def remove(self, logic) -> None:
        """Remove the volumes and outputs from the scene, and the server's files of them."""
        if self.outputs is not None:
            logic.removeRunOutputs(self.run_key)
        for node in self.volumes:
            removeWithDisplayAndStorage(logic.scene, node)
        for folder in (self.own, self.folder if self.owned else None):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def output_files(report: ExplainReport, folder: Path) -> list[str]:
    """The files of ``folder`` offered for download: those its explain.json names (the volumes of
    :func:`output_volumes`), explain.json, findings.json and .csv when it has findings, and
    overview.png when there; each checked by :func:`served_file`."""
    tables = [FINDINGS_FILE, FINDINGS_TABLE] if report.findings is not None else []
    names = [*output_volumes(report), EXPLAIN_FILE, *tables]
    if os.path.lexists(folder / OVERVIEW):
        names.append(OVERVIEW)
    for name in names:
        served_file(folder, name)
    return names


def dicom_download(upload: DicomUpload | None, report: ExplainReport, folder: Path) -> list[str]:
    """The DICOM objects a run on the DICOM ``upload`` wrote (explain.json's ``dicom.files``, each
    checked by :func:`served_file`) zipped into ``folder`` (whole or not at all): ``[its name]``;
    ``[]`` for a case not uploaded as DICOM."""
    if upload is None or not report.dicom:
        return []
    members = [(Path(name).name, served_file(folder, name)) for name in report.dicom["files"]]
    target = folder / upload.download
    try:
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, path in members:
                archive.write(path, name)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return [upload.download]


def output_volumes(report: ExplainReport) -> list[str]:
    """The volume files an explain.json names: the segmentation, the heatmaps, the findings'
    heatmaps, then the probability, entropy and fold-disagreement maps."""
    findings = (report.findings or {}).get("findings", [])
    finding_maps = [info["file"] for finding in findings for info in finding["layers"].values()]
    return [
        report.segmentation,
        *(info.file for _, _, info in report.heatmaps()),
        *finding_maps,
        *(report.uncertainty or []),
    ]


def served_file(folder: Path, name: str) -> Path:
    """The real path of ``folder/name`` (links followed), once it lies in ``folder``'s real path
    and is a file; :class:`SegGradCAMError` naming it otherwise (checked again at each download:
    the file may have been replaced by a link since)."""
    real = (folder / name).resolve()
    if not real.is_relative_to(folder.resolve()):
        raise SegGradCAMError(
            f"{folder.name}/{name} lies outside {folder.name} (through a link or '..'); "
            "an output folder's files must lie in it."
        )
    if not real.is_file():
        raise SegGradCAMError(f"{folder.name}/{name} is missing or not a file; run seggradcam explain again.")
    return real


def sample_names() -> list[str]:
    """The bundled samples present on this computer."""
    present = {
        "Colin27 T1 head": COLIN27.is_file(),
        "KmeansTest T1 head": KMEANS.is_file(),
        DEMO_CASE: COLIN27.is_file(),
    }
    return [name for name, there in present.items() if there]


def sample_files(name: str, folder: Path) -> tuple[list[Path], Path | None]:
    """The files of the bundled sample ``name``, and the folder of the server's that holds them,
    or None (the demo lesion case is written to a fresh folder in ``folder``)."""
    if name.startswith("Colin27"):
        return [COLIN27], None
    if name.startswith("KmeansTest"):
        return [KMEANS], None
    folder.mkdir(parents=True, exist_ok=True)
    own = Path(tempfile.mkdtemp(prefix="demo-case-", dir=folder))
    paths = demo_data.write_case(demo_data.make_case(demo_data.EVAL_SEED, "colin27"), own / "case")
    return [paths[channel] for channel in demo_data.CHANNELS], own
