"""One interface for every model: a loaded model goes into exactly one pipeline, chosen once
when it loads (:func:`load_pipeline`), and nothing outside a pipeline asks which one it is.

- :class:`VolumePipeline`: the volume as SegGradCAM reads it, 2D slice-wise, 3D whole volume or
  MONAI sliding windows (:mod:`.inference`);
- :class:`NnunetPipeline`: nnU-Net's own reader, preprocessing, sliding window and export
  around the CAM pass (:mod:`.inference_nnunet`).

Both provide ``check_inputs`` (what the pipeline can read), ``check_scorable`` (whether its
heatmaps can be scored), ``explain`` (segment and explain one volume, heatmaps streamed to
``on_heatmap``) and ``faithfulness_cases`` / ``evaluation_cases`` (the volume as the network
sees it, for Deletion/Insertion), as MONAI's ``Inferer`` subclasses share ``__call__``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

import torch

from .cam import label_map
from .errors import SegGradCAMError
from .class_maps import ClassHeatmap
from .findings import FindingRequest, FindingSet
from .inference import ProgressCallback, VolumeExplanation
from .targets import TargetRequest
from .model_grid import Direction, check_volume, prepare_input
from .models.spec import LoadedModel
from .options import MAX_VOXELS
from .preprocessing import pad_end, padded_shape
from .volumes.files import Volume, check_files, check_no_itk_sibling, read_channels
from .volume_findings import volume_findings

HeatmapCallback = Callable[[ClassHeatmap, np.ndarray], None]


@dataclass(frozen=True)
class InputVolumes:
    """The input files as given (one per channel) and as read: ``volumes[0]`` is the reference
    grid the outputs take."""

    paths: tuple[str, ...]
    volumes: tuple[Volume, ...]

    @classmethod
    def read(cls, paths: Sequence[str], max_voxels: int = MAX_VOXELS) -> "InputVolumes":
        """The files read, each refused if it declares more than ``max_voxels`` values."""
        return cls(tuple(paths), tuple(read_channels(list(paths), max_voxels)))

    @property
    def reference(self) -> Volume:
        return self.volumes[0]

    @cached_property
    def image(self) -> np.ndarray:
        """``(Cin, Z, Y, X)``, stacked once (the explain and the faithfulness cases share it)."""
        return np.stack([v.array for v in self.volumes])

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(self.reference.spacing)[::-1]

    @property
    def image_and_grid(self) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
        """``image``, ``spacing_zyx`` and the reference's direction, as :func:`cases_from_volume` takes them."""
        return self.image, self.spacing_zyx, self.reference.direction


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain and how (resolved from the options): layers (``"auto"`` or names), class
    indices, CAM method, target regions ``(len(classes), Z, Y, X)`` bool or None, device, autocast,
    the nnU-Net sliding-window step and mirroring, and what the segmentation pass gives
    (:class:`~SegGradCAMLib.targets.TargetRequest`)."""

    layers: str | Sequence[str]
    classes: list[int]
    method: str
    regions: np.ndarray | None
    device: str
    amp: bool = False
    step_size: float = 0.5
    mirror: bool = False
    request: TargetRequest | None = None  # findings, probabilities, channel reliance


@dataclass
class EvalCase:
    """One unit of evaluation on the model grid: ``image`` ``(Cin, *S)`` normalised, ``spacing`` in mm,
    and the findings' ``regions`` ``(K, *S)`` bool on it (scoring finding maps; ``findings``: which), else None."""

    name: str
    image: torch.Tensor
    spacing: tuple[float, ...]
    regions: torch.Tensor | None = None
    findings: FindingSet | None = None


