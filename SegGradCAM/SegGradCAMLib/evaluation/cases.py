"""The data of an evaluation: the volumes of each case from a folder, a list file or one case,
and the demo model's held-out slices."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SegGradCAMError
from ..models.spec import LoadedModel
from ..pipelines import EvalCase

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

DEMO_DATA = "demo"


def data_entries(data: str) -> list[list[str]]:
    """Input volumes per case from a folder (one volume file per case), a list file (one case
    per line, channels separated by commas; ``#`` starts a comment), or one case: a volume
    file, or its channel files separated by commas."""
    parts = [part.strip() for part in data.split(",")]
    if all(part.lower().endswith(VOLUME_SUFFIXES) for part in parts):
        missing = [part for part in parts if not Path(part).is_file()]
        if missing:
            raise SegGradCAMError(f"Data not found: {', '.join(missing)}.")
        return [parts]
    path = Path(data)
    if not path.exists():
        raise SegGradCAMError(f"Data not found: {data} (give a folder of volumes, a list file, or '{DEMO_DATA}').")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        if not files:
            raise SegGradCAMError(f"Folder {data} holds no volume files ({', '.join(VOLUME_SUFFIXES)}).")
        return [[str(p)] for p in files]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise SegGradCAMError(
            f"Cannot read {data} as a list file (one case per line, channel files separated by "
            f"commas); give a volume ({', '.join(VOLUME_SUFFIXES)}), a folder or a list file."
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise SegGradCAMError(f"List file {data} holds a NUL byte (line {line}); remove it or give another list.")
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append([str((path.parent / part.strip()).resolve()) for part in line.split(",") if part.strip()])
    if not entries:
        raise SegGradCAMError(f"List file {data} names no volumes.")
    return entries


def demo_cases(model: LoadedModel, n_slices: int) -> list[EvalCase]:
    """The demo model's held-out evaluation slices (:func:`SegGradCAMLib.demo.data.evaluation_set`)."""
    from ..demo import data as demo_data

    if model.spec.in_channels != len(demo_data.CHANNELS) or model.spec.spatial_dims != 2:
        raise SegGradCAMError(
            f"The '{DEMO_DATA}' data set has {len(demo_data.CHANNELS)}-channel 2D slices; model {model.spec.name} "
            f"takes {model.spec.in_channels} channel(s) in {model.spec.spatial_dims}D."
        )
    slices = demo_data.evaluation_set(n_slices)
    spacing = (demo_data.SPACING_MM,) * 2
    return [EvalCase(f"demo-{i:03d}", torch.from_numpy(image), spacing) for i, image in enumerate(slices.images)]
