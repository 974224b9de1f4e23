"""The browser viewer's server in this process (no browser): every state value it reads is
checked, a failure is shown on the page, a volume cannot change under a run, outputs (findings'
files included) are confined to their folder, and an opened volume replaces the previous one's
nodes and files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import KMEANS_T1
from test_web_uploads import lying_zip

from SegGradCAMLib.cli import main
from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.errors import SegGradCAMError

DEMO = "Demo lesion case (t1c, flair)"
KMEANS = "KmeansTest T1 head"


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SegGradCAMLib.web.app import SegGradCAMWeb

    viewer = SegGradCAMWeb(server=get_server("server-checks"), workdir=tmp_path_factory.mktemp("web"))
    viewer.state.ready()  # as when the server starts: changes run the change handlers on flush
    yield viewer
    viewer.close()


def explain_demo(root, *arguments: str):
    """``root/out``: what ``seggradcam explain ARGUMENTS`` wrote for the demo model on the demo case."""
    case = demo_data.write_case(demo_data.make_case(demo_data.EVAL_SEED, "colin27"), root / "case")
    inputs = [str(case[c]) for c in demo_data.CHANNELS]
    options = ["--model", "demo-lesions-unet2d", "--quiet", "--no-overview", *arguments]
    assert main(["explain", *inputs, *options, "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """A folder ``seggradcam explain`` wrote (the demo model on the demo case, edema only)."""
    return explain_demo(tmp_path_factory.mktemp("explained"), "--classes", "edema")


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """A folder ``seggradcam explain --findings`` wrote (the demo case's necrotic core: one finding)."""
    return explain_demo(tmp_path_factory.mktemp("found"), "--classes", "necrotic_core", "--findings")


def changed(web, **values) -> None:
    """Values set from a page (trame.state.set), then flushed: the server's change handlers run."""
    web.state.update(values)
    web.state.flush()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("opacity", "abc", "Opacity must be a number from 0 to 1"),
        ("threshold", 7, "Threshold must be a number from 0 to 1"),
        ("bg_window", float("nan"), "Window must be a number"),
        ("show_heatmap", "abc", "Show heatmap must be true or false"),
        ("segmentation_style", "evil", "Segmentation style must be one of outline, fill"),
        ("heat", "x", "Heatmap must be one of the listed heatmaps"),
    ],
)
def test_a_bad_display_value_is_refused_and_put_back(web, name, value, message):
    web.open_sample(KMEANS)
    before = web.state[name]
    web.state.error = ""
    changed(web, **{name: value})
    assert message in web.state.error
    assert web.state[name] == before
    web.state.error = ""
    changed(web, opacity=0.5)  # later changes work again
    assert web.state.error == "" and web.state.opacity == 0.5


def test_a_huge_class_list_is_refused(web):
    web.open_sample(DEMO)
    web.start_run("demo-lesions-unet2d", "edema," * 200_000, "auto", "auto", False)
    assert web.run is None
    assert web.state.error.startswith("Classes must be one of all, edema, enhancing_rim, necrotic_core; got 'edema,")
    web.start_run("demo-lesions-unet2d", "all", "x" * 100, "auto", False)
    assert web.run is None and web.state.error.startswith("Layers must be one of auto, ")


def test_a_damaged_upload_is_shown_on_the_page(web):
    asyncio.run(web.upload([{"name": "series.zip", "content": lying_zip()}]))
    assert web.state.error.startswith("series.zip: damaged zip file")


def test_no_volume_can_be_opened_while_a_run_goes(web):
    async def during_a_run() -> None:
        web.start_run("demo-lesions-unet2d", "all", "auto", "auto", False)
        assert web.run is not None, web.state.error
        try:
            web.open_sample(KMEANS)
            assert web.state.case_title.startswith("Demo lesion case")
            assert "A run is going" in web.state.error
            await web.upload([{"name": "a.nrrd", "content": b"x"}])
            assert web.state.case_title.startswith("Demo lesion case") and "A run is going" in web.state.error
        finally:
            web.cancel_run()
            await asyncio.sleep(0.5)  # the run's follower sees the cancel and ends

    web.open_sample(DEMO)
    asyncio.run(during_a_run())
    web.open_sample(KMEANS)
    assert web.state.case_title.startswith("KmeansTest") and web.state.error == ""


