"""What a run of ``explain`` or ``evaluate`` is asked to do: typed, validated once, when built.

Every front end speaks to the engine through these objects. The command line parses its
arguments into them (:meth:`ExplainOptions.from_argv`); the 3D Slicer module, the web viewer and
the cohort engines build them and hand the worker :meth:`ExplainOptions.to_argv`, so
``ExplainOptions.from_argv(options.to_argv()) == options``. Each option is declared once, in
its field's metadata (flag, help, argparse settings); the ``explain``/``evaluate`` parsers are
built from those declarations.

What needs the model or the files (class names, the number of inputs, whether a file exists) is
checked by the run, where the model is known. Torch-free: 3D Slicer builds options without torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .declared_options import CommandOptions, option
from .dicom_options import DicomOptions
from .finding_options import FindingOptions, check_finding_limits, max_findings_option, min_finding_option
from .engine_options import EngineOptions
from .errors import SegGradCAMError
from .models.declarations import DEFAULT_MODEL
from .selection import (
    ALL_CLASSES,
    AUTO_LAYER,
    AUTO_METHOD,
    CAM_METHODS,
    DEFAULT_PERCENTAGES_TEXT,
    METHOD_CHOICES,
    check_device_name,
    fractions_from_percentages,
    layer_selection,
    split_list,
)

HEATMAP_DTYPES = ("float32", "uint8")
METRICS = ("deletion", "insertion", "road", "randomization")
BASELINE_EXPLANATIONS = ("random", "mask", "gradient")
PERTURBATION_BASELINES = ("blur", "mean")
# 3D targets are perturbed within this margin of their mask (docs/evaluation.md, "The 3D protocol").
DEFAULT_NEIGHBOURHOOD_MM = 10.0
MAX_VOXELS = 2**30  # --max-voxels default: 1024³ values, 4 GiB as float32


def _names(value: Any) -> tuple[str, ...]:
    return tuple(split_list(value)) if isinstance(value, (str, tuple, list)) else (str(value),)


def _one_or_many(value: Any) -> Any:
    """A single name or path as it is; a sequence of one ``"auto"``/``"all"`` as that word."""
    if isinstance(value, (tuple, list)) and len(value) == 1 and value[0] in (AUTO_LAYER, ALL_CLASSES):
        return value[0]
    return value


def _layers(value: Any) -> str | tuple[str, ...]:
    chosen = layer_selection(_one_or_many(value))
    return chosen if isinstance(chosen, str) else tuple(chosen)


def _classes(value: Any) -> str | tuple[str, ...]:
    value = _one_or_many(value)
    if isinstance(value, str) and value.strip() == ALL_CLASSES:
        return ALL_CLASSES
    return tuple(str(v) for v in (split_list(value) if isinstance(value, str) else value))


def _strings(value: Any) -> tuple[str, ...]:
    """Input paths: one path (str or path-like) or a sequence of them, as strings."""
    if isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    return tuple(os.fspath(v) for v in value)


def _text(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _optional_names(value: Any) -> tuple[str, ...] | None:
    return None if value in (None, "") else _names(value)


def _optional_path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(value)


def out_option() -> Any:
    """``--out``: the output folder, shared by ``explain`` and ``evaluate``."""
    return option("--out", None, "output folder", required=True, normalise=_optional_path)


def layers_option() -> Any:
    """``--layers``, shared by ``explain`` and ``evaluate``."""
    return option(
        "--layers", AUTO_LAYER, "'auto' (finest decoder stage) or comma-separated layer names", normalise=_layers
    )


def device_option() -> Any:
    """``--device``, shared by ``explain`` and ``evaluate``."""
    return option("--device", "auto", "auto, cpu, cuda or cuda:N")


def max_voxels_option() -> Any:
    """``--max-voxels``, shared by ``explain`` and ``evaluate``: the cap on a volume's declared size."""
    return option("--max-voxels", MAX_VOXELS, "refuse, unread, a volume declaring more voxels", type=int)


