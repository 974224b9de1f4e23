"""Findings, "why here?", probabilities and channel reliance (issue 23).

Toy networks with known answers check the engine's targets; the 2D demo model on a held-out
demo case with two lesions checks what a user reads in findings.json and the maps.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from toy_models import blob, threshold_model

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.findings import FindingRequest
from SegGradCAMLib.inference import explain_volume
from SegGradCAMLib.targets import TargetRequest

CUBE = np.ones((3, 3, 3), dtype=bool)


def _two_blobs(shape=(24, 24, 120), a=(12, 12, 15), b=(12, 12, 55), radius=5):
    """One channel ``(1, Z, Y, X)`` with two positive blobs (class 1 of the threshold model)."""
    return np.maximum(blob(shape, a, radius), blob(shape, b, radius))[None]


def _explain_toy(image, request, model=None):
    """The threshold model's HiResCAM explanation of ``image`` ``(Cin, Z, Y, X)`` (1 mm): the result
    and the maps by (class, finding id). A 1x1 network: a target's map is its own region."""
    maps = {}
    result = explain_volume(
        model or threshold_model(in_channels=len(image)),
        image,
        (1.0, 1.0, 1.0),
        layers="features",
        method="hirescam",
        request=request,
        on_heatmap=lambda h, labels: maps.__setitem__((h.class_index, h.finding), h.array),
    )
    return result, maps


def test_each_component_is_a_finding_with_its_own_map_from_the_same_pass():
    image = _two_blobs()
    result, maps = _explain_toy(image, TargetRequest(FindingRequest()))
    found = result.findings
    assert found is not None and found.found == 2 and [f.id for f in found.findings] == [1, 2]
    assert set(maps) == {(1, None), (1, 1), (1, 2)}  # the class map and one map per finding
    for finding in found.findings:
        own = finding.full_mask(image.shape[1:])
        heat = maps[(1, finding.id)]
        assert heat[own].sum() / heat.sum() > 0.99  # a 1x1 network: the map is the finding's own voxels
    class_heat = maps[(1, None)]
    assert all(class_heat[f.full_mask(image.shape[1:])].sum() > 0.3 * class_heat.sum() for f in found.findings)


def test_small_components_and_more_than_max_findings_are_left_out_largest_kept():
    image = _two_blobs(radius=5)
    image = np.maximum(image, blob(image.shape[1:], (12, 12, 95), 2)[None])  # a third, small blob (33 voxels)
    result, maps = _explain_toy(image, TargetRequest(FindingRequest(min_mm3=40.0)))
    assert result.findings.found == 2 and len(maps) == 3  # the small blob is below 40 mm³
    result, maps = _explain_toy(image, TargetRequest(FindingRequest(max_findings=1)))
    assert result.findings.found == 3 and result.findings.left_out == 2 and len(result.findings.findings) == 1
    kept = result.findings.findings[0]
    assert kept.voxels == max(int(s) for s in np.bincount(ndimage.label(image[0] > 0, CUBE)[0].ravel())[1:])


@pytest.mark.parametrize(
    "point, chosen",
    [((12, 12, 15), 1), ((12, 13, 17), 1), ((12, 12, 65), 2), ((12, 12, 42), 2)],
    ids=["centre of A", "inside A", "background 5 mm from B", "background 8 mm from B"],
)
def test_a_point_picks_the_finding_that_contains_it_or_the_nearest_within_the_radius(point, chosen):
    image = _two_blobs()
    # blobs of radius 5 (voxels with distance < 5 from the centre): B spans x 51..59
    result, maps = _explain_toy(image, TargetRequest(FindingRequest(point_zyx=point)))
    found = result.findings
    assert [f.id for f in found.findings] == [chosen] and found.point["finding"] == chosen
    assert len(maps) == 2  # the class and the chosen finding only
    distance = found.point["distance_mm"]
    assert (distance == 0) == (point[2] in (15, 17))


def test_a_point_far_from_every_finding_is_refused_naming_the_nearest():
    with pytest.raises(SegGradCAMError, match=r"nearest is finding 2 \(blob\) at 4[0-9]\.\d mm"):
        _explain_toy(_two_blobs(), TargetRequest(FindingRequest(point_zyx=(12, 12, 100))))


