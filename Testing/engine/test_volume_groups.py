"""Targets explained in groups on the volume paths (a whole padded volume, MONAI's sliding windows,
slices): the maps made group by group equal the maps made at once, and one group's maps are alive
at a time (:mod:`SegGradCAMLib.memory_plan`)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from conftest import small_monai_network

from SegGradCAMLib import volume_runner
from SegGradCAMLib.inference import explain_volume
from SegGradCAMLib.models.spec import LoadedModel, ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["model.1.submodule.1.submodule.2", "model.1.submodule.2"]
PATHS = {  # path -> (spatial dims, sliding-window size, volume shape (Z, Y, X))
    "whole volume": (3, None, (24, 40, 36)),
    "sliding windows": (3, (32, 32, 32), (24, 40, 36)),
    "slices": (2, None, (5, 40, 36)),
}


def model_of(path: str, classes: int) -> LoadedModel:
    """A random-weight MONAI UNet of ``classes`` classes and a background (near-tied logits: most
    classes are predicted somewhere) on ``path``."""
    dims, roi, _ = PATHS[path]
    labels = ["background", *(f"class_{c:02d}" for c in range(1, classes + 1))]
    spec = ModelSpec(name="u", labels=labels, spatial_dims=dims, normalization="none", divisible_by=16, roi_size=roi)
    return LoadedModel(small_monai_network("UNet", dims, classes + 1), spec, LAYERS)


def volume_of(path: str, small: bool = False) -> np.ndarray:
    """A random volume ``(1, Z, Y, X)`` of ``path``'s shape (``small``: 16 x 24 x 20, one window)."""
    shape = (16, 24, 20) if small else PATHS[path][2]
    return np.random.default_rng(7).standard_normal((1, *shape)).astype(np.float32)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("classes", "size", "layers"), [(3, 1, LAYERS), (40, 16, LAYERS[1:])])  # 40: short
def test_maps_made_in_groups_equal_the_maps_made_at_once(path, classes, size, layers):
    model, volume = model_of(path, classes), volume_of(path, small=classes > 3)

    def explained(max_group_bytes: int, progress=None):
        return explain_volume(
            model,
            volume,
            (1.0, 1.0, 1.0),
            layers=layers,
            normalize=False,
            max_group_bytes=max_group_bytes,
            progress=progress,
        )

    held_steps: list[tuple[str, int, int]] = []
    steps: list[tuple[str, int, int]] = []
    held = explained(10**12, lambda *step: held_steps.append(step))
    grouped = explained(size * held.class_groups["bytes_per_target"], lambda *step: steps.append(step))
    groups = -(-classes // size)
    assert held.class_groups["groups"] == 1 and held.class_groups["size"] == classes
    why = grouped.class_groups["why"]
    assert grouped.class_groups == {**held.class_groups, "size": size, "groups": groups, "why": why}
    assert np.array_equal(held.labels, grouped.labels)
    assert sum(m.max() > 0 for m in held.heatmaps[layers[-1]]) >= 3  # real maps, not all empty
    for layer in layers:
        assert held.heatmaps[layer].shape == (classes, *volume.shape[1:])
        scale = np.abs(held.heatmaps[layer]).max()
        assert np.abs(held.heatmaps[layer] - grouped.heatmaps[layer]).max() <= 1e-6 * scale, layer
        assert np.allclose(held.raw_max[layer], grouped.raw_max[layer], rtol=1e-6, atol=0)
    for stage in ("windows", "slices", "backward"):  # counted on over the groups, ending at their total
        counted = [(done, total) for name, done, total in steps if name == stage]
        if counted:
            assert [d for d, _ in counted] == sorted(d for d, _ in counted), stage
            assert len({t for _, t in counted}) == 1 and counted[-1][0] == counted[-1][1], stage
    backward = [[total for name, _, total in s if name == "backward"][-1] for s in (held_steps, steps)]
    assert backward[0] == backward[1] and backward[0] % classes == 0  # each target's backward passes, once


@pytest.mark.parametrize("path", list(PATHS))
def test_one_group_of_maps_is_alive_at_a_time(monkeypatch, path):
    """The maps a group's pass returns are handed on and released before the next group's pass
    starts (weak references to the returned arrays, not bytes of the machine), the first group (the
    one whose pass may stitch the logits too) is the smallest, and each target's map is handed on
    once per layer."""
    model, volume = model_of(path, 5), volume_of(path)
    per_target = explain_volume(model, volume, (1.0, 1.0, 1.0), layers=LAYERS).class_groups["bytes_per_target"]
    run = "run_2d" if PATHS[path][0] == 2 else "run_3d"
    original, alive, most, passes = getattr(volume_runner.VolumeRunner, run), [], [], []

    def counted(self, *args, **kwargs):
        most.append(sum(ref() is not None for ref in alive))  # arrays of earlier groups still alive
        passes.append((len(self.classes), self.stitch_logits))
        logits, maps = original(self, *args, **kwargs)
        alive.extend(weakref.ref(m) for m in maps.values())
        return logits, maps

    monkeypatch.setattr(volume_runner.VolumeRunner, run, counted)
    handed = []
    result = explain_volume(
        model,
        volume,
        (1.0, 1.0, 1.0),
        layers=LAYERS,
        max_group_bytes=2 * per_target,
        on_heatmap=lambda heat, labels: handed.append((heat.layer, heat.position)),
    )
    assert result.class_groups["groups"] == 3 and len(most) == 3 and most == [0, 0, 0]
    assert [size for size, _ in passes] == [1, 2, 2] and not any(stitch for _, stitch in passes[1:])
    assert sorted(handed) == sorted((layer, t) for layer in LAYERS for t in range(5))
