"""Demo data recipe: real MRI heads with synthetic tumour-like lesions, deterministic from a seed.

Sources (all install offline, nothing is downloaded):

- Colin27 T1 with skull (Debian ``mricron-data``), brain mask from ``ch2bet.nii.gz``;
- the KmeansTest T1 head (Debian ``insighttoolkit5-examples``), mask from its skull strip;
- the MNI152 2009a T1 template bundled with ``nilearn`` (skull-stripped), its brain mask.

A *case* is one head resampled to 2 mm isotropic, axial, array order ``(Z, Y, X)`` =
(inferior->superior, anterior->posterior, right->left), i.e. an identity ITK (LPS)
direction, cropped in-plane to 96 x 96 around the brain. One or two lesions are
implanted in 3D: a randomly rotated, noise-perturbed ellipsoid with a necrotic core,
an enhancing rim and irregular surrounding edema confined to the brain, with mass
effect (tissue pushed outward) and partial-volume edges. Two channels:

- ``t1c``: the real T1 with lesion intensities of a contrast-enhanced T1 (hypointense
  edema, bright rim, dark core);
- ``flair``: a FLAIR-like contrast synthesised from the real T1 (dark CSF, grey
  matter brighter than white matter) with bright edema.

Labels: 0 background, 1 edema, 2 enhancing rim, 3 necrotic core.

Training slices are axial slices of cases, each channel normalised over its whole case
volume (percentiles 0.5/99.5 -> 0..1, the model's declared preprocessing), then
augmented in 2D: left-right flip, elastic deformation, bias field, gamma contrast and
Rician noise. Everything is drawn from ``numpy.random.default_rng`` streams spawned
from one seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import ndimage

from ..errors import SegGradCAMError
from ..preprocessing import normalize_intensity

LABELS = ("background", "edema", "enhancing_rim", "necrotic_core")
# The classes' DICOM codes (see SegGradCAMLib.models.terminology): category Morphologically
# Abnormal Structure (SCT 49755003, CID 7150), types of CID 7168 "Brain Lesion Segmentation Type
# With Necrosis": Edema (SCT 79654002), Enhancing Lesion (NCIt C113842), Necrosis (SCT 6574001).
TERMINOLOGY = {
    "edema": ["SCT:49755003", "SCT:79654002"],
    "enhancing_rim": ["SCT:49755003", "NCIt:C113842"],
    "necrotic_core": ["SCT:49755003", "SCT:6574001"],
}
CHANNELS = ("t1c", "flair")
SPACING_MM = 2.0
PLANE = 96
NORMALIZATION = "percentile"
PERCENTILES = (0.5, 99.5)
TRAIN_SEED = 0
EVAL_SEED = 1000

_MRICRON = Path("/usr/share/mricron/templates")
_ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
SUBJECTS = ("colin27", "kmeans", "mni152")
Seed = int | tuple[int, ...]  # entropy of a numpy SeedSequence


@dataclass(frozen=True)
class Subject:
    """A real head at 2 mm, cropped: ``t1`` ``(Z, Y, X)`` scaled so white matter ~ 1; ``brain`` mask."""

    name: str
    t1: np.ndarray
    brain: np.ndarray


@dataclass
class Case:
    """One head with lesions: ``image`` ``(2, Z, Y, X)`` float32 (channels t1c, flair,
    not normalised), ``labels`` ``(Z, Y, X)`` uint8, spacing :data:`SPACING_MM` isotropic."""

    subject: str
    seed: int
    image: np.ndarray
    labels: np.ndarray


@dataclass
class SliceSet:
    """Axial training/evaluation slices: ``images`` ``(N, 2, 96, 96)`` float32 (normalised),
    ``labels`` ``(N, 96, 96)`` uint8, ``case`` ``(N,)`` index of the case each slice comes from."""

    images: np.ndarray
    labels: np.ndarray
    case: np.ndarray
    seed: Seed

    def __len__(self) -> int:
        return len(self.labels)

    def sha256(self) -> str:
        """Checksum of images and labels: same seed, same data."""
        digest = hashlib.sha256(self.images.tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


def _to_case_grid(image, mask: bool = False) -> np.ndarray:
    """A nibabel image -> 2 mm isotropic array ``(Z, Y, X)`` in (S, P, L) axis order.

    ``mask``: the image is a mask (any value > 0); the result is boolean.
    """
    import nibabel as nib

    canonical = nib.as_closest_canonical(image)  # array axes R, A, S
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    if mask:
        data = (data > 0).astype(np.float32)
    zooms = np.asarray(canonical.header.get_zooms()[:3], dtype=float)
    data = ndimage.zoom(data, zooms / SPACING_MM, order=1)
    data = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    return data > 0.5 if mask else data


def _source_images(name: str):
    """The (T1, brain mask) nibabel images of a subject."""
    import nibabel as nib

    if name == "colin27":
        paths = (_MRICRON / "ch2.nii.gz", _MRICRON / "ch2bet.nii.gz")
    elif name == "kmeans":
        paths = (_ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz", _ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz")
    elif name == "mni152":
        from nilearn import datasets

        return datasets.load_mni152_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)
    else:
        raise SegGradCAMError(f"Unknown subject {name!r}; choose one of {', '.join(SUBJECTS)}.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SegGradCAMError(
            f"{', '.join(missing)} not found: install the Debian packages mricron-data and insighttoolkit5-examples."
        )
    return tuple(nib.load(str(p)) for p in paths)


def _crop_plane(array: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """Crop/zero-pad ``(Z, Y, X)`` in-plane to ``PLANE x PLANE`` centred on ``centre``."""
    out = np.zeros((array.shape[0], PLANE, PLANE), dtype=array.dtype)
    src, dst = [], []
    for n, c in zip(array.shape[1:], centre):
        start = c - PLANE // 2
        lo, hi = max(start, 0), min(start + PLANE, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


@functools.lru_cache(maxsize=None)
def load_subject(name: str) -> Subject:
    """A source head on the case grid (cached): brain z-range, 96 x 96 around the brain."""
    t1_image, mask_image = _source_images(name)
    t1 = _to_case_grid(t1_image)
    brain = ndimage.binary_fill_holes(_to_case_grid(mask_image, mask=True))
    zs, ys, xs = np.nonzero(brain)
    z = slice(max(zs.min() - 1, 0), zs.max() + 2)
    centre = (int(round((ys.min() + ys.max()) / 2)), int(round((xs.min() + xs.max()) / 2)))
    t1 = _crop_plane(t1[z], centre)
    brain = _crop_plane(brain[z], centre)
    t1 = np.clip(t1, 0, None) / np.percentile(t1[brain], 90)
    return Subject(name, t1.astype(np.float32), brain)


def flair_like(t1: np.ndarray) -> np.ndarray:
    """FLAIR-like contrast from a T1 scaled to white matter ~ 1: dark CSF, GM brighter than WM."""
    knots = (0.0, 0.15, 0.4, 0.7, 1.0, 1.4, 3.0)
    values = (0.0, 0.08, 0.3, 0.95, 0.7, 0.85, 1.0)
    return np.interp(t1, knots, values).astype(np.float32)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return noise / max(float(noise.std()), 1e-8)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _implant_lesion(
    t1c: np.ndarray, flair: np.ndarray, brain: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> None:
    """Implant one lesion in place into ``t1c``, ``flair``, ``brain`` and ``labels`` ``(Z, Y, X)``."""
    radius = rng.uniform(8.0, 18.0) / SPACING_MM  # tumour (rim outer) radius, voxels
    edema_extent = rng.uniform(1.5, 2.3)  # edema outer radius / tumour radius
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere(depth >= 0.8 * radius + 2)
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.8)
    centre = candidates[rng.integers(len(candidates))]
    half = int(np.ceil(3.0 * radius)) + 1
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij"))
    shape = grid.shape[1:]
    r = np.sqrt((grid.astype(np.float32) ** 2).sum(0))

    # Mass effect: sample the tissue from closer to the centre, pushing it outward.
    push = rng.uniform(0.15, 0.35) * np.exp(-((r / (1.2 * edema_extent * radius)) ** 2))
    source = centre[:, None, None, None] + grid * (1 - push)
    for volume in (t1c, flair):
        volume[box] = ndimage.map_coordinates(volume, source, order=1, mode="nearest")
    brain[box] = ndimage.map_coordinates(brain.astype(np.float32), source, order=1, mode="nearest") > 0.5
    inside = brain[box]

    axes = radius * rng.uniform(0.75, 1.3, size=3)
    rotated = np.tensordot(_random_rotation(rng), grid.astype(np.float32), axes=1)
    distance = np.sqrt(((rotated / axes[:, None, None, None]) ** 2).sum(0))
    shape_field = distance + 0.15 * _smooth_noise(shape, radius / 2.5, rng)
    edema_field = distance + 0.35 * _smooth_noise(shape, radius / 2.0, rng)
    tumour = (shape_field < 1.0) & inside
    core = (shape_field < rng.uniform(0.4, 0.7)) & inside
    edema = (edema_field < edema_extent) & inside & ~tumour
    rim = tumour & ~core

    texture = 1 + 0.08 * _smooth_noise(shape, 1.0, rng)
    weights = [ndimage.gaussian_filter(m.astype(np.float32), 0.6) * inside for m in (edema, rim, core)]
    t1c_box, flair_box = t1c[box], flair[box]
    kept = np.clip(1 - sum(weights), 0, 1)
    values_t1c = (t1c_box * rng.uniform(0.7, 0.85), rng.uniform(1.3, 1.7) * texture, rng.uniform(0.25, 0.45) * texture)
    values_flair = (
        rng.uniform(1.15, 1.45) * texture,
        rng.uniform(0.95, 1.2) * texture,
        rng.uniform(0.6, 0.95) * texture,
    )
    t1c[box] = kept * t1c_box + sum(w * v for w, v in zip(weights, values_t1c))
    flair[box] = kept * flair_box + sum(w * v for w, v in zip(weights, values_flair))
    new = np.select([core, rim, edema], [3, 2, 1], 0).astype(np.uint8)
    labels[box] = np.maximum(labels[box], new)


def make_case(seed: int, subject: str) -> Case:
    """A head (``subject`` from :data:`SUBJECTS`) with one or two lesions, from ``seed``."""
    rng = np.random.default_rng(seed)
    source = load_subject(subject)
    t1c, brain = source.t1.copy(), source.brain.copy()
    flair = flair_like(t1c)
    labels = np.zeros(t1c.shape, dtype=np.uint8)
    for _ in range(1 if rng.random() < 0.7 else 2):
        _implant_lesion(t1c, flair, brain, labels, rng)
    image = np.stack([np.clip(t1c, 0, None), np.clip(flair, 0, None)]).astype(np.float32)
    return Case(subject, seed, image, labels)


def _elastic(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, magnitude: float = 2.5
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (pixels) of ``image`` ``(C, H, W)`` and ``labels`` ``(H, W)``."""
    size = labels.shape
    coarse = rng.standard_normal((2, 5, 5)) * magnitude
    shift = np.stack([ndimage.zoom(c, np.divide(size, c.shape), order=3) for c in coarse])
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij")) + shift
    warped = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in image])
    return warped, ndimage.map_coordinates(labels, coords, order=0, mode="nearest")


