"""Heatmap files of an explain run, written one at a time as each class map reaches the input grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..evaluation.energy import heatmap_energy_fractions
from ..class_maps import ClassHeatmap
from ..findings import NEIGHBOURHOOD_MM
from ..reports import ClassEntry, HeatmapEntry
from ..uncertainty import UncertaintyMap
from ..volumes.files import Volume, safe_filename, write_like
from .outputs import RunFolder

OVERVIEW_ROWS = 6  # heatmaps drawn in overview.png (the first ones; every map is written to a file)
SHELL_MM = 3.0  # the shell around a class mask whose heatmap energy is reported
MAP_KEY, CLASS_KEY = "SegGradCAM.Map", "SegGradCAM.Class"  # a map file's kind and class (its NRRD fields)


def encode_heatmap(heat: np.ndarray, dtype: str) -> np.ndarray:
    """A normalised map ``(Z, Y, X)`` in 0..1 as written: float32, or uint8 = round(255 x value)."""
    return heat if dtype == "float32" else np.rint(np.clip(heat, 0, 1) * 255).astype(np.uint8)


@dataclass
class HeatmapWriter:
    """Writes each class map into the run's ``folder`` with the ``reference`` volume's geometry and
    records it in ``entries`` (class index -> :class:`ClassEntry`); keeps the first maps for the overview.
    ``regions`` ``(len(classes), Z, Y, X)``: the user's target regions, else each class's mask.
    ``file_written()`` reports each file as a ``write`` step of ``files`` to ``progress``;
    ``files_per_map``: the files each map gives (2 with ``--dicom``: its Parametric Map too)."""

    folder: RunFolder
    reference: Volume
    labels: list[str]
    method: str
    dtype: str
    several_layers: bool
    regions: np.ndarray | None
    keep_for_overview: bool
    files: int
    progress: Callable[[str, int, int], None]
    files_per_map: int = 1
    written: int = 0
    entries: dict[int, ClassEntry] = field(default_factory=dict)
    finding_layers: dict[int, dict[str, HeatmapEntry]] = field(default_factory=dict)  # finding id -> layer -> map
    maps: list[str] = field(default_factory=list)  # probability, entropy and disagreement files written
    overview_rows: list[tuple[str, str, int, np.ndarray]] = field(default_factory=list)  # (class, layer, index, map)

    def file_written(self) -> None:
        self.written += 1
        self.progress("write", self.written, self.files)

    def filename(self, name: str, layer: str, finding: int | None = None) -> str:
        stem = safe_filename(name) + ("" if finding is None else f"_f{finding}")
        return f"heatmap_{stem}" + (f"_{safe_filename(layer)}" if self.several_layers else "") + ".nrrd"

    def __call__(self, heatmap: ClassHeatmap, labels: np.ndarray) -> None:
        """Write one class (or finding) map as soon as it is on the input grid (only one is held at a time)."""
        c, layer, heat = heatmap.class_index, heatmap.layer, heatmap.array
        name = self.labels[c]
        filename = self.filename(name, layer, heatmap.finding)
        own = labels == c if heatmap.mask is None else heatmap.mask
        spacing_zyx = tuple(self.reference.spacing)[::-1]
        if heatmap.finding is not None:  # a finding: energy inside, within 7 mm and elsewhere
            fractions = heatmap_energy_fractions(heat, own, spacing_zyx, shell_mm=NEIGHBOURHOOD_MM)
            entries = self.finding_layers.setdefault(heatmap.finding, {})
            self.files += self.files_per_map  # how many findings there are is known only now
        else:
            mask = own if self.regions is None else self.regions[heatmap.position]
            fractions = heatmap_energy_fractions(heat, mask, spacing_zyx, shell_mm=SHELL_MM)
            if c not in self.entries:  # once per class, not per layer
                self.entries[c] = ClassEntry(c, name, int(own.sum()))
            entries = self.entries[c].layers
        entries[layer] = HeatmapEntry(filename, heatmap.raw_max, float(heat.max()), float(heat.mean()), **fractions)
        metadata = {
            "SegGradCAM.RawMax": f"{heatmap.raw_max:.9g}",
            "SegGradCAM.Method": self.method,
            "SegGradCAM.Layer": layer,
            CLASS_KEY: name,
        }
        if heatmap.finding is not None:
            metadata["SegGradCAM.Finding"] = str(heatmap.finding)
        if self.dtype == "uint8":
            metadata["SegGradCAM.ValueScale"] = f"{1 / 255:.9g}"  # stored value x scale = normalised value
        with self.folder.writing(filename) as path:
            write_like(encode_heatmap(heat, self.dtype), self.reference, path, metadata)
        if self.keep_for_overview and heatmap.finding is None and len(self.overview_rows) < OVERVIEW_ROWS:
            self.overview_rows.append((name, layer, c, heat))
        self.file_written()

    def write_map(self, volume: UncertaintyMap) -> None:
        """Write a probability, entropy or disagreement map ``(Z, Y, X)`` float32 (0..1)."""
        suffix = "" if volume.class_index is None else f"_{safe_filename(self.labels[volume.class_index])}"
        filename = f"{volume.kind}{suffix}.nrrd"
        metadata = {MAP_KEY: volume.kind}
        if volume.class_index is not None:
            metadata[CLASS_KEY] = self.labels[volume.class_index]
        with self.folder.writing(filename) as path:
            write_like(volume.array, self.reference, path, metadata)
        self.maps.append(filename)
        self.file_written()

    def overview_titles(self) -> list[tuple[str, int, np.ndarray]]:
        """Overview rows: ``class / layer`` (and the faithfulness verdict when scored, the channel
        reliance when measured), class index, map."""
        rows = []
        for name, layer, c, heat in self.overview_rows:
            entry = self.entries[c]
            score = entry.layers[layer].faithfulness
            title = f"{name} / {layer}" + ("" if score is None else f"\n{score['verdict']}")
            if entry.reliance is not None:
                lost = entry.reliance["occlusion"]
                title += "\nprobability " + ", ".join(f"without {k} {-v:+.0%}" for k, v in lost.items() if k != "all")
            rows.append((title, c, heat))
        return rows
