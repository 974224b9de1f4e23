"""The network run with CAMs over a prepared (oriented, resampled, normalised) volume: slice-wise
(2D models), over the whole padded volume, or in MONAI's sliding windows (3D models with a
``roi_size``); one group of targets at a time, its progress counted over the groups."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .cam import CAMMaps, label_map, seg_grad_cam
from .errors import CancelledError, SegGradCAMError
from .preprocessing import pad_end, padded_shape
from .sliding_windows import OVERLAP, SIGMA_SCALE, monai_padding, monai_windows

# Key of the logits among the per-layer maps a window returns: no layer is named ""
# (resolve_layers refuses the root module), so it cannot clash with a layer name.
_LOGITS = ""


@dataclass
class PredictedRegions:
    """The targets' regions as the predicted masks ``labels == c`` of ``classes``, cut window by
    window from the label map ``labels`` ``(Z, Y, X)`` (no ``(n, Z, Y, X)`` volume of masks)."""

    labels: torch.Tensor
    classes: list[int]

    @classmethod
    def of(cls, logits: torch.Tensor, classes: Sequence[int]) -> "PredictedRegions":
        """From stitched logits ``(C, Z, Y, X)``."""
        return cls(label_map(logits, 0).to(torch.int16), list(classes))

    def __getitem__(self, group: slice) -> "PredictedRegions":
        """The regions of a group of the targets."""
        return PredictedRegions(self.labels, self.classes[group])

    def padded(self, pads: list[int]) -> "PredictedRegions":
        """Padded as ``F.pad`` pads (the padding in no class)."""
        return PredictedRegions(F.pad(self.labels, pads, value=-1), self.classes) if any(pads) else self

    def cut(self, where: tuple[slice, ...]) -> torch.Tensor:
        """The masks ``(n, *window)`` bool in the window ``where``."""
        part = self.labels[where]
        return torch.stack([part == c for c in self.classes])


class VolumeRunner:
    """Runs the network with CAMs over a prepared (oriented, resampled, normalised) volume."""

    def __init__(self, model, layers, classes, method, device, progress, cancel, amp=False, batch_size=16):
        self.model, self.layers, self.classes, self.method = model, layers, classes, method
        self.device, self.progress, self.cancel, self.amp = device, progress, cancel, amp
        self.batch_size = batch_size
        self.input_gradients = False  # also |input x gradient| per channel (channel reliance)
        self.stitch_logits = True  # sliding windows: stitch the logits too (see begin_group)
        self.stage = "windows" if model.spec.spatial_dims == 3 else "slices"
        self.cam_passes = 1  # forward passes with CAMs per group of targets, each with len(classes) backward steps
        self.cam_passes_done = 0
        self.group, self.group_sizes = 0, [0]  # the group of targets explained now, of groups of these sizes

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError("Cancelled by the user.")

    def begin_group(self, number: int, sizes: Sequence[int], stitch_logits: bool) -> None:
        """The passes of group ``number`` of the groups of ``sizes`` targets follow (progress counts on
        over the groups), sliding windows stitching the logits too when ``stitch_logits``."""
        self.group, self.group_sizes, self.cam_passes_done = number, list(sizes), 0
        self.stitch_logits = stitch_logits

    def _step(self, done: int, total: int, stage: str | None = None) -> None:
        """Report a step of ``stage`` (default: windows or slices, counted over the groups) and stop if
        cancelled."""
        self._check_cancel()
        if stage is None:
            stage, done, total = self.stage, self.group * total + done, len(self.group_sizes) * total
        if self.progress is not None:
            self.progress(stage, done, total)

    def _backward_step(self, done: int, total: int) -> None:
        before = self.cam_passes * sum(self.group_sizes[: self.group])
        after = self.cam_passes * sum(self.group_sizes[self.group + 1 :])
        self._step(before + self.cam_passes_done * total + done, before + self.cam_passes * total + after, "backward")

    def _explain(self, x: torch.Tensor, regions: torch.Tensor | Callable | None) -> CAMMaps:
        """CAMs of a batch ``(B, Cin, *S)`` on the runner's device: maps ``(n, B, *S)``, logits ``(B, C, *S)``."""
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.amp):
            result = seg_grad_cam(
                self.model.network,
                x.to(self.device),
                self.layers,
                self.classes,
                self.method,
                regions.to(self.device) if isinstance(regions, torch.Tensor) else regions,
                relu=True,
                upsample=True,
                on_backward=self._backward_step,
                input_gradients=self.input_gradients,
            )
        self.cam_passes_done += 1
        return result

    def _cams(self, x: torch.Tensor, regions: torch.Tensor | Callable | None):
        """As :meth:`_explain`, as float32 on the CPU: logits ``(B, C, *S)``, maps layer -> ``(n, B, *S)``."""
        result = self._explain(x, regions)
        return result.logits.float().cpu(), {k: v.float().cpu() for k, v in result.items()}

    def run_3d(self, image: torch.Tensor, regions: torch.Tensor | Callable | None):
        """image ``(Cin, Z, Y, X)`` -> logits ``(C, Z, Y, X)``, maps layer -> ``(n, Z, Y, X)``.

        ``regions`` ``(n, Z, Y, X)`` bool (sliding windows: always given), or (whole-volume models)
        None (the predicted masks) or a function of the pass's logits ``(C, Z, Y, X)`` giving the
        targets' classes and regions (see :func:`seg_grad_cam`)."""
        spec = self.model.spec
        if spec.roi_size is not None:
            assert isinstance(regions, (torch.Tensor, PredictedRegions)), "sliding windows take given regions"
            return self._sliding_window(image, regions)
        shape = image.shape[1:]
        target = padded_shape(shape, spec.divisible_by, spec.min_size)
        crop = (slice(None),) + tuple(slice(0, n) for n in shape)
        image = pad_end(image, target)
        targets = regions
        if callable(regions):
            found = regions

            def targets(logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
                classes, masks = found(logits[0].float().cpu()[crop])
                self.classes = classes
                return classes, pad_end(masks, target)[None].to(logits.device)

        elif regions is not None:
            targets = pad_end(regions, target)[None]
        self._step(0, 1)
        logits, maps = self._cams(image[None], targets)
        self._step(1, 1)
        return logits[0][crop], {k: v[:, 0][crop] for k, v in maps.items()}

    def _stitch(self, image: torch.Tensor, roi: tuple[int, ...], predictor: Callable, with_coord: bool = False):
        """MONAI's ``sliding_window_inference`` of ``predictor`` over ``image`` ``(Cin, *S)``, stitched on the CPU."""
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(
            image[None].cpu(),
            roi,
            1,
            predictor,
            overlap=OVERLAP,
            mode="gaussian",
            sigma_scale=SIGMA_SCALE,
            sw_device=self.device,
            device="cpu",
            with_coord=with_coord,
        )

    def _segment(self, window: torch.Tensor, step: Callable[[], None]) -> torch.Tensor:
        """Logits ``(1, C, *roi)`` of a window ``(1, Cin, *roi)`` (the segmentation pass, no gradients)."""
        step()
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model.network(window)
        if not isinstance(logits, torch.Tensor):
            raise SegGradCAMError(
                f"The network returned {type(logits).__name__}; Seg-Grad-CAM needs one logits tensor."
            )
        return logits.float()

    def _sliding_window(self, image: torch.Tensor, regions: torch.Tensor | PredictedRegions):
        """MONAI sliding windows over image ``(Cin, Z, Y, X)``: logits ``(C, Z, Y, X)`` (None unless
        :attr:`stitch_logits`), maps layer -> ``(n, Z, Y, X)``.

        Every window is explained with the ``regions`` (the stitched segmentation's masks, see
        :meth:`segment`, or ``(n, Z, Y, X)`` boolean: the user's or the findings') cut to it; MONAI stitches maps
        and logits with the same Gaussian weights, on the CPU (only windows go to the device).
        """
        roi = tuple(int(r) for r in self.model.spec.roi_size)
        shape = tuple(image.shape[1:])
        total = monai_windows(shape, roi)
        self.cam_passes = total
        steps = itertools.count()

        def step() -> None:
            self._step(next(steps), total)

        # MONAI's window coordinates are in its padded volume: pad the regions the same way.
        pads = monai_padding(shape, roi)
        if isinstance(regions, PredictedRegions):
            cut = regions.padded(pads).cut
        else:
            padded = F.pad(regions.bool(), pads) if any(pads) else regions

            def cut(where: tuple[slice, ...]) -> torch.Tensor:
                return padded[(slice(None), *where)]

        def explain(window: torch.Tensor, coords: list[list[slice]]) -> dict[str, torch.Tensor]:
            """Window ``(1, Cin, *roi)`` at ``coords`` ``[[batch, channels, *spatial]]`` -> layer ->
            ``(1, n, *roi)`` and ``_LOGITS`` -> ``(1, C, *roi)``."""
            step()
            (where,) = coords  # sw_batch_size 1: one window
            result = self._explain(window, cut(tuple(where[2:]))[None])
            out = {name: m.transpose(0, 1).float() for name, m in result.items()}
            if self.stitch_logits:
                out[_LOGITS] = result.logits.float()
            return out

        stitched = self._stitch(image, roi, explain, with_coord=True)
        self._step(total, total)
        logits = stitched.pop(_LOGITS)[0] if self.stitch_logits else None
        return logits, {name: m[0] for name, m in stitched.items()}

    def _slices(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], list[int]]:
        """The slices along axis 0 of ``(Cin, Z, Y, X)`` padded for the model ``(Z, Cin, Y', X')``, the
        plane ``(Y, X)`` to crop back to and the first slice of each batch."""
        spec = self.model.spec
        slices = image.permute(1, 0, 2, 3)  # (Z, Cin, Y, X)
        plane = (int(slices.shape[2]), int(slices.shape[3]))
        slices = pad_end(slices, padded_shape(plane, spec.divisible_by, spec.min_size))
        return slices, plane, list(range(0, slices.shape[0], self.batch_size))

    def segment(self, image: torch.Tensor, stage: str | None = "segment") -> torch.Tensor:
        """Logits ``(C, Z, Y, X)`` of ``image`` ``(Cin, Z, Y, X)`` without gradients, its steps reported
        as ``stage`` (None: not reported, only the cancel checked): the segmentation that findings,
        probabilities and reliance start from."""
        spec = self.model.spec

        def step(done: int, total: int) -> None:
            self._check_cancel() if stage is None else self._step(done, total, stage)

        with torch.no_grad():
            if spec.spatial_dims == 2:
                slices, plane, starts = self._slices(image)
                parts = []
                for i, start in enumerate(starts):
                    step(i, len(starts))
                    window = slices[start : start + self.batch_size].to(self.device)
                    parts.append(self._segment(window, lambda: None).cpu())
                step(len(starts), len(starts))
                return torch.cat(parts)[..., : plane[0], : plane[1]].permute(1, 0, 2, 3)
            if spec.roi_size is not None:
                roi = tuple(int(r) for r in spec.roi_size)
                total, steps = monai_windows(tuple(image.shape[1:]), roi), itertools.count()
                logits = self._stitch(image, roi, lambda w: self._segment(w, lambda: step(next(steps), total)))
                step(total, total)
                return logits[0]
            shape = image.shape[1:]
            padded = pad_end(image, padded_shape(shape, spec.divisible_by, spec.min_size))
            logits = self._segment(padded[None].to(self.device), lambda: step(0, 1))
            step(1, 1)
            return logits[0].cpu()[(slice(None),) + tuple(slice(0, n) for n in shape)]

    def run_2d(self, image: torch.Tensor, regions: torch.Tensor | None):
        """Slice-wise along axis 0 of ``(Cin, Z, Y, X)``: same outputs as :meth:`run_3d`."""
        slices, plane, starts = self._slices(image)
        reg = None if regions is None else pad_end(regions.permute(1, 0, 2, 3), tuple(slices.shape[2:]))
        logit_parts: list[torch.Tensor] = []
        map_parts: dict[str, list[torch.Tensor]] = {}
        self.cam_passes = len(starts)
        for i, start in enumerate(starts):
            self._step(i, len(starts))
            batch = slices[start : start + self.batch_size]
            logits, maps = self._cams(batch, None if reg is None else reg[start : start + self.batch_size])
            logit_parts.append(logits[..., : plane[0], : plane[1]])
            for k, v in maps.items():
                map_parts.setdefault(k, []).append(v[..., : plane[0], : plane[1]])
        self._step(len(starts), len(starts))
        logits = torch.cat(logit_parts).permute(1, 0, 2, 3)
        return logits, {k: torch.cat(v, dim=1) for k, v in map_parts.items()}