def test_probabilities_sum_to_one_match_the_labels_and_entropy_is_in_0_1():
    volumes = {}
    image = _two_blobs()
    request = TargetRequest(probabilities=True, on_map=lambda m: volumes.__setitem__((m.kind, m.class_index), m.array))
    result, _ = _explain_toy(image, request)
    probabilities = np.stack([volumes[("probability", k)] for k in range(2)])
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=0) == result.labels).mean() == 1.0  # one grid: no resampling seam
    entropy = volumes[("entropy", None)]
    assert 0.0 <= entropy.min() and entropy.max() <= 1.0
    expected = -(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum(axis=0) / np.log(2)
    assert np.allclose(entropy, expected, atol=1e-5)


def test_a_channel_the_network_ignores_gets_no_reliance_and_both_channels_lose_the_most():
    model = threshold_model(in_channels=2)
    with np.errstate(all="ignore"):
        model.network.features.weight.data[:, 1] = 0.0  # channel 1 ignored by construction
        model.network.features.weight.data[:, 0] = 1.0
    image = np.concatenate([_two_blobs(), _two_blobs() * 3.0])
    request = TargetRequest(FindingRequest(), reliance=True, channel_names=("t1c", "flair"))
    result, _ = _explain_toy(image, request, model=model)
    assert len(result.reliance) == 3  # the class and two findings
    for entry in result.reliance:
        assert entry["occlusion"]["flair"] == pytest.approx(0.0, abs=1e-9)
        assert entry["input_gradient"]["flair"] == pytest.approx(0.0, abs=1e-9)
        assert entry["input_gradient"]["t1c"] == pytest.approx(1.0)
        assert entry["occlusion"]["t1c"] > 0.5
        assert entry["occlusion"]["all"] >= max(entry["occlusion"]["t1c"], entry["occlusion"]["flair"]) - 1e-9


# --- the 2D demo model on a held-out case with two lesions -------------------------------------


@pytest.fixture(scope="module")
def two_lesion_run(tmp_path_factory):
    """The first held-out demo case whose lesions are two separate components, explained with --findings."""
    from SegGradCAMLib.api import explain
    from SegGradCAMLib.demo import data as demo_data
    from SegGradCAMLib.finding_options import FindingOptions
    from SegGradCAMLib.options import ExplainOptions

    for case, _ in itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), 12):
        if ndimage.label(case.labels > 0, CUBE)[1] == 2:
            break
    else:
        pytest.fail("no held-out demo case with two lesions among the first 12")
    folder = tmp_path_factory.mktemp("two_lesions")
    paths = demo_data.write_case(case, folder / "case")
    inputs = (str(paths["t1c"]), str(paths["flair"]))
    options = ExplainOptions(
        inputs=inputs, model="demo-lesions-unet2d", out=folder / "out", findings=FindingOptions(findings=True)
    )
    explain(options)
    return case, inputs, folder / "out"


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_each_lesion_is_a_finding_whose_map_stays_near_it(two_lesion_run):
    case, _, out = two_lesion_run
    report = json.loads((out / "findings.json").read_text())
    lesions, _ = ndimage.label(case.labels > 0, CUBE)
    edema = [f for f in report["findings"] if f["class"] == "edema"][:2]
    assert len(edema) == 2
    owners = []
    for finding in edema:
        mask = np.zeros(case.labels.shape, bool)
        (i0, j0, k0), (i1, j1, k1) = finding["bbox_ijk"]
        centre = np.round(finding["centroid_ijk"][::-1]).astype(int)
        owners.append(lesions[tuple(centre)])
        mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = True
        layer = next(iter(finding["layers"].values()))
        assert layer["energy_inside"] + layer["energy_shell"] >= 0.7, finding  # >= 70 % within 7 mm
        heat = _read(out / layer["file"])
        near = [float(heat[ndimage.distance_transform_edt(lesions != n, sampling=2.0) <= 7].sum()) for n in (1, 2)]
        assert near[owners[-1] - 1] > near[2 - owners[-1]]  # nearer its own lesion than the other
    assert sorted(owners) == [1, 2]  # one finding per lesion


def test_findings_json_and_table_agree_with_the_segmentation(two_lesion_run):
    _, _, out = two_lesion_run
    report = json.loads((out / "findings.json").read_text())
    labels = _read(out / "segmentation.nrrd")
    reference = sitk.ReadImage(str(out / "segmentation.nrrd"))
    sizes_found: list[int] = []
    for c in {f["class_index"] for f in report["findings"]}:
        components, _ = ndimage.label(labels == c, CUBE)
        sizes = np.bincount(components.ravel())[1:]
        boxes = ndimage.find_objects(components)
        expected = sorted(
            (int(n), [[s.start for s in box][::-1], [s.stop - 1 for s in box][::-1]])
            for n, box in zip(sizes, boxes)
            if n * 8 >= report["min_finding_mm3"]
        )
        got = [(f["voxels"], f["bbox_ijk"]) for f in report["findings"] if f["class_index"] == c]
        assert all(g in expected for g in got)  # each finding a 26-connected component, with its size and box
        sizes_found += [n for n, _ in expected]
    kept = [f["voxels"] for f in report["findings"]]
    assert report["found"] == len(sizes_found) and len(kept) == min(len(sizes_found), report["max_findings"])
    assert report["left_out"] == len(sizes_found) - len(kept)
    assert kept == sorted(sizes_found, reverse=True)[: len(kept)]  # the largest kept, numbered by size
    for finding in report["findings"]:
        ijk = [int(round(v)) for v in finding["centroid_ijk"]]
        lps = reference.TransformIndexToPhysicalPoint(ijk)
        assert np.allclose([-lps[0], -lps[1], lps[2]], finding["centroid_ras"], atol=reference.GetSpacing()[0])
        assert finding["volume_ml"] == pytest.approx(finding["voxels"] * 8 / 1000)
    rows = (out / "findings.csv").read_text().splitlines()
    assert len(rows) == 1 + len(report["findings"]) and "reliance" not in rows[0]
    assert "occlusion_flair" in rows[0] and "input_gradient_t1c" in rows[0]
    explained = json.loads((out / "explain.json").read_text())
    assert explained["findings"] == report and explained["classes"][0]["reliance"]["occlusion"]