def check_max_voxels(max_voxels: int) -> None:
    """``max_voxels`` >= 1."""
    if max_voxels < 1:
        raise SegGradCAMError(f"--max-voxels must be >= 1; got {max_voxels}.")


def check_device_and_threads(device: str, threads: int) -> None:
    """``device``: see :func:`~SegGradCAMLib.selection.check_device_name` (whether it is present is
    checked when the run starts); ``threads`` >= 0."""
    check_device_name(device)
    if threads < 0:
        raise SegGradCAMError(f"--threads must be 0 (torch's default) or more; got {threads}.")


@dataclass(frozen=True)
class ExplainOptions(CommandOptions):
    """One ``explain`` run: the input volume(s) (one file or DICOM folder per model channel) or a
    cohort list, the model, what to explain and how, and where to write it."""

    inputs: tuple[str, ...] = option(
        "",
        (),
        "volume file(s) (NRRD, NIfTI, ...) or DICOM folder(s), one per model "
        "channel; FILE@N picks volume N of a 4D file",
        _strings,
        nargs="*",
        metavar="INPUT",
    )
    cohort: Path | None = option(
        "--cohort",
        None,
        "explain many cases instead of INPUT: a list file (one case per "
        "line, channel files comma-separated) or a folder of volumes; each case into "
        "OUT/<case id>/",
        metavar="LIST",
        normalise=_optional_path,
    )
    model: str = option(
        "--model",
        DEFAULT_MODEL,
        "registered model name (see 'seggradcam models') or a model file/folder",
        normalise=_text,
    )
    out: Path = out_option()
    layers: str | tuple[str, ...] = layers_option()
    method: str = option(
        "--method",
        AUTO_METHOD,
        "'auto' (default): the method the model's card chose by evidence, else hirescam",
        choices=METHOD_CHOICES,
    )
    classes: str | tuple[str, ...] = option(
        "--classes",
        ALL_CLASSES,
        "'all' (every class but background) or comma-separated class names or indices",
        normalise=_classes,
    )
    region: Path | None = option(
        "--region",
        None,
        "mask volume on the input grid: explain the class score inside this region only",
        normalise=_optional_path,
    )
    device: str = device_option()
    trust_model: bool = option(
        "--trust-model",
        False,
        "allow model formats that run code (TorchScript, MONAI bundle expressions)",
        action="store_true",
    )
    overview: bool = option("--no-overview", True, "skip overview.png", action="store_false")
    heatmap_dtype: str = option(
        "--heatmap-dtype",
        "float32",
        "float32, or uint8 (0..255 of the normalised map; for "
        "many classes: a quarter of the disk) - the raw maximum is kept in each file's "
        "metadata and explain.json",
        choices=HEATMAP_DTYPES,
    )
    amp: bool = option(
        "--amp",
        False,
        "run the network in bfloat16 autocast (GPU, or a CPU with AMX/AVX-512 BF16); the CAM arithmetic stays float32",
        action="store_true",
    )
    threads: int = option("--threads", 0, "torch CPU threads (0: torch's default)", type=int)
    max_voxels: int = max_voxels_option()
    step_size: float = option(
        "--step-size",
        0.5,
        "nnU-Net models: sliding-window step as a fraction of the patch (nnU-Net's tile_step_size)",
        type=float,
    )
    folds: tuple[str, ...] | None = option(
        "--folds",
        None,
        "nnU-Net folders: comma-separated folds (default: every fold_N with the checkpoint; 'all' = fold_all)",
        normalise=_optional_names,
    )
    checkpoint: str | None = option(
        "--checkpoint", None, "nnU-Net folders: checkpoint file name (default checkpoint_final.pth)"
    )
    faithfulness: bool = option(
        "--faithfulness",
        False,
        "score each heatmap: Deletion/Insertion AUC against 5 "
        "random orderings and the mask, with a verdict (on this volume only; several times "
        "the explain time)",
        action="store_true",
    )
    mirror: bool = option(
        "--mirror",
        False,
        "nnU-Net models: test-time mirroring (as nnU-Net predicts by default); off by default",
        action="store_true",
    )
    findings: FindingOptions = field(default_factory=FindingOptions)
    dicom: DicomOptions = field(default_factory=DicomOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        self.normalise_fields()
        if self.out is None:
            raise SegGradCAMError("Give the output folder (--out).")
        sources = [bool(self.inputs), self.cohort is not None, self.dicom.dicomweb is not None]
        if sum(sources) > 1:
            raise SegGradCAMError("Give input volumes, --cohort LIST or --dicomweb URL (with --study), not both.")
        if not any(sources):
            raise SegGradCAMError(
                "Give the input volume(s), one per model channel, or --cohort LIST, or --dicomweb URL --study UID."
            )
        if self.method not in METHOD_CHOICES:
            raise SegGradCAMError(f"Unknown method {self.method!r}; choose one of {', '.join(METHOD_CHOICES)}.")
        if self.heatmap_dtype not in HEATMAP_DTYPES:
            raise SegGradCAMError(f"--heatmap-dtype: choose one of {', '.join(HEATMAP_DTYPES)}.")
        check_device_and_threads(self.device, self.threads)
        check_max_voxels(self.max_voxels)
        if not 0 < self.step_size <= 1:
            raise SegGradCAMError(f"--step-size must be in (0, 1]; got {self.step_size}.")
        if self.faithfulness and self.region is not None:
            raise SegGradCAMError("--faithfulness scores the predicted masks; leave out --region.")
        if self.findings.wanted and self.region is not None:
            raise SegGradCAMError("--findings/--point explain the predicted findings; leave out --region.")

    def for_case(self, inputs: Sequence[str], out: Path, device: str) -> "ExplainOptions":
        """These options for one case of a cohort: its inputs, output folder and device."""
        return dataclasses.replace(
            self, inputs=tuple(inputs), cohort=None, out=out, device=device, engine=EngineOptions()
        )

    @property
    def nnunet_options_given(self) -> bool:
        """Whether an option that only nnU-Net folders take was given."""
        return bool(self.folds or self.checkpoint)


@dataclass(frozen=True)
class EvaluateOptions(CommandOptions):
    """One ``evaluate`` run: how faithful the heatmaps of a model are over a data set."""

    model: str = option("--model", DEFAULT_MODEL, "registered model name or a model file/folder", normalise=_text)
    data: str = option(
        "--data",
        "",
        "folder of volumes (one case each), a list file (one case per line, channels "
        "comma-separated), or 'demo' (the demo model's held-out slices)",
        required=True,
        normalise=_text,
    )
    out: Path = out_option()
    metrics: tuple[str, ...] = option(
        "--metrics",
        METRICS,
        "comma-separated: deletion, insertion (computed together), road, randomization",
        normalise=_names,
    )
    methods: tuple[str, ...] = option(
        "--methods",
        ("gradcam",),
        "comma-separated CAM methods (gradcam, gradcam++, "
        "hirescam, layercam; auto: the model card's choice, as explain)",
        normalise=_names,
    )
    baselines: tuple[str, ...] = option(
        "--baselines",
        BASELINE_EXPLANATIONS,
        "comma-separated baseline explanations (random, mask, gradient), or 'none'",
        normalise=_names,
    )
    layers: str | tuple[str, ...] = layers_option()
    classes: str | tuple[str, ...] = option(
        "--classes", ALL_CLASSES, "'all' or comma-separated class names or indices", normalise=_classes
    )
    max_slices: int = option(
        "--max-slices",
        100,
        "2D models: at most this many slices per volume (drawn with "
        "--seed), or of the 'demo' set in all; a 3D volume is one case",
        type=int,
    )
    step: float = option("--step", 0.01, "fraction of voxels per Deletion/Insertion step", type=float)
    baseline: str = option("--baseline", "blur", "what removed voxels become", choices=PERTURBATION_BASELINES)
    sigma_mm: float = option(
        "--sigma-mm", 20.0, "blur sigma in mm for --baseline blur (larger than the structures to remove)", type=float
    )
    neighbourhood_mm: float = option(
        "--neighbourhood-mm",
        DEFAULT_NEIGHBOURHOOD_MM,
        "3D models: Deletion/Insertion perturb only the voxels within this many mm of the target's mask, "
        "in steps of that neighbourhood (0: the whole volume; 2D models: always the whole slice)",
        type=float,
    )
    road_percentages: str = option("--road-percentages", DEFAULT_PERCENTAGES_TEXT, "ROAD removal percentages")
    seed: int = option("--seed", 0, "", type=int)
    batch_size: int = option("--batch-size", 32, "perturbed inputs per network call, at most", type=int)
    max_memory_gb: float | None = option("--max-memory-gb", None, "GB one scoring network call may take", type=float)
    device: str = device_option()
    threads: int = option(
        "--threads",
        0,
        "CPU threads for torch (0: torch's default; 1 is fastest for small 2D models on a busy machine)",
        type=int,
    )
    max_voxels: int = max_voxels_option()
    trust_model: bool = option("--trust-model", False, "allow model formats that run code", action="store_true")
    write_card: bool = option(
        "--write-card",
        False,
        "write the method with the lowest Deletion AUC on the default "
        "stage into the model folder's seggradcam_card.json (what --method auto then uses)",
        action="store_true",
    )
    force: bool = option("--force", False, "with --write-card: replace an existing card's choice", action="store_true")
    findings: bool = option(
        "--findings",
        False,
        "volumes: also score each finding (26-connected component of a class, as explain --findings) against "
        "its own component; its rows carry its id, summarised as '<class> findings'",
        action="store_true",
    )
    min_finding_mm3: float = min_finding_option()
    max_findings: int = max_findings_option()
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        self.normalise_fields()
        if self.out is None or not self.data:
            raise SegGradCAMError("Give the data (--data) and the output folder (--out).")
        if self.max_slices < 1 or not 0 < self.step <= 1:
            raise SegGradCAMError("--max-slices must be >= 1 and --step a fraction in (0, 1].")
        if not self.neighbourhood_mm >= 0:
            raise SegGradCAMError(
                f"--neighbourhood-mm must be >= 0 (0: the whole volume); got {self.neighbourhood_mm}."
            )
        for values, valid, what in (
            (self.metrics, METRICS, "metric"),
            (self.methods, (AUTO_METHOD, *CAM_METHODS), "method"),
            (self.baselines, BASELINE_EXPLANATIONS, "baseline explanation"),
            ((self.baseline,), PERTURBATION_BASELINES, "perturbation baseline"),
        ):
            bad = [v for v in values if v not in valid]
            if bad:
                raise SegGradCAMError(f"Unknown {what} {', '.join(bad)}; choose from {', '.join(valid)}.")
        if not self.methods and not self.baselines:
            raise SegGradCAMError("Nothing to evaluate: give at least one method or baseline.")
        self.road_fractions  # noqa: B018 - a bad list fails here, when built
        check_device_and_threads(self.device, self.threads)
        check_max_voxels(self.max_voxels)
        if self.batch_size < 1:
            raise SegGradCAMError(f"--batch-size must be >= 1; got {self.batch_size}.")
        if self.max_memory_gb is not None and not 0 < self.max_memory_gb < float("inf"):
            raise SegGradCAMError(f"--max-memory-gb must be a number of GB > 0; got {self.max_memory_gb}.")
        check_finding_limits(self.min_finding_mm3, self.max_findings)

    @property
    def road_fractions(self) -> tuple[float, ...]:
        """``--road-percentages`` as fractions (``"10,30"`` -> ``(0.1, 0.3)``)."""
        return fractions_from_percentages(self.road_percentages, "--road-percentages")