def augment_slice(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, elastic deformation, bias field, gamma and Rician noise of a normalised slice.

    ``image`` ``(C, H, W)`` in 0..1, ``labels`` ``(H, W)``; returns new arrays.
    """
    if rng.random() < 0.5:
        image, labels = image[..., ::-1], labels[..., ::-1]
    image, labels = _elastic(np.ascontiguousarray(image), np.ascontiguousarray(labels), rng)
    out = np.empty_like(image)
    for c, channel in enumerate(image):
        coarse = rng.standard_normal((3, 3)) * 0.15
        bias = np.exp(ndimage.zoom(coarse, np.divide(channel.shape, coarse.shape), order=3))
        channel = np.clip(channel * bias, 0, None) ** rng.uniform(0.7, 1.4)
        sigma = rng.uniform(0.0, 0.04)
        noise = rng.standard_normal((2, *channel.shape)) * sigma
        out[c] = np.sqrt((channel + noise[0]) ** 2 + noise[1] ** 2)
    return out.astype(np.float32), labels.astype(np.uint8)


def case_slices(
    case: Case, rng: np.random.Generator, lesion_slices: int, empty_slices: int, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices of a case: up to ``lesion_slices`` through lesions and ``empty_slices``
    through lesion-free brain. Returns images ``(n, 2, H, W)`` (normalised) and labels ``(n, H, W)``."""
    image = normalize_intensity(case.image, NORMALIZATION, PERCENTILES)
    lesion_area = (case.labels > 0).sum(axis=(1, 2))
    brain_area = (case.image[0] > 0.2).sum(axis=(1, 2))
    with_lesion = np.flatnonzero(lesion_area >= 20)
    without = np.flatnonzero((lesion_area == 0) & (brain_area > 0.25 * PLANE * PLANE))
    chosen = np.concatenate(
        [
            rng.choice(with_lesion, min(lesion_slices, len(with_lesion)), replace=False),
            rng.choice(without, min(empty_slices, len(without)), replace=False),
        ]
    ).astype(int)
    images, labels = [], []
    for z in chosen:
        x, y = image[:, z], case.labels[z]
        if augment:
            x, y = augment_slice(x, y, rng)
        images.append(x)
        labels.append(y)
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.uint8)