def _predicted_labels(model: LoadedModel, images: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    """Argmax labels ``(N, *S)`` of ``images`` ``(N, Cin, *S)``."""
    parts = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            parts.append(label_map(model.network(images[start : start + batch_size].to(device))).cpu())
    return torch.cat(parts)


def cases_from_volume(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    direction: Direction | None,
    name: str,
    classes: Sequence[int],
    batch_size: int = 32,
    device: str = "cpu",
    regions: np.ndarray | None = None,
) -> list[EvalCase]:
    """Cases of one volume ``(Cin, Z, Y, X)`` (spacing in mm, array order), each with its part of the
    findings' ``regions`` ``(K, Z, Y, X)`` bool (on the volume's grid) when given.

    3D models: the whole volume on the model grid, padded. 2D models: the slices in
    which the network predicts at least one of ``classes`` or that show a finding.
    """
    spec = model.spec
    check_volume(image, spec)
    x, grid = prepare_input(spec, image, spacing, direction)
    found = None if regions is None else grid.to_model(regions.astype(np.uint8), labels=True).bool()
    if spec.spatial_dims == 3:
        shape = padded_shape(x.shape[1:], spec.divisible_by, spec.roi_size or spec.min_size)
        return [EvalCase(name, pad_end(x, shape), grid.spacing, None if found is None else pad_end(found, shape))]
    slices = x.permute(1, 0, 2, 3)  # (Z, Cin, Y, X)
    slices = pad_end(slices, padded_shape(slices.shape[2:], spec.divisible_by, spec.min_size))
    labels = _predicted_labels(model, slices, device, batch_size)
    present = torch.stack([(labels == c).flatten(1).any(1) for c in classes]).any(0)
    if found is not None:
        found = pad_end(found.permute(1, 0, 2, 3), slices.shape[2:])  # (Z, K, Y, X)
        present |= found.flatten(1).any(1)
    return [
        EvalCase(f"{name}[{z}]", slices[z], grid.spacing[1:], None if found is None else found[z])
        for z in torch.nonzero(present).flatten().tolist()
    ]


def nnunet_case(model: LoadedModel, paths: Sequence[str], name: str) -> EvalCase:
    """One volume of an nnU-Net model as nnU-Net reads and preprocesses it (its grid, its
    normalisation), padded at the end to a multiple of the network's total stride along each axis:
    ``(Cin, z, y, x)``. Scored in one pass over the whole volume (not in sliding windows)."""
    from .nnunet_grid import preprocess

    manager = model.nnunet_parts().configuration_manager
    data, _, _ = preprocess(model, paths)
    x = torch.from_numpy(data).float()
    strides = np.prod(manager.pool_op_kernel_sizes, axis=0)  # the network's total stride per axis
    return EvalCase(name, pad_end(x, padded_shape(x.shape[1:], strides)), tuple(float(s) for s in manager.spacing))


class Pipeline(Protocol):
    model: LoadedModel

    def check_inputs(self, paths: Sequence[str]) -> None: ...

    def check_scorable(self, findings: bool = False) -> None: ...

    def explain(
        self,
        inputs: InputVolumes,
        settings: ExplainSettings,
        progress: ProgressCallback | None,
        on_heatmap: HeatmapCallback | None,
    ) -> VolumeExplanation: ...

    def faithfulness_cases(
        self, inputs: InputVolumes, classes: Sequence[int], device: str, regions: np.ndarray | None = None
    ) -> list[EvalCase]: ...

    def report_note(self, settings: ExplainSettings) -> dict | None: ...

    def evaluation_cases(
        self,
        paths: Sequence[str],
        name: str,
        classes: Sequence[int],
        max_slices: int,
        seed: int,
        batch_size: int,
        device: str,
        max_voxels: int = MAX_VOXELS,
        findings: FindingRequest | None = None,
    ) -> list[EvalCase]: ...


@dataclass
class VolumePipeline:
    """Models SegGradCAM runs itself: 2D slices, a 3D whole volume or MONAI sliding windows."""

    model: LoadedModel

    def check_inputs(self, paths: Sequence[str]) -> None:
        """Any volume file, ``FILE@N`` or DICOM folder: checked when read."""

    def check_scorable(self, findings: bool = False) -> None:
        """Every such model's heatmaps and finding maps can be scored."""

    def report_note(self, settings: ExplainSettings) -> dict | None:
        """Nothing to add to explain.json."""
        return None

    def explain(
        self,
        inputs: InputVolumes,
        settings: ExplainSettings,
        progress: ProgressCallback | None,
        on_heatmap: HeatmapCallback | None,
    ) -> VolumeExplanation:
        from .inference import explain_volume

        return explain_volume(
            self.model,
            inputs.image,
            inputs.spacing_zyx,
            inputs.reference.direction,
            layers=settings.layers,
            classes=settings.classes,
            method=settings.method,
            regions=settings.regions,
            device=settings.device,
            progress=progress,
            amp=settings.amp,
            on_heatmap=on_heatmap,
            request=settings.request,
        )

    def faithfulness_cases(
        self, inputs: InputVolumes, classes: Sequence[int], device: str, regions: np.ndarray | None = None
    ) -> list[EvalCase]:
        """The volume on the model's grid (3D) or its slices showing a class or a finding (2D), with
        the findings' ``regions`` ``(K, Z, Y, X)`` bool (input grid) on each."""
        return cases_from_volume(self.model, *inputs.image_and_grid, "volume", classes, device=device, regions=regions)

    def evaluation_cases(
        self,
        paths: Sequence[str],
        name: str,
        classes: Sequence[int],
        max_slices: int,
        seed: int,
        batch_size: int,
        device: str,
        max_voxels: int = MAX_VOXELS,
        findings: FindingRequest | None = None,
    ) -> list[EvalCase]:
        """The cases of one volume named ``name`` (2D: ``name[z]``, at most ``max_slices`` drawn with ``seed``);
        a file declaring more than ``max_voxels`` values is refused. With ``findings``, each case carries the
        volume's findings and their regions (2D: drawn among the slices showing a class or a finding)."""
        inputs = InputVolumes.read(paths, max_voxels)
        found = volume_findings(self.model, *inputs.image_and_grid, classes, findings, batch_size, device)
        regions = found.regions(inputs.image.shape[1:]) if found and found.findings else None
        cases = cases_from_volume(self.model, *inputs.image_and_grid, name, classes, batch_size, device, regions)
        if len(cases) > max_slices:
            keep = np.sort(np.random.default_rng(seed).choice(len(cases), max_slices, replace=False))
            cases = [cases[i] for i in keep]
        return [replace(case, findings=found) for case in cases]


@dataclass
class NnunetPipeline:
    """nnU-Net v2 trained-model folders, with nnU-Net's own reader, preprocessing and export."""

    model: LoadedModel

    def check_inputs(self, paths: Sequence[str]) -> None:
        """nnU-Net reads its inputs itself (plans.json's image reader): plain files only, NIfTI for
        nibabel's readers."""
        from .nnunet_grid import READERS, reader_name

        reader = reader_name(self.model)
        name = self.model.spec.name
        if reader not in READERS:
            raise SegGradCAMError(f"{name} reads images with {reader}; supported: {', '.join(READERS)}.")
        if any("@" in path or Path(path).is_dir() for path in paths):
            raise SegGradCAMError(
                "nnU-Net models read each channel from its own file (NRRD, NIfTI): no FILE@N, no DICOM folder."
            )
        check_no_itk_sibling(paths)
        if reader.startswith("Nibabel") and not all(path.endswith((".nii", ".nii.gz")) for path in paths):
            raise SegGradCAMError(
                f"{name} reads images with nibabel ({reader}): give NIfTI files (.nii.gz); "
                "convert others first, e.g. in 3D Slicer or with SimpleITK."
            )

    def check_scorable(self, findings: bool = False) -> None:
        """A 3D configuration of exclusive classes (not 2D, not overlapping sigmoid regions); not finding maps yet."""
        name = self.model.spec.name
        if findings:
            raise SegGradCAMError(
                f"{name}: scoring finding maps (evaluate --findings, explain --findings --faithfulness) is not "
                "available for nnU-Net models yet; leave out --findings."
            )
        if self.model.spec.spatial_dims != 3:
            raise SegGradCAMError(
                f"{name} is a 2D nnU-Net configuration; scoring heatmaps (--faithfulness, evaluate) needs a 3D one."
            )
        if self.model.nnunet_parts().label_manager.has_regions:
            raise SegGradCAMError(
                f"{name} predicts overlapping regions (sigmoid outputs); scoring its heatmaps "
                "(--faithfulness, evaluate) is not available for region-based nnU-Net models yet."
            )

    def report_note(self, settings: ExplainSettings) -> dict | None:
        """explain.json's ``nnunet``: the segmentation is nnU-Net's own prediction, and how it was made."""
        return {
            "model": self.model.spec.description,
            "step_size": settings.step_size,
            "mirroring": bool(settings.mirror),
            "note": "the segmentation is nnU-Net's own prediction, "
            + ("with" if settings.mirror else "without")
            + " test-time mirroring (nnU-Net and SlicerNNUnet mirror by default, so theirs can differ slightly "
            "unless --mirror)",
        }

    def explain(
        self,
        inputs: InputVolumes,
        settings: ExplainSettings,
        progress: ProgressCallback | None,
        on_heatmap: HeatmapCallback | None,
    ) -> VolumeExplanation:
        from .inference_nnunet import explain_nnunet

        region = None if settings.regions is None else settings.regions[0]
        return explain_nnunet(
            self.model,
            inputs.paths,
            settings.step_size,
            settings.mirror,
            layers=settings.layers,
            classes=settings.classes,
            method=settings.method,
            region=region,
            device=settings.device,
            progress=progress,
            on_heatmap=on_heatmap,
            request=settings.request,
            spacing=inputs.spacing_zyx,
        )

    def faithfulness_cases(
        self, inputs: InputVolumes, classes: Sequence[int], device: str, regions: np.ndarray | None = None
    ) -> list[EvalCase]:
        """The volume as nnU-Net preprocesses it (its files checked when read), scored with the first
        fold's weights (as evaluate does); finding maps (``regions``) are not scored on its grid yet."""
        self.check_scorable(regions is not None)
        self.model.network.load_state_dict(self.model.nnunet_parts().parameters[0])
        return [nnunet_case(self.model, inputs.paths, "volume")]

    def evaluation_cases(
        self,
        paths: Sequence[str],
        name: str,
        classes: Sequence[int],
        max_slices: int,
        seed: int,
        batch_size: int,
        device: str,
        max_voxels: int = MAX_VOXELS,
        findings: FindingRequest | None = None,
    ) -> list[EvalCase]:
        """One case: the whole volume as nnU-Net preprocesses it (see :func:`nnunet_case`), its files
        checked as :meth:`check_inputs` and :func:`~.volumes.files.check_files` do."""
        self.check_scorable(findings is not None)
        self.check_inputs(paths)
        check_files(paths, max_voxels)
        return [nnunet_case(self.model, paths, name)]


def pipeline_for(model: LoadedModel) -> Pipeline:
    """The one pipeline of a loaded model."""
    return NnunetPipeline(model) if model.nnunet is not None else VolumePipeline(model)


def load_pipeline(
    model: str,
    trust: bool = False,
    device: str = "cpu",
    folds: Sequence[str] | None = None,
    checkpoint: str | None = None,
) -> Pipeline:
    """Load a registered model by name or a model file/folder (see :func:`~.models.load_model`) into its pipeline."""
    from .models import load_model

    return pipeline_for(load_model(model, trust=trust, device=device, folds=folds, checkpoint=checkpoint))
