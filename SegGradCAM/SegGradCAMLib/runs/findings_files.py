"""The findings of an explain run: the request from the options, ``findings.json`` and ``findings.csv``
(see docs/findings.md), and each target's channel reliance in the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..finding_options import FindingOptions
from ..findings import Finding, FindingRequest, FindingSet
from ..inference import VolumeExplanation
from ..volumes.files import Volume
from .heatmap_files import HeatmapWriter
from .outputs import FINDINGS_FILE, FINDINGS_TABLE, RunFolder

_STATS = ("probability_mean", "probability_min", "entropy_mean")


def channel_names(paths: Sequence[str]) -> list[str]:
    """A name per input channel: its file name without extensions (``t1c.nrrd`` -> ``t1c``), or
    ``channel N`` where names repeat."""
    names = [Path(p.split("@")[0].rstrip("/")).name.split(".")[0] or f"channel {i}" for i, p in enumerate(paths)]
    return names if len(set(names)) == len(names) else [f"channel {i}" for i in range(len(paths))]


def finding_request(options: FindingOptions, reference: Volume) -> FindingRequest | None:
    """The engine's request of ``--findings``/``--point`` (the point as a voxel index of ``reference``)."""
    if not options.wanted:
        return None
    point = None if options.point is None else tuple(float(v) for v in reference.ras_to_index(options.point))
    return FindingRequest(options.min_finding_mm3, options.max_findings, point, options.point_radius_mm)  # type: ignore[arg-type]


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]


def _finding_json(finding: Finding, writer: HeatmapWriter, reference: Volume, reliance: dict | None) -> dict:
    """One finding's entry of findings.json."""
    first, last = finding.bounds_zyx()
    ras = reference.index_to_ras(finding.boundary_zyx())  # an oblique grid's box needs every edge voxel
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    entry: dict[str, Any] = {
        "id": finding.id,
        "class": writer.labels[finding.class_index],
        "class_index": finding.class_index,
        "voxels": finding.voxels,
        "volume_ml": round(finding.voxels * voxel_ml, 6),
        "centroid_ras": _rounded(reference.index_to_ras(finding.centroid_zyx())),
        "bbox_ras": [_rounded(ras.min(axis=0)), _rounded(ras.max(axis=0))],
        "centroid_ijk": _rounded(finding.centroid_zyx()[::-1]),
        "bbox_ijk": [[int(v) for v in first[::-1]], [int(v) for v in last[::-1]]],
        **{key: finding.stats.get(key) for key in _STATS},
    }
    for key in ("fold_disagreement_mean", "mirror_disagreement_mean"):  # nnU-Net, several folds / --mirror
        if key in finding.stats:
            entry[key] = finding.stats[key]
    entry["layers"] = {layer: e.to_json() for layer, e in writer.finding_layers.get(finding.id, {}).items()}
    if reliance is not None:
        entry["reliance"] = reliance
    return entry


def findings_report(
    found: FindingSet,
    result: VolumeExplanation,
    writer: HeatmapWriter,
    reference: Volume,
    options: FindingOptions,
    channels: Sequence[str],
) -> dict:
    """findings.json's object; also puts each class's reliance into its explain.json entry."""
    reliance = result.reliance or [None] * (len(result.classes) + len(found.findings))
    for c, entry in zip(result.classes, reliance):
        writer.entries[c].reliance = entry
    point = None
    if options.point is not None and found.point is not None:
        point = {"ras": list(options.point), "radius_mm": options.point_radius_mm, **found.point}
    return {
        "min_finding_mm3": options.min_finding_mm3,
        "max_findings": options.max_findings,
        "found": found.found,
        "left_out": found.left_out,
        "point": point,
        "channels": list(channels),
        "findings": [
            _finding_json(f, writer, reference, r) for f, r in zip(found.findings, reliance[len(result.classes) :])
        ],
    }


def _csv_row(entry: dict, channels: Sequence[str]) -> dict:
    """One findings.csv row: the scalar fields, the first layer's map, and reliance per channel."""
    row = {k: v for k, v in entry.items() if not isinstance(v, (dict, list))}
    row.update({f"centroid_{axis}": v for axis, v in zip("RAS", entry["centroid_ras"])})
    layer = next(iter(entry["layers"].values()), {})
    row.update({"heatmap": layer.get("file"), "energy_inside": layer.get("energy_inside")})
    row.update({"energy_within_7mm": layer.get("energy_shell"), "energy_elsewhere": layer.get("energy_beyond")})
    for kind, values in entry.get("reliance", {}).items():
        row.update({f"{kind}_{name}": value for name, value in values.items()})
    return row


def write_findings(folder: RunFolder, report: dict, writer: HeatmapWriter) -> None:
    """``findings.json`` and ``findings.csv`` into the run's folder."""
    with folder.writing(FINDINGS_FILE) as path:
        Path(path).write_text(json.dumps(report, indent=2), encoding="utf-8")
    writer.file_written()
    rows = [_csv_row(entry, report["channels"]) for entry in report["findings"]]
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["id", "class"]
    with folder.writing(FINDINGS_TABLE) as path, open(path, "w", newline="", encoding="utf-8") as handle:
        table = csv.DictWriter(handle, fieldnames=columns)
        table.writeheader()
        table.writerows(rows)
    writer.file_written()