def iter_cases(seed: Seed) -> Iterator[tuple[Case, np.random.Generator]]:
    """Endless cases from ``seed`` (subjects in turn), each with its own slice generator."""
    root = np.random.SeedSequence(seed)
    index = 0
    while True:
        case_seq, slice_seq = root.spawn(2)
        case_seed = int(case_seq.generate_state(1)[0])
        yield make_case(case_seed, SUBJECTS[index % len(SUBJECTS)]), np.random.default_rng(slice_seq)
        index += 1


def make_slice_set(
    seed: Seed, n_slices: int, lesion_slices: int = 8, empty_slices: int = 2, augment: bool = True
) -> SliceSet:
    """Exactly ``n_slices`` slices from as many cases of ``seed`` as needed."""
    images, labels, cases = [], [], []
    count = 0
    for index, (case, rng) in enumerate(iter_cases(seed)):
        x, y = case_slices(case, rng, lesion_slices, empty_slices, augment)
        images.append(x)
        labels.append(y)
        cases.append(np.full(len(y), index, dtype=np.int32))
        count += len(y)
        if count >= n_slices:
            break
    return SliceSet(
        np.concatenate(images)[:n_slices], np.concatenate(labels)[:n_slices], np.concatenate(cases)[:n_slices], seed
    )