def test_probability_maps_of_the_demo_model_agree_with_its_segmentation(two_lesion_run):
    _, _, out = two_lesion_run
    labels = _read(out / "segmentation.nrrd")
    names = ["background", "edema", "enhancing_rim", "necrotic_core"]
    probabilities = np.stack([_read(out / f"probability_{name}.nrrd") for name in names])
    assert np.abs(probabilities.sum(axis=0) - 1).max() < 1e-4
    assert (probabilities.argmax(axis=0) == labels).mean() >= 0.999
    entropy = _read(out / "entropy.nrrd")
    assert entropy.min() >= 0 and entropy.max() <= 1 and entropy[labels > 0].mean() > entropy[labels == 0].mean()


def test_a_point_in_ras_explains_the_finding_there(two_lesion_run, tmp_path):
    from SegGradCAMLib.api import explain
    from SegGradCAMLib.finding_options import FindingOptions
    from SegGradCAMLib.options import ExplainOptions

    _, inputs, out = two_lesion_run
    second = json.loads((out / "findings.json").read_text())["findings"][1]
    labels = _read(out / "segmentation.nrrd")
    components, _ = ndimage.label(labels == second["class_index"], CUBE)
    first, last = second["bbox_ijk"]
    box = tuple(slice(a, b + 1) for a, b in zip(first[::-1], last[::-1]))
    ids, counts = np.unique(components[box][components[box] > 0], return_counts=True)
    voxel = np.argwhere(components == ids[counts == second["voxels"]][0])[second["voxels"] // 2]
    reference = sitk.ReadImage(str(out / "segmentation.nrrd"))
    lps = reference.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])
    point = (-lps[0], -lps[1], lps[2])  # a voxel of the finding, in RAS
    options = ExplainOptions(
        inputs=inputs, model="demo-lesions-unet2d", out=tmp_path / "out", findings=FindingOptions(point=point)
    )
    report = explain(options)
    chosen = report.findings["findings"]
    assert [f["id"] for f in chosen] == [second["id"]] and report.findings["point"]["ras"] == list(point)
    assert report.findings["point"]["distance_mm"] == 0
    assert (tmp_path / "out" / f"heatmap_{second['class']}_f{second['id']}.nrrd").exists()


@pytest.mark.parametrize("dims", [3, 2], ids=["whole volume: found inside the CAM pass", "slices: a first pass"])
def test_findings_probabilities_and_reliance_leave_the_class_maps_and_labels_unchanged(dims):
    from conftest import small_monai_network

    from SegGradCAMLib.models.spec import LoadedModel, ModelSpec

    network = small_monai_network("UNet", dims)
    spec = ModelSpec(name="unet", labels=["a", "b", "c"], spatial_dims=dims, normalization="none", divisible_by=8)
    model = LoadedModel(network, spec, ["model.1.submodule.2"])
    volume = np.random.default_rng(1).standard_normal((1, 8, 32, 32)).astype(np.float32)
    plain = explain_volume(model, volume, (1, 1, 1), batch_size=3)
    maps = {}
    request = TargetRequest(FindingRequest(min_mm3=0), True, True, ("x",), on_map=lambda m: None)
    found = explain_volume(
        model,
        volume,
        (1, 1, 1),
        batch_size=3,
        request=request,
        on_heatmap=lambda h, labels: maps.__setitem__((h.class_index, h.finding), h.array),
    )
    assert np.array_equal(found.labels, plain.labels) and found.findings.found > 1
    layer = "model.1.submodule.2"
    for position, c in enumerate(plain.classes):
        assert np.allclose(maps[(c, None)], plain.heatmaps[layer][position], atol=1e-5)
    assert len(found.reliance) == len(plain.classes) + len(found.findings.findings)
