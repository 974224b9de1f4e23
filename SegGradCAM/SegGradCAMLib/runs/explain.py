"""Explain one volume, files in and files out: read the inputs, load the model into its pipeline,
segment and explain, score the maps when asked, write the segmentation, the heatmaps, the overview
and ``explain.json`` (an :class:`~SegGradCAMLib.reports.ExplainReport`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..dicom_options import shown_url
from ..errors import SegGradCAMError
from ..inference import ProgressCallback, VolumeExplanation
from ..models.cards import MethodChoice, model_terminology, resolve_method
from ..models.json_spec import spec_weights
from ..options import ExplainOptions
from ..pipelines import ExplainSettings, InputVolumes, Pipeline, load_pipeline
from ..reports import ExplainReport, ModelInfo
from ..selection import class_indices, layer_selection, pick_device
from ..volumes.files import read_volume, same_geometry, write_like
from ..targets import TargetRequest
from .dicom_io import fetched_inputs, source_series, store_objects, write_dicom_objects
from .findings_files import channel_names, finding_request, findings_report, write_findings
from .heatmap_files import HeatmapWriter
from .outputs import REPORT_FILE, RunFolder
from .resources import peak_memory_mb, set_threads

PipelineLoader = Callable[[ExplainOptions, str], Pipeline]
NORMALISATION = "each heatmap divided by its global maximum over the volume (max_raw)"


def load_options_pipeline(options: ExplainOptions, device: str) -> Pipeline:
    """The pipeline of the options' model (``--model``, ``--trust-model``, nnU-Net's ``--folds``/``--checkpoint``)."""
    return load_pipeline(
        options.model, trust=options.trust_model, device=device, folds=options.folds, checkpoint=options.checkpoint
    )


def read_region(options: ExplainOptions, reference, count: int) -> np.ndarray | None:
    """The ``--region`` mask repeated for ``count`` classes ``(count, Z, Y, X)`` bool, or None."""
    if options.region is None:
        return None
    region = read_volume(str(options.region), options.max_voxels)
    if not same_geometry(region, reference):
        raise SegGradCAMError(
            f"Region {options.region} is not on the input's grid; resample it onto {reference.path} first."
        )
    if not (region.array > 0).any():
        raise SegGradCAMError(f"Region {options.region} is empty (no voxel > 0).")
    return np.repeat((region.array > 0)[None], count, axis=0)


def run_pipeline(
    pipeline: Pipeline,
    inputs: InputVolumes,
    settings: ExplainSettings,
    progress: ProgressCallback | None,
    writer: HeatmapWriter,
) -> VolumeExplanation:
    """The pipeline's explain, with an out-of-memory error on the GPU as a one-line message."""
    if settings.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(settings.device)
    try:
        return pipeline.explain(inputs, settings, progress, writer)
    except torch.cuda.OutOfMemoryError as error:
        raise SegGradCAMError(
            f"{pipeline.model.spec.name} ran out of GPU memory on {settings.device} "
            f"({str(error).splitlines()[0][:120]}); try --device cpu or fewer layers"
        ) from None


def score_faithfulness(
    pipeline: Pipeline,
    inputs: InputVolumes,
    result: VolumeExplanation,
    writer: HeatmapWriter,
    device: str,
    step: ProgressCallback,
) -> None:
    """Each heatmap's Deletion/Insertion score against random orderings and its target's mask (the
    class's, or the finding's), into its entry."""
    from ..evaluation.faithfulness import Target, explanation_faithfulness

    found = result.findings
    findings = [] if found is None else found.findings
    regions = None if found is None else found.regions(result.labels.shape)  # (K, Z, Y, X) bool
    cases = pipeline.faithfulness_cases(inputs, result.classes, device, regions)
    del regions  # the cases hold them on the model's grid
    targets = [Target(c) for c in result.classes] + [Target(f.class_index, k) for k, f in enumerate(findings)]
    scores = explanation_faithfulness(
        pipeline.model,
        cases,
        targets,
        result.layers,
        result.method,
        device,
        progress=lambda done, total: step("faithfulness", done, total),
    )
    for (target, layer), entry in scores.items():
        if target.finding is None:
            writer.entries[target.class_index].layers[layer].faithfulness = entry
        else:
            writer.finding_layers[findings[target.finding].id][layer].faithfulness = entry


