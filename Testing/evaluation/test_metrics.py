"""Faithfulness metrics with known answers: Deletion/Insertion, ROAD, baselines, randomisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.evaluation.deletion_insertion import (
    ClassScorer,
    auc,
    deletion_insertion,
    make_baseline,
    neighbourhood,
    perturbed_counts,
    rank_voxels,
    replaced_within,
    step_fractions,
)
from SegGradCAMLib.evaluation.road import imputation_system, neighbour_weights, noisy_linear_imputation, road
from SegGradCAMLib.evaluation.sanity import (
    baseline_heatmap,
    cascade_steps,
    cascading_randomisation,
    gradient_saliency,
    map_similarity,
)
from conftest import small_monai_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RegionNet(nn.Module):
    """Two-class net whose class-1 logit, everywhere, is ``10 * (mean of x over R - 0.5)``.

    Its output depends on the input only through the known region ``R``.
    """

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        logit = (10 * (inside - 0.5)).view(-1, 1, 1).expand(-1, *x.shape[2:])
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.fixture()
def region_case():
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:16, 10:20] = True
    generator = torch.Generator().manual_seed(1)
    image = (region.float() + 0.05 * torch.randn(32, 32, generator=generator))[None]  # (1, 32, 32)
    net = RegionNet(region).eval()
    mask = net(image[None]).argmax(1)[0] == 1
    return net, image, region, mask


def test_constant_curve_auc_is_the_constant():
    fractions = step_fractions(0.01)
    assert len(fractions) == 101 and fractions[0] == 0 and fractions[-1] == 1
    assert auc(np.full(101, 0.37), fractions) == pytest.approx(0.37)
    assert auc(fractions, fractions) == pytest.approx(0.5)
    with pytest.raises(SegGradCAMError):
        step_fractions(0)


@pytest.mark.parametrize("step", [0.01, 0.05, 0.1, 0.2, 0.25, 0.5])
@pytest.mark.parametrize("smallest", [1e-5, 0.003, 0.03, 0.07, 0.3])
def test_a_target_smaller_than_a_step_gets_finer_steps_at_both_ends(step, smallest):
    """Symmetric (``1 - f`` is a step where ``f`` is) and increasing; even steps for a target no
    smaller than a step; else the first step halved until no larger than the target and its half, and
    as many steps as the even ones while three fractions (one for 50 % steps) stay in ``step .. 1 - step``."""
    even, fractions = step_fractions(step), step_fractions(step, smallest)
    assert fractions[0] == 0 and fractions[-1] == 1 and np.all(np.diff(fractions) > 0)
    assert np.allclose(fractions[::-1], 1 - fractions, atol=1e-12)
    if smallest >= even[1]:
        assert np.array_equal(fractions, even)
        return
    assert smallest / 2 < fractions[1] <= smallest and even[1] in fractions and 1 - even[1] in fractions
    halvings = int(np.log2(even[1] / fractions[1]).round())
    assert len(fractions) == max(len(even), 2 * halvings + 2 + min(3, len(even) - 2))  # 0.5: one between


class RecordingScorer(ClassScorer):
    """A :class:`ClassScorer` keeping every input it scores."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def __call__(self, inputs: torch.Tensor):
        self.seen.append(inputs.clone())
        return super().__call__(inputs)