def with_explain(folder, tmp_path, **changes):
    """A copy of the output ``folder`` whose explain.json has the top-level ``changes``."""
    copy = tmp_path / "out"
    shutil.copytree(folder, copy)
    report = json.loads((copy / "explain.json").read_text())
    (copy / "explain.json").write_text(json.dumps({**report, **changes}))
    return copy


def test_an_output_folder_cannot_name_files_outside_it(web, explained, tmp_path):
    (tmp_path / "case").mkdir()
    shutil.copy(explained / "segmentation.nrrd", tmp_path / "case" / "labels.nrrd")
    folder = with_explain(explained, tmp_path, segmentation="../case/labels.nrrd")
    with pytest.raises(SegGradCAMError, match=r"^out/\.\./case/labels.nrrd lies outside out"):
        web.open_output_folder(folder)
    assert web.download("../case/labels.nrrd") is None


def test_a_missing_heatmap_file_is_one_line(web, explained, tmp_path):
    folder = with_explain(explained, tmp_path)
    (folder / "heatmap_edema.nrrd").unlink()
    with pytest.raises(SegGradCAMError, match=r"^out/heatmap_edema.nrrd is missing"):
        web.open_output_folder(folder)


def test_an_opened_volume_replaces_the_previous_ones_nodes_and_files(web, explained):
    def sizes() -> tuple[int, int]:
        files = [p for p in web.workdir.rglob("*") if p.is_file()]
        return web.scene.GetNumberOfNodes(), len(files)

    web.open_sample(DEMO)
    web.open_output_folder(explained)  # a run's outputs too
    web.open_sample(DEMO)
    first = sizes()
    upload = [{"name": "head.nii.gz", "content": KMEANS_T1.read_bytes()}]
    for name in (KMEANS, DEMO):
        web.open_output_folder(explained)
        asyncio.run(web.upload(upload))
        assert web.state.case_title.startswith("head.nii.gz") and len(list(web.workdir.rglob("*.nrrd"))) == 1
        web.open_sample(name)
    assert sizes() == first


def test_a_failure_while_following_a_run_ends_it_and_is_shown(web, monkeypatch):
    def broken(run):
        raise RuntimeError("the worker's pipe broke")

    async def run_until_it_ends() -> None:
        web.start_run("demo-lesions-unet2d", "all", "auto", "auto", False)
        assert web.run is not None, web.state.error
        monkeypatch.setattr(web.logic, "pollRun", broken)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if web.run is None:
                break

    web.open_sample(DEMO)
    asyncio.run(run_until_it_ends())
    assert web.run is None and web.state.running is False
    assert web.state.error.startswith("Failed: RuntimeError: the worker's pipe broke")


@pytest.mark.parametrize(
    ("outputs", "name"),
    [
        *(("explained", name) for name in ("overview.png", "explain.json", "segmentation.nrrd", "heatmap_edema.nrrd")),
        *(("found", name) for name in ("heatmap_necrotic_core_f1.nrrd", "entropy.nrrd", "findings.json")),
    ],
)
def test_a_served_file_linking_outside_its_folder_is_refused(web, request, tmp_path, outputs, name):
    folder = with_explain(request.getfixturevalue(outputs), tmp_path)
    (tmp_path / "secret").mkdir()
    secret = tmp_path / "secret" / name
    shutil.copy(folder / name, secret) if (folder / name).exists() else secret.write_bytes(b"secret")
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(secret)
    with pytest.raises(SegGradCAMError, match=rf"^out/{name} lies outside out \(through a link") as raised:
        web.open_output_folder(folder)
    assert "\n" not in str(raised.value)


def test_a_file_replaced_by_a_link_after_opening_is_not_downloaded(web, explained, tmp_path):
    folder = with_explain(explained, tmp_path)
    web.open_output_folder(folder)
    web.state.error = ""
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "heatmap_edema.nrrd").unlink()
    (folder / "heatmap_edema.nrrd").symlink_to(tmp_path / "secret")
    assert web.download("heatmap_edema.nrrd") is None
    assert web.state.error.startswith("out/heatmap_edema.nrrd lies outside out (through a link")