def write_segmentation_and_overview(
    options: ExplainOptions, inputs: InputVolumes, result: VolumeExplanation, writer: HeatmapWriter, title: str
) -> None:
    """``segmentation.nrrd`` (uint8, int16 beyond 255 labels) and, unless turned off, ``overview.png``."""
    reference = inputs.reference
    dtype = np.uint8 if len(writer.labels) < 256 else np.int16
    with writer.folder.writing("segmentation.nrrd") as path:
        write_like(result.labels.astype(dtype), reference, path)
    writer.file_written()
    if options.overview:
        from ..volumes.overview import save_overview

        with writer.folder.writing("overview.png") as path:
            save_overview(
                path,
                reference.array,
                result.labels,
                writer.overview_titles(),
                reference.spacing,
                reference.direction,
                title=title,
            )
        writer.file_written()


def build_report(
    options: ExplainOptions,
    pipeline: Pipeline,
    choice: MethodChoice,
    inputs: InputVolumes,
    settings: ExplainSettings,
    result: VolumeExplanation,
    writer: HeatmapWriter,
    threads: int,
    timings: dict[str, float],
    dicom: dict | None,
) -> ExplainReport:
    """explain.json of the run."""
    spec, model = pipeline.model.spec, pipeline.model
    return ExplainReport(
        model=ModelInfo(
            spec.name, spec.sha256, spec.source, list(spec.labels), spec.trusted_code, model.subnormals_zeroed
        ),
        **choice.as_report(),
        layers=result.layers,
        normalisation=NORMALISATION,
        heatmap_dtype=options.heatmap_dtype,
        region=str(options.region) if options.region else "predicted mask of each class",
        classes=[writer.entries[c] for c in result.classes],
        inputs=[v.path for v in inputs.volumes] if options.dicom.dicomweb is None else inputs_on_server(options),
        input_geometry=inputs.reference.geometry(),
        device=settings.device,
        amp=bool(options.amp),
        torch=torch.__version__,
        threads=threads,
        peak_memory_mb=peak_memory_mb(settings.device),
        timings={k: round(v, 3) for k, v in timings.items()},
        checks=result.checks or None,
        class_groups=result.class_groups,
        nnunet=pipeline.report_note(settings),
        dicom=dicom,
    )


def inputs_on_server(options: ExplainOptions) -> list[str]:
    """explain.json's inputs of a run on a DICOMweb server: ``URL/studies/UID[/series/UID]``."""
    study = f"{shown_url(options.dicom.dicomweb or '')}/studies/{options.dicom.study}"
    return [f"{study}/series/{uid}" for uid in options.dicom.series] if options.dicom.series else [study]


def checked_settings(
    options: ExplainOptions, pipeline: Pipeline, inputs: InputVolumes, method: str, device: str
) -> ExplainSettings:
    """What to explain, once the inputs are checked against the model and its pipeline."""
    spec = pipeline.model.spec
    spec.check_input_count(len(inputs.volumes))
    pipeline.check_inputs(inputs.paths)
    if options.faithfulness:
        pipeline.check_scorable()
    classes = class_indices(options.classes, spec.labels)
    region = read_region(options, inputs.reference, len(classes))
    layers = layer_selection(options.layers)
    return ExplainSettings(layers, classes, method, region, device, options.amp, options.step_size, options.mirror)


def with_targets(options: ExplainOptions, settings: ExplainSettings, inputs: InputVolumes, writer: HeatmapWriter):
    """``settings`` with the findings, probability maps (to ``writer``) and channel reliance asked for."""
    findings = options.findings
    if not (findings.wanted or findings.writes_probabilities):
        return settings
    request = TargetRequest(
        finding_request(findings, inputs.reference),
        findings.writes_probabilities,
        findings.measures_reliance and len(inputs.volumes) > 1,
        channel_names(inputs.paths),
        writer.write_map,
    )
    return dataclasses.replace(settings, request=request)