def evaluation_set(n_slices: int = 100, seed: int = EVAL_SEED) -> SliceSet:
    """The held-out evaluation set: ``n_slices`` slices from cases of a seed never used in training,
    4 lesion slices + 1 lesion-free slice per case, not augmented."""
    return make_slice_set(seed, n_slices, lesion_slices=4, empty_slices=1, augment=False)


def write_case(case: Case, folder: Path) -> dict[str, Path]:
    """Write ``t1c.nrrd``, ``flair.nrrd`` and ``labels.nrrd`` (2 mm, identity direction)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    arrays = {**dict(zip(CHANNELS, case.image)), "labels": case.labels}
    for name, array in arrays.items():
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing((SPACING_MM,) * 3)
        paths[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(paths[name]), useCompression=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m SegGradCAMLib.demo.data OUT [--index N] [--seed S]``: write one case as NRRD files."""
    import argparse
    import itertools

    parser = argparse.ArgumentParser(
        prog="python -m SegGradCAMLib.demo.data", description="Write one demo case (t1c, flair, labels) as NRRD files."
    )
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--index", type=int, default=0, help="case number in the seed's stream (default 0)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help=f"case stream seed (default {EVAL_SEED}, held out)")
    args = parser.parse_args(argv)
    case, _ = next(itertools.islice(iter_cases(args.seed), args.index, None))
    for name, path in write_case(case, args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