def test_a_3d_target_is_perturbed_within_its_neighbourhood_in_steps_of_it():
    """The 3D protocol on a 343-voxel class (a necrotic core's size) in a 32^3 volume at 2 mm: the
    neighbourhood is the voxels within 10 mm of the class (an even count); every input scored equals
    the image outside it; Deletion step k replaces the k top-ranked of its voxels (a 5 % step fewer
    voxels than the class holds, where 5 % of the volume is more than 4 times the class)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 32, 32, 32, generator=generator)
    mask = torch.zeros(32, 32, 32, dtype=torch.bool)
    mask[12:19, 12:19, 12:19] = True
    region = neighbourhood(mask, (2.0, 2.0, 2.0), 10.0)
    assert region is not None and region.sum() % 2 == 0
    distance = ndimage.distance_transform_edt(~mask.numpy(), sampling=2.0)
    within = torch.from_numpy(distance <= 10.0)
    assert not (region & ~within).any() and int(within.sum()) - int(region.sum()) in (0, 1)
    assert neighbourhood(mask[16], (2.0, 2.0), 10.0) is None and neighbourhood(mask, (2.0,) * 3, 0.0) is None
    network = nn.Conv3d(1, 2, 1).eval()
    scorer = RecordingScorer(network, 1, mask, batch_size=64)
    end = replaced_within(image, torch.full_like(image, -5.0), region)
    heat = torch.rand(32, 32, 32, generator=generator)
    with torch.no_grad():
        deletion_insertion(scorer, image, end, heat, 0.05, region=region)
    inputs = torch.cat(scorer.seen)[:, 0]  # the two ends, 19 Deletion steps, 19 Insertion steps
    assert inputs.shape[0] == 2 + 2 * 19
    assert torch.equal(inputs[:, ~region], image[0][~region].expand(inputs.shape[0], -1))
    replaced = (inputs == -5.0).flatten(1).sum(1)
    counts = perturbed_counts(step_fractions(0.05), int(region.sum()))
    assert replaced.tolist() == [0, int(region.sum()), *counts, *(int(region.sum()) - counts)]
    ranks = rank_voxels(heat, 0, region)
    first_step = inputs[2] == -5.0
    assert torch.equal(first_step, ranks < counts[0]) and first_step.sum() < mask.sum() < 0.05 * mask.numel() / 4


def test_a_small_3d_target_is_not_removed_in_one_step():
    """A 27-voxel target (2 % of its 10 mm neighbourhood at 2 mm) at 10 % steps: its mask ranked first, the
    first Deletion step replaces fewer voxels than it holds, the first Insertion step restores fewer,
    and the curves still take 9 inner steps each."""
    image = torch.rand(1, 24, 24, 24, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(24, 24, 24, dtype=torch.bool)
    mask[10:13, 10:13, 10:13] = True
    region = neighbourhood(mask, (2.0, 2.0, 2.0), 10.0)
    assert region is not None and 0.1 * int(region.sum()) > int(mask.sum())
    scorer = RecordingScorer(nn.Conv3d(1, 2, 1).eval(), 1, mask, batch_size=64)
    end = replaced_within(image, torch.full_like(image, -5.0), region)
    with torch.no_grad():
        curves = deletion_insertion(scorer, image, end, mask.float(), 0.1, region=region)
    inputs = torch.cat(scorer.seen)[:, 0]  # the two ends, 9 Deletion steps, 9 Insertion steps
    assert inputs.shape[0] == 2 + 2 * 9 and len(curves["deletion"].fractions) == 11
    first_deleted, first_restored = inputs[2] == -5.0, inputs[2 + 9] != -5.0
    assert 0 < int(first_deleted.sum()) < int(mask.sum()) and (first_deleted <= mask).all()
    assert 0 < int((first_restored & region).sum()) < int(mask.sum())


def test_ties_are_broken_at_random_but_reproducibly():
    heatmap = torch.zeros(10, 10)
    heatmap[0, :3] = torch.tensor([3.0, 2.0, 1.0])
    ranks = rank_voxels(heatmap, seed=0)
    assert ranks[0, :3].tolist() == [0, 1, 2]
    assert sorted(ranks.flatten().tolist()) == list(range(100))
    assert torch.equal(ranks, rank_voxels(heatmap, seed=0))
    assert not torch.equal(ranks, rank_voxels(heatmap, seed=1))
    tied = ranks.flatten()[3:].float()
    assert abs(np.corrcoef(tied.numpy(), np.arange(97))[0, 1]) < 0.3  # no raster order


def test_blur_baseline_respects_anisotropic_spacing():
    image = torch.zeros(1, 41, 41)
    image[0, 20, 20] = 1.0
    blurred = make_baseline(image, spacing=(1.0, 4.0), kind="blur", sigma_mm=4.0)[0]
    assert blurred.sum() == pytest.approx(1.0, rel=1e-4)
    # sigma is 4 voxels along axis 0 and 1 voxel along axis 1
    assert blurred[24, 20] > 10 * blurred[20, 24]
    mean = make_baseline(torch.arange(8.0).view(2, 2, 2), (1, 1), kind="mean")
    assert torch.equal(mean[0], torch.full((2, 2), 1.5)) and torch.equal(mean[1], torch.full((2, 2), 5.5))


def test_deleting_the_known_region_first_beats_random_order(region_case):
    net, image, region, mask = region_case
    assert mask.all()
    scorer = ClassScorer(net, 1, mask)
    baseline = make_baseline(image, (1.0, 1.0), kind="mean")
    truth = deletion_insertion(scorer, image, baseline, region.float(), step=0.02)
    chance = deletion_insertion(scorer, image, baseline, baseline_heatmap("random", net, image, 1, mask), step=0.02)
    truth_del, chance_del = truth["deletion"].summary(), chance["deletion"].summary()
    assert truth_del["auc"] < chance_del["auc"] - 0.3
    assert truth["insertion"].summary()["auc"] > chance["insertion"].summary()["auc"] + 0.3
    # the region is 80 of 1024 voxels: once it is gone (8%), the class is gone
    deletion = truth["deletion"]
    assert deletion.probability[0] > 0.99 and deletion.probability[5] < 0.02 and deletion.dice[5] == 0
    assert truth_del["auc_normalised"] == pytest.approx(truth_del["auc"] / deletion.probability[0])
    assert truth_del["dice_auc"] < chance_del["dice_auc"]


def test_scorer_uses_the_fixed_mask_and_batches(region_case):
    net, image, region, mask = region_case
    half = torch.zeros_like(mask)
    half[:16] = True
    scorer = ClassScorer(net, 1, half, batch_size=3)
    inputs = image[None].repeat(7, 1, 1, 1)
    prob, dice = scorer(inputs)
    assert prob.shape == (7,) and np.allclose(dice, 2 * 512 / (1024 + 512))
    with pytest.raises(SegGradCAMError, match="empty mask"):
        ClassScorer(net, 1, torch.zeros_like(mask))


def _neighbour_mean(values: np.ndarray) -> np.ndarray:
    """Weighted mean of the in-bounds neighbours of every voxel (independent of the solver)."""
    kernel = np.zeros((3,) * values.ndim)
    for offset, weight in neighbour_weights(values.ndim):
        kernel[tuple(o + 1 for o in offset)] = weight
    total = ndimage.correlate(values, kernel, mode="constant")
    return total / ndimage.correlate(np.ones_like(values), kernel, mode="constant")


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 9)])
def test_imputation_solves_its_laplace_like_system(shape):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, *shape, generator=generator)
    removed = torch.rand(shape, generator=generator) < 0.6
    imputed = noisy_linear_imputation(image, removed, noise=0.0).double().numpy()
    a, b, index = imputation_system(image.numpy(), removed.numpy())
    solution = imputed.reshape(2, -1)[:, index].T
    assert np.abs(a @ solution - b).max() < 1e-6 * np.abs(b).max()
    for c in range(2):
        # every imputed voxel is the weighted mean of its neighbours (known or imputed)
        mean = _neighbour_mean(imputed[c])
        assert np.allclose(imputed[c][removed.numpy()], mean[removed.numpy()], atol=1e-4)
        assert np.array_equal(imputed[c][~removed.numpy()], image[c].double().numpy()[~removed.numpy()])
    assert sum(w for _, w in neighbour_weights(2)) == pytest.approx(1.0)
    assert dict(neighbour_weights(2))[(0, 1)] == pytest.approx(1 / 6) and len(neighbour_weights(3)) == 26


def test_imputation_noise_touches_only_removed_voxels():
    image = torch.randn(1, 16, 16)
    removed = torch.zeros(16, 16, dtype=torch.bool)
    removed[4:8, 4:8] = True
    clean = noisy_linear_imputation(image, removed, noise=0.0)
    noisy = noisy_linear_imputation(image, removed, noise=0.5, seed=3)
    assert torch.equal(noisy[:, ~removed], image[:, ~removed])
    assert (noisy - clean)[:, removed].std() == pytest.approx(0.5 * float(clean.std()), rel=0.5)
    everything = noisy_linear_imputation(image, torch.ones(16, 16, dtype=torch.bool), noise=0.0)
    assert torch.allclose(everything, torch.full_like(image, float(image.mean())), atol=1e-4)


def test_road_morf_falls_faster_than_lerf_for_the_true_region(region_case):
    net, image, region, mask = region_case
    curves = road(ClassScorer(net, 1, mask), image, region.float(), percentages=(0.05, 0.1, 0.5))
    morf, lerf = curves["morf"].summary(), curves["lerf"].summary()
    assert curves["morf"].probability[2] < 0.05 and curves["lerf"].probability[2] > 0.95
    assert morf["auc"] < lerf["auc"]


def test_gradient_saliency_lives_in_the_region(region_case):
    net, image, region, mask = region_case
    saliency = gradient_saliency(net, image, 1, mask)
    assert saliency.shape == region.shape
    assert (saliency[~region] == 0).all() and (saliency[region] > 0).all()
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(baseline_heatmap("mask", net, image, 1, mask), mask.float())


def test_map_similarity_of_a_map_with_itself_and_with_noise():
    generator = torch.Generator().manual_seed(0)
    a = ndimage.gaussian_filter(torch.rand(32, 32, generator=generator).numpy(), 3)
    same = map_similarity(a, a)
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    other = map_similarity(a, torch.rand(32, 32, generator=generator).numpy())
    assert abs(other["spearman"]) < 0.2 and other["ssim"] < 0.5


def test_cascading_randomisation_changes_the_map_and_not_the_network():
    net = small_monai_network("UNet", 2)
    stages = ["model.1.submodule.1.submodule.2", "model.1.submodule.2"]
    x = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    steps = cascade_steps(net, x[None], stages)
    assert [name for name, _ in steps] == ["head", stages[1], stages[0]]
    assert all(set(a[1]) < set(b[1]) for a, b in zip(steps, steps[1:]))
    assert steps[0][1] and all(name.startswith("model.2") for name in steps[0][1])
    region = net(x[None]).argmax(1)[0] == 1
    results = cascading_randomisation(net, x, stages[1], 1, region, stages, seed=0)
    assert [r["step"] for r in results] == ["head", stages[1], stages[0]]
    assert results[-1]["spearman"] < 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