def new_writer(
    options: ExplainOptions,
    pipeline: Pipeline,
    inputs: InputVolumes,
    settings: ExplainSettings,
    folder: RunFolder,
    progress,
) -> HeatmapWriter:
    """The writer of the heatmaps into the run's ``folder``, counting every file the run writes;
    refuses heatmap names known now (chosen layers) that are input files."""
    chosen = pipeline.model.chosen_layers(settings.layers)
    several = chosen == "auto" or len(chosen) > 1
    maps = len(settings.classes) * (1 if chosen == "auto" else len(chosen))
    dicom = options.dicom.writes_objects  # the SEG, and a Parametric Map per heatmap and probability map
    files = maps * (1 + dicom) + dicom + 2 + options.overview + 2 * options.findings.wanted
    files += (len(pipeline.model.spec.labels) + 1) * options.findings.writes_probabilities * (1 + dicom)
    labels = list(pipeline.model.spec.labels)
    writer = HeatmapWriter(
        folder,
        inputs.reference,
        labels,
        settings.method,
        options.heatmap_dtype,
        several,
        settings.regions,
        options.overview,
        files,
        progress,
        files_per_map=1 + dicom,
    )
    if chosen != "auto":
        folder.refuse_inputs(writer.filename(labels[c], layer) for c in settings.classes for layer in chosen)
    return writer


def explain_files(
    options: ExplainOptions, progress: ProgressCallback | None = None, load: PipelineLoader = load_options_pipeline
) -> ExplainReport:
    """Explain ``options.inputs`` into ``options.out`` (through a :class:`RunFolder`: the outputs
    whole or absent); ``progress(stage, done, total)``; ``load(options, device)`` gives the
    pipeline (cohorts: once per process)."""
    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    began = start = time.perf_counter()
    step("read", 0, 1)
    device = pick_device(options.device)
    choice = resolve_method(options.method, options.model)
    threads = set_threads(options.threads)
    protected = [*options.inputs, options.region, options.model, spec_weights(options.model)]
    with (
        RunFolder(Path(options.out), protected) as folder,
        fetched_inputs(options.dicom, options.inputs, options.model, step) as paths,
    ):
        inputs = InputVolumes.read(paths, options.max_voxels)
        series = source_series(inputs, folder) if options.dicom.writes_objects else None
        timings["read_s"] = time.perf_counter() - start
        step("read", 1, 1)

        start = time.perf_counter()
        pipeline = load(options, device)
        timings["load_model_s"] = time.perf_counter() - start
        step("startup", 1, 1)
        settings = checked_settings(options, pipeline, inputs, choice.method, device)
        codes = model_terminology(options.model, pipeline.model.spec.labels) if series else None  # before the network
        writer = new_writer(options, pipeline, inputs, settings, folder, step)
        settings = with_targets(options, settings, inputs, writer)
        start = time.perf_counter()
        result = run_pipeline(pipeline, inputs, settings, progress, writer)
        timings["explain_s"] = time.perf_counter() - start
        timings.update(result.timings)
        if options.faithfulness:
            start = time.perf_counter()
            score_faithfulness(pipeline, inputs, result, writer, device, step)
            timings["faithfulness_s"] = time.perf_counter() - start

        start = time.perf_counter()
        found = None  # findings.json, and each class's reliance for the overview
        if result.findings is not None:
            found = findings_report(
                result.findings, result, writer, inputs.reference, options.findings, channel_names(inputs.paths)
            )
            write_findings(folder, found, writer)
        title = f"{pipeline.model.spec.name} — {choice.method}"
        write_segmentation_and_overview(options, inputs, result, writer, title)
        timings["write_s"] = time.perf_counter() - start + result.timings.get("postprocess_s", 0.0)
        start = time.perf_counter()
        dicom = series and codes and write_dicom_objects(folder, series, result, writer, pipeline.model.spec, codes)
        refused = dicom and store_objects(options.dicom, folder, dicom, step)
        if dicom:
            timings["dicom_s"] = time.perf_counter() - start
        timings["total_s"] = time.perf_counter() - began
        report = build_report(options, pipeline, choice, inputs, settings, result, writer, threads, timings, dicom)
        report.findings, report.uncertainty = found, writer.maps or None
        with folder.writing(REPORT_FILE):
            report.write(folder.staging)
        folder.commit()
    step("write", writer.files, writer.files)
    if refused:
        raise refused
    return report