def small_nifti(path, shape=(6, 8, 10)) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.uint8)), str(path))


def test_a_volume_cut_short_or_declaring_too_much_is_refused_before_slicer_reads_it(web, explained, tmp_path):
    cut, huge = tmp_path / "cut.nii", tmp_path / "huge.nii"
    small_nifti(cut)
    cut.write_bytes(cut.read_bytes()[:-200])
    small_nifti(huge)
    header = bytearray(huge.read_bytes())
    header[40:56] = np.array([3, 600, 600, 400, 1, 1, 1, 1], "<i2").tobytes()  # dim[0..7]: 600 x 600 x 400
    huge.write_bytes(bytes(header))
    web.open_sample(DEMO)
    title = web.state.case_title
    with pytest.raises(SegGradCAMError, match=r"cut.nii is cut short: its header promises"):
        web.load_case([cut], "cut")
    with pytest.raises(SegGradCAMError, match=r"huge.nii declares 600 x 600 x 400 voxels \(144,000,000\), more than"):
        web.load_case([huge], "huge")
    folder = with_explain(explained, tmp_path, inputs=[str(cut), str(cut)])
    with pytest.raises(SegGradCAMError, match=r"cut.nii is cut short"):
        web.open_output_folder(folder)
    assert web.state.case_title == title


def test_the_viewers_limits_are_the_ones_given(tmp_path):
    from trame.app import get_server

    from SegGradCAMLib.web.app import SegGradCAMWeb

    viewer = SegGradCAMWeb(server=get_server("limits"), workdir=tmp_path / "web", max_disk_mb=7, max_voxels=100)
    try:
        assert (viewer.uploads.max_voxels, viewer.uploads.max_disk) == (100, 7 * 2**20)
        small_nifti(tmp_path / "big.nii")
        with pytest.raises(
            SegGradCAMError, match=r"big.nii declares 10 x 8 x 6 voxels \(480\), more than the limit of 100"
        ):
            viewer.load_case([tmp_path / "big.nii"], "big")
    finally:
        viewer.close()


def test_an_output_declaring_too_much_is_refused_before_slicer_reads_it(web, explained, tmp_path):
    folder = with_explain(explained, tmp_path)
    heatmap = folder / "heatmap_edema.nrrd"
    heatmap.write_bytes(re.sub(rb"\nsizes: [^\n]*", b"\nsizes: 600 600 400", heatmap.read_bytes(), count=1))
    with pytest.raises(SegGradCAMError, match=r"heatmap_edema.nrrd declares 600 x 600 x 400 voxels"):
        web.open_output_folder(folder)


def test_an_opened_folders_findings_are_listed_and_a_bad_choice_is_refused(web, found):
    from SegGradCAMLib.mrml.findings import FINDING_ATTRIBUTE

    findings = json.loads((found / "findings.json").read_text())["findings"]
    web.open_output_folder(found)
    assert [(row["id"], row["label"]) for row in web.state.finding_rows] == [(f["id"], f["class"]) for f in findings]
    assert {"probability necrotic_core", "entropy"} <= {item["value"] for item in web.state.overlay_items}
    web.findings.select(99)
    assert web.state.error == "Finding must be one of the listed findings; got 99."
    web.state.error = ""
    web.findings.select(1)
    assert web.state.error == "" and web.state.overlay == "finding"
    assert web._heatmap_node().GetAttribute(FINDING_ATTRIBUTE) == "1"
    views = web.scene.GetNodesByClass("vtkMRMLSliceNode")
    for view in (views.GetItemAsObject(i) for i in range(views.GetNumberOfItems())):  # centred on the finding
        origin = [view.GetSliceToRAS().GetElement(axis, 3) for axis in range(3)]
        assert np.allclose(origin, findings[0]["centroid_ras"], atol=1e-3), view.GetName()
    changed(web, overlay="../../etc/passwd")
    assert web.state.error.startswith("Overlay must be one of the listed overlays; got '../../etc/passwd'")
    assert web.state.overlay == "finding"
