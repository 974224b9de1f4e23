"""SegGradCAM on an MRML scene: volume nodes in, segmentation and heatmap nodes out.

Works on any ``vtkMRMLScene`` (3D Slicer's, or one made with the ``slicer-core``
wheel). Slicer conventions: camelCase methods, node attributes for provenance.

A run goes through the worker process (:mod:`.worker`: the command line,
``python -m SegGradCAMLib explain ... --progress json``), never a thread of this process:

1. :meth:`SegGradCAMSceneLogic.startRun` (main thread) checks the input nodes, writes
   them (and a target region) as NRRD with their world geometry to a fresh temporary
   folder (in Slicer's temporary folder inside 3D Slicer) and starts the worker: an
   :class:`ExplainRun`;
2. :meth:`SegGradCAMSceneLogic.pollRun` (from a timer) reads its progress events;
   :meth:`SegGradCAMSceneLogic.cancelRun` kills its process tree;
3. :meth:`SegGradCAMSceneLogic.finishRun` (main thread) reads its outputs into nodes
   with the input's geometry, after checking that the inputs are still in the scene.

The temporary folder is removed in every outcome. :meth:`SegGradCAMSceneLogic.runAndWait`
chains the three (scripts, tests).

:class:`SegGradCAMSceneLogic` is the one class front ends use: the run's steps are here, the
input checks and the target region in :mod:`.inputs`, the output nodes, their display and
their removal in :mod:`.outputs`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..dicom_options import DicomOptions
from ..errors import SegGradCAMError
from ..finding_options import FindingOptions
from ..models.cards import model_terminology
from ..options import EvaluateOptions, ExplainOptions
from ..reports import EvaluationReport, ExplainReport
from ..volumes.files import safe_filename
from .findings import SceneFindings
from .inputs import SceneInputs, writeVolumeArray
from .outputs import RunOutputs, SceneOutputs
from .terminology import tagSegments
from .worker import WorkerProcess, temporaryFolder


@dataclass
class ExplainRun:
    """One explain run of ``model`` (a registered name or a model file/folder) in the worker
    process: its inputs written to ``folder`` (a fresh temporary folder, removed when the run
    ends in any way), its outputs in ``folder/out``. ``progress``: the worker's last progress
    event. ``log``: the end of the worker's log, kept when the worker failed (its folder is gone
    by then)."""

    worker: WorkerProcess
    folder: Path
    inputNodeIDs: list[str]
    runKey: str
    model: str
    started: float = field(default_factory=time.perf_counter)
    progress: dict | None = None
    log: str = ""

    @property
    def outFolder(self) -> Path:
        return self.folder / "out"

    @property
    def finished(self) -> bool:
        return not self.worker.running


def caseFailure(outFolder: Path) -> str | None:
    """The message of the failed case in a worker evaluation's ``failures.csv`` (one case), if any."""
    import csv

    from ..cohort.run import FAILURES_FILE

    try:
        with open(outFolder / FAILURES_FILE, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except OSError:
        return None
    return rows[0]["message"] if rows else None


class SegGradCAMSceneLogic(SceneInputs, SceneOutputs, SceneFindings):
    """SegGradCAM's logic on the given MRML scene: the run's inputs (:class:`~.inputs.SceneInputs`),
    its worker (here), its outputs (:class:`~.outputs.SceneOutputs`) and its findings
    (:class:`~.findings.SceneFindings`)."""

    def __init__(self, scene, python: str | None = None, launcher: Sequence[str] = ()) -> None:
        """``python``: the worker's interpreter (default: ``PythonSlicer`` in 3D Slicer, else this
        one); ``launcher``: a command put before it (tests)."""
        self.scene = scene
        self.python = python
        self.launcher = list(launcher)

    # -- step 1: the inputs to the worker ------------------------------------------

    def startRun(
        self,
        inputVolumeNodes: Sequence,
        model: str,
        classes: str = "all",
        layers="auto",
        method: str = "auto",
        regionSegmentationNode=None,
        regionSegmentId: str = "",
        regionROINode=None,
        device: str = "auto",
        trust: bool = False,
        threads: int = 0,
        faithfulness: bool = False,
        dicomSeries: Sequence[str] = (),
        findings: bool = False,
        point: tuple[float, float, float] | None = None,
    ) -> ExplainRun:
        """Check the inputs, write them as NRRD to a fresh temporary folder and start the
        worker (``python -m SegGradCAMLib explain ...``) on them. ``model``: a registered name
        or a model file/folder. What the model declares (labels, channels) is checked here when
        it can be read without torch; everything else the worker checks and reports.
        ``faithfulness``: score each heatmap (``explain --faithfulness``; its verdict lands in each
        heatmap node's ``SegGradCAM.Faithfulness`` attribute). ``dicomSeries``: the DICOM series
        folders the input nodes were read from (one per node, in order): the worker reads these
        instead and also writes the DICOM SEG and Parametric Maps (``explain --dicom``).
        ``findings``: explain each finding (connected component) on its own, with probability and
        entropy maps (``explain --findings``; :mod:`.findings` adds their nodes). ``point``: a world
        RAS point (mm): explain only the finding there (``explain --point``, "Why here?"); its
        outputs have a run key of their own, so they replace only the previous "Why here?" run's."""
        volumes = self._checkedInputs(inputVolumeNodes, model, classes)
        region = self.regionMask(volumes[0], regionSegmentationNode, regionSegmentId, regionROINode)

        def arguments(folder: Path, paths: list[str]) -> list[str]:
            regionPath = None
            if region is not None:
                regionPath = folder / "region.nrrd"
                writeVolumeArray(region.astype(np.uint8), volumes[0], regionPath)
            options = ExplainOptions(
                inputs=tuple(dicomSeries or paths),
                model=model,
                out=folder / "out",
                dicom=DicomOptions(write_dicom=bool(dicomSeries)),
                layers=layers,
                classes=classes,
                method=method,
                region=regionPath,
                device=device,
                trust_model=trust,
                threads=threads,
                faithfulness=faithfulness,
                findings=FindingOptions(findings=findings, point=point),
            )
            return ["explain", *options.to_argv()]

        return self._startWorker(volumes, model, arguments, method if point is None else f"{method} why here")

    def startEvaluation(
        self,
        inputVolumeNodes: Sequence,
        model: str,
        className: str,
        method: str = "auto",
        layers="auto",
        device: str = "auto",
        trust: bool = False,
        threads: int = 0,
        step: float = 0.05,
        maxSlices: int = 10,
    ) -> ExplainRun:
        """Start ``seggradcam evaluate`` in the worker on the inputs: Deletion and Insertion of
        ``className`` for ``method`` against the random and mask baselines (3D models: the
        volume; 2D models: up to ``maxSlices`` slices where the class is predicted)."""
        volumes = self._checkedInputs(inputVolumeNodes, model, className)

        def arguments(folder: Path, paths: list[str]) -> list[str]:
            (folder / "cases.txt").write_text(",".join(paths) + "\n", encoding="utf-8")
            options = EvaluateOptions(
                model=model,
                data=str(folder / "cases.txt"),
                out=folder / "out",
                metrics=("deletion", "insertion"),
                methods=(method,),
                baselines=("random", "mask"),
                layers=layers,
                classes=className,
                step=step,
                max_slices=maxSlices,
                device=device,
                threads=threads,
                trust_model=trust,
            )
            return ["evaluate", *options.to_argv()]

        return self._startWorker(volumes, model, arguments, f"evaluate {className} {method}")

    def _startWorker(
        self, volumes: list, model: str, arguments: Callable[[Path, list[str]], list[str]], what: str
    ) -> ExplainRun:
        """Write the volumes to a fresh temporary folder (each in a folder of its own, its file
        named as its node, which the worker's reports use as the channel's name) and start the
        worker on the command ``arguments(folder, input paths)`` (built by the options' ``to_argv``)."""
        import slicer

        folder = temporaryFolder()
        try:
            paths = []
            for index, node in enumerate(volumes):  # named as the node: the worker's name of the channel
                path = folder / f"input{index}" / f"{safe_filename(node.GetName()) or 'input'}.nrrd"
                path.parent.mkdir()
                writeVolumeArray(slicer.util.arrayFromVolume(node), node, path)
                paths.append(str(path))
            worker = WorkerProcess(arguments(folder, paths), folder, python=self.python, launcher=self.launcher)
            worker.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        reference = volumes[0]
        logging.info(f"SegGradCAM: {model} {what} on {reference.GetName()} in a worker process")
        inputIDs = [node.GetID() for node in volumes]
        return ExplainRun(worker, folder, inputIDs, f"{reference.GetID()}|{model}|{what}", model)

    # -- step 2: the running worker ------------------------------------------------

    def pollRun(self, run: ExplainRun) -> list[dict]:
        """The worker's new events (progress kept in ``run.progress``); call from a timer."""
        events = run.worker.poll()
        for event in events:
            if event["event"] == "progress":
                run.progress = event
        return events

    def cancelRun(self, run: ExplainRun) -> None:
        """Kill the worker (its whole process tree) and remove the run's temporary folder."""
        run.worker.kill()
        shutil.rmtree(run.folder, ignore_errors=True)
        logging.info("SegGradCAM: run cancelled")

    def runAndWait(self, inputVolumeNodes, model: str, poll: float = 0.1, **options) -> RunOutputs:
        """Start a run, wait for the worker and add its outputs (blocking; scripts and tests)."""
        return self.finishRun(self.waitFor(self.startRun(inputVolumeNodes, model, **options), poll))

    def evaluateAndWait(self, inputVolumeNodes, model: str, className: str, poll: float = 0.1, **options):
        """Start an evaluation, wait for the worker and show its curves (blocking; scripts and tests)."""
        return self.finishEvaluation(
            self.waitFor(self.startEvaluation(inputVolumeNodes, model, className, **options), poll)
        )

    def waitFor(self, run: ExplainRun, poll: float = 0.1) -> ExplainRun:
        """Poll ``run`` until its worker ends (cancelled on an interrupt)."""
        try:
            while not run.finished:
                self.pollRun(run)
                time.sleep(poll)
        except BaseException:
            self.cancelRun(run)
            raise
        return run

    # -- step 3: the outputs into the scene ----------------------------------------

    def _checkFinished(self, run: ExplainRun) -> None:
        """Raise the worker's one-line message unless it ended well (its log's end kept in ``run.log``)
        and its inputs are still in the scene."""
        self.pollRun(run)
        final = run.worker.finalEvent
        if final is None or final["event"] != "done":
            run.log = run.worker.logTail()
            raise SegGradCAMError(run.worker.errorMessage())
        if any(self.scene.GetNodeByID(nodeID) is None for nodeID in run.inputNodeIDs):
            raise SegGradCAMError(
                "The input volume was removed (or the scene closed) during the run; nothing was added."
            )

    def finishEvaluation(self, run: ExplainRun):
        """The finished evaluation's curves and AUCs as plot, chart and table nodes (main
        thread); the run's temporary folder is removed in every case."""
        from .evaluation_plots import showEvaluation

        try:
            self._checkFinished(run)
            report = EvaluationReport.read(run.outFolder)
        except SegGradCAMError as error:  # the one case's own message, not the cohort's summary
            raise SegGradCAMError(caseFailure(run.outFolder) or str(error)) from None
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)
        reference = self.scene.GetNodeByID(run.inputNodeIDs[0])
        names = ", ".join(report.explained_classes)
        return showEvaluation(self.scene, report, f"{reference.GetName()} {report.model['name']} {names}")

    def finishRun(self, run: ExplainRun) -> RunOutputs:
        """Read the finished worker's outputs into nodes (main thread), as :meth:`addOutputs`, each
        segment with its class's codes from the model's card (:mod:`.terminology`), and its findings
        as :meth:`addFindings` when it has any. Raises the worker's one-line message if it failed;
        the outputs are whole or absent. The run's temporary folder is removed in every case."""
        try:
            self._checkFinished(run)
            report = ExplainReport.read(run.outFolder)
            codes = model_terminology(run.model, report.model.labels)
            reference = self.scene.GetNodeByID(run.inputNodeIDs[0])
            outputs = self.addOutputs(report, run.outFolder, reference, run.runKey)
            try:
                tagSegments(outputs.segmentationNode, codes, report.model.name)
                if report.findings is not None or report.uncertainty:
                    outputs.findings = self.addFindings(report, run.outFolder, outputs, reference)
            except BaseException:
                self.removeRunOutputs(run.runKey)
                raise
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)
        logging.info(
            f"SegGradCAM: {report.model.name} {report.method}: {len(outputs.heatmapNodes)} "
            f"heatmap(s) in {time.perf_counter() - run.started:.1f} s"
        )
        return outputs


__all__ = ["ExplainRun", "SegGradCAMSceneLogic"]
