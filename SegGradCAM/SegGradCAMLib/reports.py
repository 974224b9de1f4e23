"""What a run wrote, as typed objects: :class:`ExplainReport` *is* ``explain.json``,
:class:`EvaluationReport` *is* ``metrics.json``. Every reader (the command line's summary, the
3D Slicer module, the web viewer, the evaluation plots) reads these types, never the raw keys.

``to_json()`` gives the file's object (key order as written), ``from_json()`` reads it back;
``from_json(r.to_json()) == r``. Files have a ``schema`` version. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import SegGradCAMError

EXPLAIN_SCHEMA = 1
EVALUATION_SCHEMA = 1
EXPLAIN_FILE = "explain.json"
METRICS_FILE = "metrics.json"


def _without_none(values: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """``values`` without the ``optional`` keys whose value is None (absent from the file)."""
    return {k: v for k, v in values.items() if not (k in optional and v is None)}


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """The fields of ``cls`` in ``data``; a missing required field is a user-facing error."""
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SegGradCAMError(f"{what} lacks {', '.join(missing)}: not written by this version of SegGradCAM.")
    return {k: v for k, v in data.items() if k in names}


@dataclass
class HeatmapEntry:
    """One heatmap file of one class and layer: its raw maximum (the normalisation), the
    normalised map's maximum and mean, where its energy lies against the class mask, and its
    faithfulness score when the run scored it."""

    file: str
    max_raw: float
    max: float
    mean: float
    energy_inside: float
    energy_shell: float
    energy_beyond: float
    shell_mm: float
    faithfulness: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self), ("faithfulness",))


@dataclass
class ClassEntry:
    """One explained class: index, name, voxels of its mask, heatmap per layer, and its channel
    reliance (multi-channel models with findings; see :mod:`SegGradCAMLib.reliance`)."""

    index: int
    name: str
    voxels: int
    layers: dict[str, HeatmapEntry] = field(default_factory=dict)
    reliance: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict[str, Any]:
        values = {
            "index": self.index,
            "name": self.name,
            "voxels": self.voxels,
            "layers": {layer: entry.to_json() for layer, entry in self.layers.items()},
            "reliance": self.reliance,
        }
        return _without_none(values, ("reliance",))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClassEntry":
        layers = {
            layer: HeatmapEntry(**_known(HeatmapEntry, entry, "explain.json's heatmap entry"))
            for layer, entry in data.get("layers", {}).items()
        }
        return cls(**{**_known(cls, data, "explain.json's class entry"), "layers": layers})


@dataclass
class ModelInfo:
    """The model a run used: name, sha256 of its weights, source, labels (index = class)."""

    name: str
    sha256: str
    source: str
    labels: list[str]
    trusted_code: bool
    subnormal_weights_zeroed: int


class _ReportFile:
    """A report's file in a run's folder: ``FILE``, written as JSON with ``INDENT``."""

    FILE: ClassVar[str]
    INDENT: ClassVar[int]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, folder: Path) -> Path:
        path = Path(folder) / self.FILE
        path.write_text(json.dumps(self.to_json(), indent=self.INDENT), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        raise NotImplementedError

    @classmethod
    def read(cls, folder: Path):
        """The report of the run in ``folder``."""
        return cls.from_json(_read_object(Path(folder) / cls.FILE))


@dataclass
class ExplainReport(_ReportFile):
    """``explain.json``: what an explain run did and wrote (files relative to its folder)."""

    model: ModelInfo
    method: str
    method_requested: str
    method_card: dict[str, Any] | None
    layers: list[str]
    normalisation: str
    heatmap_dtype: str
    region: str
    classes: list[ClassEntry]
    inputs: list[str]
    input_geometry: dict[str, Any]
    device: str
    amp: bool
    torch: str
    threads: int
    peak_memory_mb: dict[str, float]
    timings: dict[str, float]
    checks: dict[str, float] | None = None
    class_groups: dict[str, Any] | None = None
    nnunet: dict[str, Any] | None = None
    dicom: dict[str, Any] | None = None
    findings: dict[str, Any] | None = None
    uncertainty: list[str] | None = None
    segmentation: str = "segmentation.nrrd"
    tool: str = "seggradcam"
    schema: int = EXPLAIN_SCHEMA
    FILE: ClassVar[str] = EXPLAIN_FILE
    INDENT: ClassVar[int] = 2

    def to_json(self) -> dict[str, Any]:
        """The explain.json object."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["model"] = dataclasses.asdict(self.model)
        values["classes"] = [entry.to_json() for entry in self.classes]
        ordered = {"schema": self.schema, "tool": self.tool, **values}
        return _without_none(ordered, ("checks", "class_groups", "nnunet", "dicom", "findings", "uncertainty"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExplainReport":
        """From explain.json's object; files of an older version (no ``schema``) read as schema 1."""
        _check_schema(data, EXPLAIN_SCHEMA, EXPLAIN_FILE)
        values = _known(cls, data, EXPLAIN_FILE)
        values["model"] = ModelInfo(**_known(ModelInfo, data["model"], "explain.json's model"))
        values["classes"] = [ClassEntry.from_json(entry) for entry in data["classes"]]
        return cls(**values)

    def heatmaps(self):
        """``(class entry, layer, heatmap entry)`` for every heatmap file, classes first."""
        return [(entry, layer, info) for entry in self.classes for layer, info in entry.layers.items()]


@dataclass
class EvaluationReport(_ReportFile):
    """``metrics.json``: an evaluation's configuration, rows (case x class x explanation x
    layer), bootstrap summaries, comparisons, mean curves and randomisation results."""

    model: dict[str, Any]
    data: str
    cases: int
    device: str
    config: dict[str, Any]
    summary: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    randomization: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    randomization_steps: list[dict[str, Any]]
    timings: dict[str, float]
    cohort: dict[str, Any] | None = None
    peak_memory_mb: dict[str, float] | None = None  # this process's (a Ray cohort's cases ran in others)
    tool: str = "seggradcam evaluate"
    schema: int = EVALUATION_SCHEMA
    FILE: ClassVar[str] = METRICS_FILE
    INDENT: ClassVar[int] = 1

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _without_none({"schema": self.schema, "tool": self.tool, **values}, ("cohort",))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvaluationReport":
        _check_schema(data, EVALUATION_SCHEMA, METRICS_FILE)
        return cls(**_known(cls, data, METRICS_FILE))

    @property
    def explained_classes(self) -> list[str]:
        """The class names of the rows, in order."""
        return list(dict.fromkeys(row["class"] for row in self.rows))


@dataclass
class CohortSummary:
    """What a cohort run did (``cohort.json``'s ``last_run``; ``metrics.json``'s ``cohort``): its
    engine, the cases of its list, those done now, skipped (complete before) and failed, the worker
    processes, how often a model loaded, its seconds, the finished cases run again because
    their input files changed (counted in ``done``), and the findings each case done now explained
    (``explain --findings``: case id -> count; absent otherwise)."""

    engine: str
    cases: int
    done: int
    skipped: int
    failed: int
    worker_processes: int
    model_loads: int
    seconds: float
    recomputed: int = 0
    findings: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(dataclasses.asdict(self), ("findings",))


def _check_schema(data: dict[str, Any], version: int, name: str) -> None:
    if data.get("schema", version) != version:
        raise SegGradCAMError(
            f"{name} has schema {data.get('schema')}; this version of SegGradCAM reads schema "
            f"{version}: re-run it with this version."
        )


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SegGradCAMError(f"Cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise SegGradCAMError(f"{path} is not a SegGradCAM report (not a JSON object).")
    return data
