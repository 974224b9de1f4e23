"""Findings: every connected component of every explained class, each explained on its own.

A finding is a 26-connected component of a class's mask on the input grid (the segmentation the
user sees) of at least ``min_mm3``. Its Seg-Grad-CAM target is the class logit summed over the
component, explained in the same pass as the classes. Findings are numbered 1..K by decreasing
volume; beyond ``max_findings`` the largest are kept. A point (``--point``) picks the finding that
contains it, or the nearest within a radius.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import SegGradCAMError

NEIGHBOURHOOD_MM = 7.0  # the finding's neighbourhood (peak saliency context reported around lesions)


@dataclass(frozen=True)
class FindingRequest:
    """What ``--findings``/``--point`` ask: the smallest finding (mm³), how many to explain, and a
    point ``point_zyx`` (continuous voxel index, array order) with its search radius (mm)."""

    min_mm3: float = 10.0
    max_findings: int = 20
    point_zyx: tuple[float, float, float] | None = None
    radius_mm: float = 10.0


@dataclass
class Finding:
    """One component: ``id`` (1..K), ``class_index``, ``box`` (slices ``(Z, Y, X)`` of its bounding
    box), ``mask`` ``box``-shaped bool, and its statistics (``stats``: probability, entropy, ...)."""

    id: int
    class_index: int
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, shape: Sequence[int]) -> np.ndarray:
        """The finding's mask on the whole grid ``shape`` ``(Z, Y, X)`` bool."""
        full = np.zeros(tuple(shape), dtype=bool)
        full[self.box] = self.mask
        return full

    def centroid_zyx(self) -> np.ndarray:
        """The mean voxel index ``(z, y, x)`` of the finding."""
        offset = np.array([s.start for s in self.box], dtype=np.float64)
        return np.argwhere(self.mask).mean(axis=0) + offset

    def bounds_zyx(self) -> tuple[np.ndarray, np.ndarray]:
        """The first and last voxel index ``(z, y, x)`` of the bounding box (inclusive)."""
        return np.array([s.start for s in self.box]), np.array([s.stop - 1 for s in self.box])

    def boundary_zyx(self) -> np.ndarray:
        """The voxel indices ``(n, 3)`` ``(z, y, x)`` of the finding's voxels with a face neighbour
        outside it: where any coordinate in mm (a linear function of the index) is least and largest."""
        from scipy import ndimage

        edge = self.mask & ~ndimage.binary_erosion(self.mask)
        return np.argwhere(edge) + np.array([s.start for s in self.box])

    def distance_mm(self, point_zyx: Sequence[float], spacing_zyx: Sequence[float]) -> float:
        """The distance (mm) from ``point_zyx`` to the nearest voxel centre of the finding; 0 inside
        (the point's nearest voxel belongs to the finding)."""
        point = np.asarray(point_zyx, dtype=np.float64)
        inside = tuple(int(round(p)) - s.start for p, s in zip(point, self.box))
        if all(0 <= i < n for i, n in zip(inside, self.mask.shape)) and self.mask[inside]:
            return 0.0
        offset = np.array([s.start for s in self.box], dtype=np.float64)
        voxels = np.argwhere(self.mask) + offset
        return float(np.sqrt(((voxels - point) ** 2 * np.asarray(spacing_zyx) ** 2).sum(axis=1)).min())


@dataclass
class FindingSet:
    """The findings explained (``findings``), how many were found and left out, and the point's
    choice (``point``: finding id and distance) when a point was given."""

    request: FindingRequest
    findings: list[Finding]
    found: int
    left_out: int
    point: dict | None = None

    def regions(self, shape: Sequence[int]) -> np.ndarray:
        """Target regions ``(K, Z, Y, X)`` bool, one per finding, in order."""
        regions = np.zeros((len(self.findings), *shape), dtype=bool)
        for region, finding in zip(regions, self.findings):
            region[finding.box] = finding.mask
        return regions


def _components(mask: np.ndarray, class_index: int, min_voxels: float) -> list[Finding]:
    """The 26-connected components of ``mask`` ``(Z, Y, X)`` with at least ``min_voxels`` voxels."""
    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    found = []
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        if box is not None and sizes[label] >= min_voxels:
            found.append(Finding(0, class_index, box, components[box] == label))
    return found


def find_findings(
    labels: np.ndarray,
    classes: Sequence[int],
    spacing_zyx: Sequence[float],
    request: FindingRequest,
    names: Sequence[str],
    masks: np.ndarray | None = None,
) -> FindingSet:
    """The findings of ``classes`` in ``labels`` ``(Z, Y, X)`` (or each class's own mask ``masks``
    ``(len(classes), Z, Y, X)`` for overlapping regions), largest first, ``request.max_findings``
    kept; with a point, only the finding it picks (see :func:`pick_finding`). ``names``: the
    model's label names (for messages)."""
    voxel_mm3 = float(np.prod(spacing_zyx))
    found: list[Finding] = []
    for i, c in enumerate(classes):
        mask = labels == c if masks is None else masks[i]
        found += _components(mask, c, request.min_mm3 / voxel_mm3 - 1e-9)
    found.sort(key=lambda f: (-f.voxels, f.class_index, tuple(s.start for s in f.box)))
    for number, finding in enumerate(found, start=1):
        finding.id = number
    if request.point_zyx is not None:
        chosen, point = pick_finding(found, request, spacing_zyx, names)
        return FindingSet(request, [chosen], len(found), 0, point)
    kept = found[: request.max_findings]
    return FindingSet(request, kept, len(found), len(found) - len(kept))


def pick_finding(
    found: list[Finding], request: FindingRequest, spacing_zyx: Sequence[float], names: Sequence[str]
) -> tuple[Finding, dict]:
    """The finding containing ``request.point_zyx``, else the nearest within ``request.radius_mm``;
    refused in one line naming the nearest finding and its distance otherwise."""
    point = request.point_zyx
    assert point is not None
    if not found:
        raise SegGradCAMError(
            f"--point: the segmentation has no finding (no component of an explained class of at least "
            f"{request.min_mm3:g} mm³); nothing to explain there. Lower --min-finding-mm3 or pick other classes."
        )
    distances = [f.distance_mm(point, spacing_zyx) for f in found]
    best = int(np.argmin(distances))
    nearest, distance = found[best], distances[best]
    if distance > request.radius_mm:
        raise SegGradCAMError(
            f"--point: no finding within {request.radius_mm:g} mm of the point; the nearest is finding "
            f"{nearest.id} ({names[nearest.class_index]}) at {distance:.1f} mm. Click on or nearer a finding, "
            "or raise --point-radius-mm."
        )
    return nearest, {"finding": nearest.id, "distance_mm": round(distance, 3)}
