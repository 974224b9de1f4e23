"""Study: which perturbation gives informative Deletion curves for HD-BET in 3D?

On each real head, HD-BET's brain map (finest decoder stage; HiResCAM and Grad-CAM) is scored
by Deletion (mean brain probability over the originally predicted brain while the most
relevant voxels are replaced, AUC over the removed fraction; lower = more faithful) under three
perturbations, each against 5 random orderings with fixed seeds:

- ``blur``: removed voxels take a 20 mm Gaussian blur of the head, voxel by voxel (as
  ``explain --faithfulness``);
- ``road3d``: ROAD's noisy linear imputation in 3D (26 neighbours), voxel by voxel;
- ``supervoxel-blur``: whole 12 mm cubes removed (the map averaged per cube ranks them; the
  random orderings rank cubes too), replaced by the blur;
- ``blur-10mm``: the blur, within 10 mm of the brain mask only, the fractions of that neighbourhood
  (the 3D protocol of ``explain --faithfulness`` and ``evaluate``).

A perturbation is informative on a head when a map's Deletion AUC differs from the random
orderings' mean by more than 2 SD. Steps of 20 % (ROAD: 10, 30, 50, 70, 90 %), one network call
per step, so ~90 calls of the 3D network per head; not in CI. ROAD in 3D costs most (an
imputation of millions of unknowns per step): it ran on Colin27 only.

    .venv/bin/python bench/hdbet_perturbations.py --heads Colin27 --out bench/results/hdbet_perturbations.json
    .venv/bin/python bench/hdbet_perturbations.py --heads KmeansTest,MNI152 --perturbations blur,supervoxel-blur \
        --out bench/results/hdbet_perturbations.json
    .venv/bin/python bench/hdbet_perturbations.py --perturbations blur-10mm \
        --out bench/results/hdbet_perturbations_10mm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

HEADS = {
    "Colin27": Path("/usr/share/mricron/templates/ch2.nii.gz"),
    "KmeansTest": Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz"),
    "MNI152": None,
}  # nilearn's template, written at run time
RANDOM_ORDERINGS = 5
DELETION_FRACTIONS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
CUBE_MM = 12.0
PERTURBATIONS = ("blur", "supervoxel-blur", "road3d", "blur-10mm")


def read_head(name: str, folder: Path):
    from SegGradCAMLib.volumes.files import read_volume

    path = HEADS[name]
    if path is None:
        from nilearn import datasets

        path = folder / "mni152.nii.gz"
        datasets.load_mni152_template(resolution=1).to_filename(path)
    return read_volume(str(path))


def cube_ranking(heat: torch.Tensor, side: int, seed: int | None) -> torch.Tensor:
    """A voxel ranking ``(*S)`` that removes whole cubes of ``side`` voxels: by the map's mean per
    cube, or (``seed``) in random cube order; voxels within a cube in raster order."""
    shape = heat.shape
    grid = [(n + side - 1) // side for n in shape]
    padded = torch.nn.functional.pad(
        heat, [0, grid[2] * side - shape[2], 0, grid[1] * side - shape[1], 0, grid[0] * side - shape[0]]
    )
    means = torch.nn.functional.avg_pool3d(padded[None, None], side)[0, 0]
    if seed is not None:
        means = torch.rand(means.shape, generator=torch.Generator().manual_seed(seed))
    order = torch.argsort(means.flatten(), descending=True, stable=True)
    cube_rank = torch.empty_like(order)
    cube_rank[order] = torch.arange(order.numel())
    ranks = cube_rank.reshape(grid).repeat_interleave(side, 0).repeat_interleave(side, 1).repeat_interleave(side, 2)
    ranks = ranks[: shape[0], : shape[1], : shape[2]].double() * side**3
    within = torch.arange(heat.numel(), dtype=torch.float64).reshape(shape) / heat.numel()
    fine = ranks + within  # ties inside a cube broken in raster order
    result = torch.empty(heat.numel(), dtype=torch.long)
    result[torch.argsort(fine.flatten())] = torch.arange(heat.numel())
    return result.reshape(shape)


def deletion_auc(
    scorer, image: torch.Tensor, replacement: torch.Tensor, ranks: torch.Tensor, ends, voxels=None
) -> float:
    """Deletion AUC of ``ranks`` ``(*S)``, in fractions of ``voxels`` (None: all; else the region that
    ``ranks`` puts first)."""
    from SegGradCAMLib.evaluation.deletion_insertion import auc

    scores = [ends[0]]
    for fraction in DELETION_FRACTIONS[1:-1]:
        removed = ranks < int(round(fraction * (ranks.numel() if voxels is None else voxels)))
        scores.append(float(scorer(torch.where(removed, replacement, image)[None])[0][0]))
    return auc([*scores, ends[1]], DELETION_FRACTIONS)


def study_head(name: str, folder: Path, perturbations: list[str]) -> dict:
    from SegGradCAMLib.cam import label_map, seg_grad_cam
    from SegGradCAMLib.pipelines import cases_from_volume
    from SegGradCAMLib.evaluation.deletion_insertion import (
        ClassScorer,
        make_baseline,
        neighbourhood,
        rank_voxels,
        replaced_within,
    )
    from SegGradCAMLib.evaluation.road import road
    from SegGradCAMLib.evaluation.sanity import random_heatmap
    from SegGradCAMLib.evaluation.scoring_network import scoring_network
    from SegGradCAMLib.models import load_model
    from SegGradCAMLib.options import DEFAULT_NEIGHBOURHOOD_MM

    start = time.perf_counter()
    volume = read_head(name, folder)
    model = load_model("hdbet")
    network = model.network.eval()
    case = cases_from_volume(model, volume.array[None], tuple(volume.spacing)[::-1], volume.direction, name, [1])[0]
    image = case.image.float()
    layer = model.chosen_layers("auto")[0]
    cams = {
        m: seg_grad_cam(network, image[None], [layer], [1], m, upsample=True)[layer][0, 0].float()
        for m in ("hirescam", "gradcam")
    }
    with torch.no_grad():
        mask = label_map(network(image[None]))[0] == 1
    scorer = ClassScorer(scoring_network(network, "cpu"), 1, mask, model.spec.output_activation, "cpu", 1)
    blurred = make_baseline(image, case.spacing, "blur", 20.0)
    ends = [float(scorer(x[None])[0][0]) for x in (image, blurred)]
    side = max(1, int(round(CUBE_MM / float(np.mean(case.spacing)))))
    result = {
        "grid": list(image.shape[1:]),
        "spacing_mm": list(case.spacing),
        "brain_voxels": int(mask.sum()),
        "layer": layer,
        "probability_unperturbed": ends[0],
        "probability_all_blurred": ends[1],
        "cube_voxels": side,
        "perturbations": {},
    }
    randoms = [random_heatmap(mask.shape, seed) for seed in range(RANDOM_ORDERINGS)]
    for perturbation in perturbations:
        t0 = time.perf_counter()
        if perturbation == "road3d":

            def score(heat, seed):
                return road(scorer, image, heat, seed=seed, orders=("morf",))["morf"].summary()["auc"]
        elif perturbation == "blur":

            def score(heat, seed):
                return deletion_auc(scorer, image, blurred, rank_voxels(heat, seed), ends)
        elif perturbation == "blur-10mm":
            region = neighbourhood(mask, case.spacing, DEFAULT_NEIGHBOURHOOD_MM)
            end = replaced_within(image, blurred, region)
            region_ends = [ends[0], float(scorer(end[None])[0][0])]
            result["neighbourhood_voxels"] = int(region.sum())
            result["probability_neighbourhood_blurred"] = region_ends[1]

            def score(heat, seed, end=end, region=region, region_ends=region_ends):
                return deletion_auc(scorer, image, end, rank_voxels(heat, seed, region), region_ends, int(region.sum()))
        else:

            def score(heat, seed):
                return deletion_auc(scorer, image, blurred, cube_ranking(heat, side, None), ends)

        random_aucs = [
            score(r, seed)
            if perturbation != "supervoxel-blur"
            else deletion_auc(scorer, image, blurred, cube_ranking(r, side, seed), ends)
            for seed, r in enumerate(randoms)
        ]
        mean, sd = float(np.mean(random_aucs)), float(np.std(random_aucs, ddof=1))
        maps = {m: score(heat, 0) for m, heat in cams.items()}
        result["perturbations"][perturbation] = {
            "random": {"mean": mean, "sd": sd, "aucs": random_aucs},
            "maps": {
                m: {
                    "deletion_auc": a,
                    "z": (a - mean) / sd if sd > 0 else None,
                    "informative": bool(abs(a - mean) > 2 * sd),
                }
                for m, a in maps.items()
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, perturbation, json.dumps(result["perturbations"][perturbation]), flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--perturbations", default=",".join(PERTURBATIONS))
    parser.add_argument("--out", type=Path, help="JSON results; heads already in it are kept")
    args = parser.parse_args()
    earlier = json.loads(args.out.read_text())["heads"] if args.out and args.out.exists() else {}
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "heads": earlier,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.heads.split(","):
            report["heads"][name] = study_head(name, Path(tmp), args.perturbations.split(","))
            if args.out:  # after each head: a stopped run keeps what it measured
                args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
