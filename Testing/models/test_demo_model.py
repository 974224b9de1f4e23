"""The demo data recipe, the training pipeline and the shipped multi-class demo model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.cli import main
from SegGradCAMLib.models import DEFAULT_MODEL, DEFAULT_MULTICLASS_MODEL, SHIPPED_MODELS, load_model
from SegGradCAMLib.demo.training import TrainConfig, dice_scores, predict_labels, train_demo, train_network

MODEL_DIR = SHIPPED_MODELS / DEFAULT_MULTICLASS_MODEL
CARD = json.loads((MODEL_DIR / "model_card.json").read_text())


@pytest.fixture(scope="module")
def held_out_case(tmp_path_factory):
    """The first held-out case (Colin27 with lesions), written as NRRD files."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    return case, demo_data.write_case(case, tmp_path_factory.mktemp("case"))


def test_recipe_is_deterministic_from_its_seed() -> None:
    first, again, other = (demo_data.make_slice_set(seed, 12) for seed in (7, 7, 8))
    assert first.sha256() == again.sha256() != other.sha256()
    assert first.images.shape == (12, 2, demo_data.PLANE, demo_data.PLANE) and first.images.dtype == np.float32
    assert set(np.unique(first.labels)) <= {0, 1, 2, 3}


def test_cases_come_from_the_three_real_heads_with_nested_lesions_inside_the_brain() -> None:
    cases = [case for case, _ in itertools.islice(demo_data.iter_cases(3), 3)]
    assert [c.subject for c in cases] == list(demo_data.SUBJECTS)
    for case in cases:
        subject = demo_data.load_subject(case.subject)
        assert case.image.shape == (2, *subject.t1.shape) and case.labels.shape == subject.t1.shape
        assert set(np.unique(case.labels)) == {0, 1, 2, 3}
        from scipy import ndimage

        assert not (case.labels > 0)[~ndimage.binary_dilation(subject.brain, iterations=3)].any()
        core = case.labels == 3
        assert (case.labels[ndimage.binary_dilation(core) & ~core] >= 2).mean() > 0.9  # the rim surrounds the core
        t1c, flair = case.image
        assert flair[case.labels == 1].mean() > 1.1 * flair[subject.brain & (case.labels == 0)].mean()
        assert t1c[case.labels == 2].mean() > 1.2 * t1c[case.labels == 3].mean()


def test_training_is_reproducible() -> None:
    data = demo_data.make_slice_set(5, 24)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = (train_network(data, None, epochs=1, batch_size=8, seed=3, progress=None) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(first.network.state_dict().items(), second.network.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_demo_writes_a_loadable_model_folder(tmp_path) -> None:
    config = TrainConfig(train_slices=24, val_slices=8, eval_slices=8, epochs=1, threads=1)
    threads = torch.get_num_threads()
    try:
        card = train_demo(tmp_path, config, "test", progress=None, log=lambda text: None)
    finally:
        torch.set_num_threads(threads)
    loaded = load_model(str(tmp_path / f"{DEFAULT_MULTICLASS_MODEL}.json"))
    assert loaded.spec.labels == list(demo_data.LABELS) and loaded.layers == card["decoder_stages"]
    assert set(card["held_out_dice"]) == {"edema", "enhancing_rim", "necrotic_core", "lesion_union"}
    assert "Demonstration model, not for clinical use" in (tmp_path / "README.md").read_text()


def test_shipped_model_is_registered_small_and_matches_its_card() -> None:
    loaded = load_model(DEFAULT_MULTICLASS_MODEL)
    assert DEFAULT_MODEL == "hdbet"
    assert loaded.spec.labels == CARD["labels"] == list(demo_data.LABELS)
    assert loaded.spec.in_channels == 2 and loaded.spec.spatial_dims == 2
    assert loaded.spec.sha256 == CARD["weights"]["sha256"]
    assert loaded.layers == CARD["decoder_stages"]
    assert (MODEL_DIR / CARD["weights"]["file"]).stat().st_size < 5_000_000


def test_shipped_model_held_out_dice() -> None:
    """The card's held-out numbers are reproduced; the lesion union reaches 0.80."""
    data = demo_data.evaluation_set(CARD["data"]["eval_slices"])
    assert data.sha256() == CARD["data"]["eval_sha256"]
    scores = dice_scores(predict_labels(load_model(DEFAULT_MULTICLASS_MODEL).network, data.images), data.labels)
    assert scores["lesion_union"] >= 0.80
    for name, value in CARD["held_out_dice"].items():
        assert scores[name] == pytest.approx(value, abs=1e-3), name


def test_explain_gives_each_class_its_own_heatmap(tmp_path, held_out_case) -> None:
    """Acceptance: class heatmaps differ and each concentrates on its own ground-truth region.

    HiResCAM (element-wise gradient x activation) at the default decoder stage. Plain Grad-CAM
    (channel weights = mean gradient) is not class-localised on this small network: its
    enhancing-rim and necrotic-core maps put almost no energy in their own regions (model README).
    """
    import SimpleITK as sitk

    case, paths = held_out_case
    out = tmp_path / "explain"
    assert (
        main(
            [
                "explain",
                str(paths["t1c"]),
                str(paths["flair"]),
                "--model",
                DEFAULT_MULTICLASS_MODEL,
                "--method",
                "hirescam",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "explain.json").read_text())
    assert [c["name"] for c in report["classes"]] == list(demo_data.LABELS[1:])
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    assert dice_scores(segmentation, case.labels)["lesion_union"] > 0.8
    maps = {
        name: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"heatmap_{name}.nrrd"))) for name in demo_data.LABELS[1:]
    }
    for a, b in itertools.combinations(maps.values(), 2):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.5
    regions = {name: case.labels == c for c, name in enumerate(demo_data.LABELS) if c > 0}
    for name, heat in maps.items():
        energy = {other: heat[region].sum() / heat.sum() for other, region in regions.items()}
        density = {other: heat[region].mean() for other, region in regions.items()}
        assert energy[name] > 0.5, (name, energy)
        for other in regions:
            if other != name:
                assert energy[name] > energy[other] and density[name] > 2 * density[other], (name, other)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_bfloat16_autocast_on_the_cpu_stays_close_to_float32(held_out_case, method) -> None:
    """``--amp``: the forward in bfloat16 autocast, the CAM arithmetic in float32. bfloat16 keeps
    8 mantissa bits: a few voxels differ by up to ~0.2 of the map's maximum, so the bound is on
    the 99th percentile of the voxel-wise difference of the normalised maps."""
    from SegGradCAMLib.inference import explain_volume

    case, _ = held_out_case
    model = load_model(DEFAULT_MULTICLASS_MODEL)
    spacing = (demo_data.SPACING_MM,) * 3  # identity direction (write_case)
    full, half = (
        explain_volume(model, case.image, spacing, np.eye(3), method=method, amp=amp) for amp in (False, True)
    )
    agree = float((full.labels == half.labels).mean())
    assert agree >= 0.999
    for layer, maps in full.heatmaps.items():
        for i, heat in enumerate(maps):
            difference = np.abs(heat - half.heatmaps[layer][i])
            print(
                f"{method} class {i}: labels equal {agree:.5f}, map difference 99th percentile "
                f"{np.percentile(difference, 99):.4f}, max {difference.max():.3f}"
            )
            assert np.percentile(difference, 99) <= 1e-2
            assert half.raw_max[layer][i] == pytest.approx(
                full.raw_max[layer][i], rel=0.1, abs=1e-6
            )  # single-voxel maxima: within 10 %
