"""The module's widget as a clinician meets it: the real .ui, the real panel code and a real
``slicer-core`` scene, driven through ``Testing/slicer_harness.py`` (its MOCKs: the Qt GUI of the
Slicer application, the C++ widgets and the parameter node wrapper, each following Slicer's
source; see there). Runs go through the real worker process with the 2D demo model; the Findings
section too (the Findings checkbox, a row of the findings table clicked, "Why here?" with a point
placed in a slice view)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer_app_mock
import slicer_harness
import vtk
from PySide6.QtCore import Qt

from SegGradCAMLib.demo import data as demo_data
from SegGradCAMLib.models.declarations import SHIPPED_MODELS, shipped_spec_path
from SegGradCAMLib.mrml.findings import FINDING_ATTRIBUTE
from SegGradCAMLib.mrml.slice_views import SliceViews

DEMO = "demo-lesions-unet2d"
DEMO_CLASSES = ["background", "edema", "enhancing_rim", "necrotic_core"]


@pytest.fixture()
def scene():
    return slicer_harness.scene_with_slice_views()


@pytest.fixture()
def opened(scene):
    """``opened(**logicOptions)``: the module's widget set up and entered (the module shown)."""
    widgets = []

    def open_module(**logic_options):
        widget = slicer_harness.module_widget(scene, **logic_options)
        widget.enter()
        widgets.append(widget)
        return widget

    yield open_module
    slicer_harness.close()
    slicer_app_mock.QSettings.values.clear()


def from_path() -> str:
    """The model choice "From file or folder" (of the module the harness loaded)."""
    return sys.modules["SegGradCAM"].MODEL_FROM_PATH


def items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def checked(combo) -> list[str]:
    return [combo.itemText(index.row()) for index in combo.checkedIndexes()]


def choose(combo, text: str) -> None:
    """The user picks ``text`` in a combo box."""
    combo.setCurrentIndex(items(combo).index(text))


def check(combo, *names: str) -> None:
    """The user checks ``names`` in a checkable combo box, one click each."""
    model = combo.model()
    for name in names:
        combo.setCheckState(model.index(items(combo).index(name), 0), True)


def add_volume(scene, path, name):
    image = sitk.ReadImage(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image).astype(np.float32))
    node.SetSpacing(*image.GetSpacing())
    return node


def choose_demo_with_inputs(widget, scene, small_case):
    ui = widget.ui
    choose(ui.modelComboBox, DEMO)
    ui.inputVolumeSelector.setCurrentNode(add_volume(scene, small_case[0], "t1c"))
    ui.inputVolume2Selector.setCurrentNode(add_volume(scene, small_case[1], "flair"))


def run_to_end(widget, timeout: float = 180.0) -> None:
    """The panel's poll timer until the run is over (as Slicer's event loop runs it)."""
    end = time.monotonic() + timeout
    while widget.panel._run is not None:
        assert time.monotonic() < end, "the run did not end"
        widget.tick()
        time.sleep(0.05)


# -- choices kept ------------------------------------------------------------------------


def test_class_and_layer_choices_survive_reentering_the_module(opened):
    """Defect: every enter() reconnected the GUI; the model combo box, cleared and refilled by
    its connector, told the panel "hdbet" and the demo model's classes were wiped."""
    widget = opened()
    ui, node = widget.ui, widget.logic.getParameterNode()
    choose(ui.modelComboBox, DEMO)
    check(ui.classesCheckableComboBox, "edema", "necrotic_core")
    check(ui.layersCheckableComboBox, items(ui.layersCheckableComboBox)[0])
    layer = items(ui.layersCheckableComboBox)[0]
    assert (node.modelName, node.classes, node.layers) == (DEMO, "edema,necrotic_core", layer)
    connected = widget.panel._parameterNode
    for _ in range(2):
        widget.exit()
        widget.enter()
    assert widget.panel._parameterNode is connected, "the GUI was connected again to the same node"
    assert (node.modelName, node.classes, node.layers) == (DEMO, "edema,necrotic_core", layer)
    assert ui.modelComboBox.currentText == DEMO
    assert checked(ui.classesCheckableComboBox) == ["edema", "necrotic_core"]
    assert checked(ui.layersCheckableComboBox) == [layer]
    assert ui.inputVolume2Selector.visible


def test_a_saved_scene_restores_model_classes_and_layers(opened, scene):
    """Save the scene, close it, load it again: the module shows what was saved."""
    widget = opened()
    ui, node = widget.ui, widget.logic.getParameterNode()
    choose(ui.modelComboBox, DEMO)
    check(ui.classesCheckableComboBox, "enhancing_rim")
    scene.SetSaveToXMLString(1)
    scene.Commit()
    saved = scene.GetSceneXMLString()
    scene.Clear(0)  # File / Close Scene: the module connects to a new parameter node
    assert ui.modelComboBox.currentText == "hdbet" and checked(ui.classesCheckableComboBox) == []
    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(saved)
    scene.Import()
    node = widget.logic.getParameterNode()
    assert (node.modelName, node.classes) == (DEMO, "enhancing_rim")
    assert ui.modelComboBox.currentText == DEMO
    assert checked(ui.classesCheckableComboBox) == ["enhancing_rim"]


def test_a_saved_scene_loaded_while_the_module_is_shown_shows_its_inputs_and_region(opened, scene):
    """The import fills the parameter node before its node references resolve: the panel shows
    them afterwards (inputs, region segment, ROI) and Apply follows."""
    widget = opened()
    ui = widget.ui
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    slicer.util.updateVolumeFromArray(volume, np.ones((4, 5, 6), np.float32))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "region")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    node = widget.logic.getParameterNode()
    node.inputVolume, node.regionSegmentation, node.regionSegmentID, node.regionROI = volume, segmentation, "a", roi
    assert ui.regionSegmentSelector.currentNode() is segmentation  # set from Python: the selector follows
    assert ui.regionSegmentSelector.currentSegmentID() == "a"
    scene.SetSaveToXMLString(1)
    scene.Commit()
    saved = scene.GetSceneXMLString()
    scene.Clear(0)
    assert not ui.applyButton.enabled
    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(saved)
    scene.Import()
    node = widget.logic.getParameterNode()
    assert node.inputVolume is not None and ui.inputVolumeSelector.currentNode() is node.inputVolume
    assert ui.regionSegmentSelector.currentNode() is node.regionSegmentation is not None
    assert ui.regionSegmentSelector.currentSegmentID() == "a"
    assert ui.regionROISelector.currentNode() is node.regionROI is not None
    assert ui.applyButton.enabled


def test_the_first_volume_that_is_not_a_heatmap_becomes_the_input(scene, opened):
    from SegGradCAMLib.mrml.outputs import OUTPUT_ATTRIBUTE

    heatmap = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "an earlier heatmap")
    heatmap.SetAttribute(OUTPUT_ATTRIBUTE, "true")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    widget = opened()
    assert widget.logic.getParameterNode().inputVolume is volume


def test_a_malformed_nnunet_folder_offers_no_choices_and_leaves_the_panel_usable(opened, scene, tmp_path):
    folder = nnunet_copy(tmp_path)
    (folder / "plans.json").write_text("{}")
    widget = opened()
    ui = widget.ui
    choose(ui.modelComboBox, from_path())
    ui.modelPathLineEdit.setCurrentPath(str(folder))
    assert items(ui.classesCheckableComboBox) == [] and widget.errors == []
    ui.inputVolumeSelector.setCurrentNode(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head"))
    assert ui.applyButton.enabled
    ui.applyButton.click()  # Apply says why, in one message
    assert "not a readable nnU-Net folder" in widget.errors[-1][0]
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled


def test_switching_the_model_takes_effect_and_drops_the_old_models_names(opened):
    """Defect: the panel's combo-box slot wrote the classes before the wrapper's own slot, and
    the wrapper's GUI refresh wrote the old model back into the combo box (it snapped back)."""
    widget = opened()
    ui, node = widget.ui, widget.logic.getParameterNode()
    check(ui.classesCheckableComboBox, "brain")
    assert node.classes == "brain" and not ui.inputVolume2Selector.visible
    choose(ui.modelComboBox, DEMO)
    assert node.modelName == DEMO and ui.modelComboBox.currentText == DEMO
    assert items(ui.classesCheckableComboBox) == DEMO_CLASSES
    assert node.classes == "" and ui.inputVolume2Selector.visible and not ui.inputVolume3Selector.visible
    assert items(ui.evaluationClassComboBox) == DEMO_CLASSES[1:]


def test_a_model_file_fills_classes_and_inputs_from_its_json_spec(opened):
    widget = opened()
    ui, node = widget.ui, widget.logic.getParameterNode()
    assert not ui.modelPathLineEdit.enabled and not ui.modelFolderButton.enabled
    choose(ui.modelComboBox, from_path())
    assert ui.modelPathLineEdit.enabled and ui.modelFolderButton.enabled
    ui.modelPathLineEdit.setCurrentPath(str(shipped_spec_path(DEMO)))
    assert node.modelPath == shipped_spec_path(DEMO)
    assert items(ui.classesCheckableComboBox) == DEMO_CLASSES and ui.inputVolume2Selector.visible


def test_a_model_folder_is_chosen_with_the_folder_button(opened):
    """The path's browse button opens a file dialog; nnU-Net folders need the folder button."""
    widget = opened()
    ui, node = widget.ui, widget.logic.getParameterNode()
    choose(ui.modelComboBox, from_path())
    folder = str(next(SHIPPED_MODELS.joinpath("demo-lesions-nnunet").rglob("plans.json")).parent)
    slicer_app_mock.QFileDialog.answer = folder
    try:
        ui.modelFolderButton.click()
    finally:
        slicer_app_mock.QFileDialog.answer = ""
    assert str(node.modelPath) == folder and ui.modelPathLineEdit.currentPath == folder
    assert "edema" in items(ui.classesCheckableComboBox)


# -- SlicerNNUnet's settings -----------------------------------------------------------


def nnunet_copy(root):
    """The shipped nnU-Net demo folder copied under ``root`` (results/<dataset>/<configuration>)."""
    shipped = next(SHIPPED_MODELS.joinpath("demo-lesions-nnunet").rglob("plans.json")).parent
    target = root / "Dataset001_Demo" / shipped.name
    shutil.copytree(shipped, target)
    return target


def test_slicer_nnunet_users_open_the_module_without_a_traceback(opened, tmp_path):
    """Defect: SlicerNNUnet stores its model path as ``{"_path": ...}``; ``Path(dict)`` raised
    in setup(). Its folders are offered when "From file or folder" is chosen, not before."""
    folder = nnunet_copy(tmp_path / "nnunet")
    slicer_app_mock.QSettings.values["SlicerNNUNet/Parameter"] = json.dumps(
        {"device": "cuda", "modelPath": {"_path": str(tmp_path / "nnunet")}}
    )
    widget = opened()
    ui = widget.ui
    assert widget.errors == []
    assert items(ui.modelPathLineEdit.comboBox()) == []  # nothing scanned at module open
    choose(ui.modelComboBox, from_path())
    assert items(ui.modelPathLineEdit.comboBox()) == [str(folder)]


@pytest.mark.parametrize(
    "stored", [{"modelPath": {"_path": "."}}, {"modelPath": {"_path": "./"}}, {"modelPath": 3}, "not json {"]
)
def test_slicer_nnunets_default_or_broken_setting_scans_nothing(opened, tmp_path, monkeypatch, stored):
    """SlicerNNUnet's default ``"."`` is Slicer's working folder (``/`` from the macOS Finder)."""
    nnunet_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    slicer_app_mock.QSettings.values["SlicerNNUNet/Parameter"] = (
        stored if isinstance(stored, str) else json.dumps(stored)
    )
    widget = opened()
    choose(widget.ui.modelComboBox, from_path())
    assert items(widget.ui.modelPathLineEdit.comboBox()) == [] and widget.errors == []


# -- runs: the panel is never stuck --------------------------------------------------------


def test_apply_runs_then_the_panel_is_back_to_apply(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    ui.applyButton.click()
    assert widget.errors == []
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert not ui.modelComboBox.enabled and not ui.inputVolumeSelector.enabled and not ui.evaluateButton.enabled
    run_to_end(widget)
    assert widget.errors == [], widget.errors
    assert ui.applyButton.text == "Apply" and ui.modelComboBox.enabled and ui.evaluateButton.enabled
    assert "heatmap(s)" in ui.statusLabel.text
    heatmap = widget.logic.getParameterNode().displayedHeatmap
    assert heatmap is not None
    ui.heatmapSelector.setCurrentNode(None)  # "None" in the heatmap selector hides the overlay
    foregrounds = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetForegroundVolumeID() for i in range(3)]
    assert foregrounds == [None] * 3


def test_after_deletion_insertion_the_panel_is_back_to_apply(opened, scene, small_case):
    """Defect: after an evaluation the button still read Cancel and the inputs stayed disabled."""
    widget = opened(python=sys.executable)
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    choose(ui.evaluationClassComboBox, "edema")
    ui.evaluateButton.click()
    assert ui.applyButton.text == "Cancel" and not ui.evaluateButton.enabled
    run_to_end(widget)
    assert widget.errors == [], widget.errors
    assert ui.applyButton.text == "Apply" and ui.evaluateButton.enabled and ui.inputVolumeSelector.enabled
    assert ui.statusLabel.text.startswith("Evaluated in")


def test_a_failed_evaluation_says_the_cases_own_reason(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    slicer.util.arrayFromVolume(ui.inputVolume2Selector.currentNode())[0, 0, 0] = np.nan
    choose(ui.evaluationClassComboBox, "edema")
    ui.evaluateButton.click()
    run_to_end(widget)
    assert "NaN" in ui.statusLabel.text and "failures.csv" not in ui.statusLabel.text, ui.statusLabel.text
    assert ui.applyButton.text == "Apply" and ui.evaluateButton.enabled


def test_a_failed_run_says_why_and_shows_the_workers_log(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    t1c = slicer.util.arrayFromVolume(ui.inputVolumeSelector.currentNode())
    t1c[0, 0, 0] = np.nan  # the worker refuses it with one line
    ui.applyButton.click()
    run_to_end(widget)
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled
    assert ui.statusLabel.text.startswith("Failed: ") and "NaN" in ui.statusLabel.text
    message, options = widget.errors[-1]
    assert "NaN" in message and "NaN" in options["detailedText"].splitlines()[-1]
    assert ui.showLogButton.visible
    ui.showLogButton.click()
    assert widget.errors[-1][1]["detailedText"] == options["detailedText"]


def test_cancel_kills_the_run_and_restores_the_panel(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    ui.applyButton.click()
    folder = widget.panel._run.folder
    ui.applyButton.click()  # Cancel
    assert widget.panel._run is None and ui.statusLabel.text == "Cancelled"
    assert ui.applyButton.text == "Apply" and ui.modelComboBox.enabled
    assert not folder.exists()
    assert str(folder.parent) == slicer.app.temporaryPath  # Slicer's temporary folder, not the system's


# -- installs --------------------------------------------------------------------------


class FakeInstallLogic:
    """FAKE install logic: says what it would install, records the panel while "installing"."""

    def __init__(self, panel_state, fail=None):
        self.panel_state, self.fail, self.installs = panel_state, fail, 0

    def describeInstall(self, key):
        return None if self.installs else f"Installing monai>=1.3 for {key}..."

    def ensureRequirements(self, key, confirmed=None):
        if self.installs:
            return
        self.installs += 1
        self.panel_state()  # while the confirmation is shown
        if self.fail:
            raise self.fail
        confirmed()
        self.panel_state()  # installing


def test_an_install_disables_apply_says_what_and_cannot_start_twice(opened, scene, small_case):
    seen = []
    install = FakeInstallLogic(lambda: seen.append(state()))
    widget = opened(python=sys.executable, installLogic=install)
    ui = widget.ui

    def state():
        ui.applyButton.click()  # a second click while installing (pip's output runs the event loop)
        return ui.applyButton.enabled, ui.modelComboBox.enabled, ui.statusLabel.text

    choose_demo_with_inputs(widget, scene, small_case)
    ui.applyButton.click()
    assert install.installs == 1
    assert seen == [(False, False, ""), (False, False, f"Installing monai>=1.3 for {DEMO}...")]
    assert ui.applyButton.text == "Cancel"  # then the run started, once
    ui.applyButton.click()


def test_a_failed_install_leaves_the_module_usable(opened, scene, small_case):
    from SegGradCAMLib.errors import SegGradCAMError

    failure = SegGradCAMError("pip could not install monai. Install it in Slicer's Python console.")
    widget = opened(python=sys.executable, installLogic=FakeInstallLogic(lambda: None, fail=failure))
    ui = widget.ui
    choose_demo_with_inputs(widget, scene, small_case)
    ui.applyButton.click()
    assert "pip could not install monai" in widget.errors[-1][0]
    assert widget.panel._run is None and ui.applyButton.text == "Apply" and ui.applyButton.enabled
    assert ui.modelComboBox.enabled and ui.statusLabel.text == ""


# -- reload, polish ------------------------------------------------------------------------


def test_reload_leaves_the_old_widget_unwired_and_one_error_class(opened):
    """Defect: cleanup() left the hidden old widget connected to the parameter node; reloading
    deepest modules first made SegGradCAMError a class the module's code no longer caught."""
    widget = opened()
    old_ui = widget.ui
    widget.reload()
    new = slicer.modules.SegGradCAMWidget
    assert new is not widget
    node = new.logic.getParameterNode()
    node.modelName = DEMO
    assert new.ui.modelComboBox.currentText == DEMO
    assert old_ui.modelComboBox.currentText == "hdbet"  # the old GUI is no longer written
    errors = sys.modules["SegGradCAMLib.errors"].SegGradCAMError
    assert sys.modules["SegGradCAMLib.mrml.widget"].SegGradCAMError is errors
    node.modelName = from_path()
    with pytest.raises(errors):
        new.logic.modelSource(node)
    node.modelName = DEMO
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(volume, np.ones((4, 8, 8), np.float32))
    node.inputVolume, node.inputVolume2 = volume, volume
    new.ui.applyButton.click()  # the new logic finds no PythonSlicer in this "Slicer": one message
    assert "PythonSlicer was not found" in new.errors[-1][0] and new.ui.applyButton.text == "Apply"


def test_device_choices_include_apples_mps(opened):
    widget = opened()
    assert items(widget.ui.deviceComboBox) == ["auto", "cpu", "cuda", "mps"]
    choose(widget.ui.deviceComboBox, "mps")
    assert widget.logic.getParameterNode().device == "mps"


def test_slicers_own_inferno_colour_table_is_used(scene):
    from SegGradCAMLib.mrml.outputs import SLICER_INFERNO_ID
    from SegGradCAMLib.mrml.runs import SegGradCAMSceneLogic

    logic = SegGradCAMSceneLogic(scene)
    made = logic.heatmapColorNode()  # a scene without Slicer's colour tables (slicer-core)
    assert made.GetID() != SLICER_INFERNO_ID and made.GetNumberOfColors() == 256
    # Slicer's colours logic adds Inferno.txt under this ID at startup (here: as a saved scene has it)
    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(f'<MRML><ColorTable id="{SLICER_INFERNO_ID}" name="Inferno" type="13"/></MRML>')
    scene.Import()
    inferno = scene.GetNodeByID(SLICER_INFERNO_ID)
    assert inferno is not None and logic.heatmapColorNode() is inferno


def test_help_links_the_documentation_and_contributors_match_the_extension(opened):
    import re

    opened()
    module = sys.modules["SegGradCAM"]
    parent = slicer_app_mock.ModuleParent()
    module.SegGradCAM(parent)
    assert module.DOCUMENTATION_URL in parent.helpText and module.DOCUMENTATION_URL.endswith("docs/slicer.md")
    assert os.path.exists(slicer_harness.ROOT / "docs" / "slicer.md")
    cmake = (slicer_harness.ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert parent.contributors == [re.search(r'EXTENSION_CONTRIBUTORS "([^"]+)"', cmake).group(1)]


# -- findings: a row clicked, Why here? ----------------------------------------------------


def slice_centres(views) -> list[list[float]]:
    """Where each slice view's centre is (RAS, mm)."""
    centres = []
    for logic in views.logics.values():
        matrix = logic.GetSliceNode().GetSliceToRAS()
        centres.append([matrix.GetElement(i, 3) for i in range(3)])
    return centres


def foregrounds(mrmlScene) -> list[str]:
    return [mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetForegroundVolumeID() for i in range(3)]


def test_findings_run_then_a_clicked_row_centres_the_views_on_its_finding(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui, node = widget.ui, widget.logic.getParameterNode()
    views = SliceViews(scene, size=(32, 32))
    choose_demo_with_inputs(widget, scene, small_case)
    ui.findingsCheckBox.checked = True
    assert node.findings
    ui.applyButton.click()
    assert "--findings" in widget.panel._run.worker.arguments and "--point" not in widget.panel._run.worker.arguments
    run_to_end(widget)
    assert widget.errors == [], widget.errors
    table = node.findingsTable
    rows = table.GetNumberOfRows()
    assert (
        rows >= 2 and ui.findingsTableView.mrmlTableNode() is table and ui.findingsTableSelector.currentNode() is table
    )
    assert f", {rows} finding(s) in " in ui.statusLabel.text
    view = ui.findingsTableView
    assert view.model().rowCount() == rows
    ui.findingsTableView.selectRow(1)  # the user clicks the second finding
    target = widget.logic.sceneLogic().findingAt(table, 1)
    assert ui.statusLabel.text == f"Finding {target.id} ({target.className})"
    assert node.displayedHeatmap is target.heatmapNode and target.heatmapNode.GetAttribute(FINDING_ATTRIBUTE)
    assert foregrounds(scene) == [target.heatmapNode.GetID()] * 3
    assert slice_centres(views) == [pytest.approx(target.centroid, abs=1e-4)] * 3
    volumes = [table.GetTable().GetValueByName(row, "volume (mL)").ToDouble() for row in range(rows)]
    column = [view.model().headerData(c, Qt.Horizontal) for c in range(view.model().columnCount())]
    view.sortByColumn(column.index("volume (mL)"), Qt.AscendingOrder)  # the user sorts by volume
    view.selectRow(0)  # the smallest finding, whatever its row in the table node
    smallest = widget.logic.sceneLogic().findingAt(table, int(np.argmin(volumes)))
    assert node.displayedHeatmap is smallest.heatmapNode and smallest.id != target.id
    assert slice_centres(views) == [pytest.approx(smallest.centroid, abs=1e-4)] * 3


def necrotic_core_centre(small_case_volume) -> tuple[float, float, float]:
    """RAS (mm) of the centre of the demo case's necrotic core, on the small case's grid."""
    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    centre = int(np.argwhere(case.labels > 0)[:, 0].mean())
    core = case.labels[centre - 5 : centre + 5] == demo_data.LABELS.index("necrotic_core")
    k, j, i = np.argwhere(core).mean(axis=0)
    matrix = vtk.vtkMatrix4x4()
    small_case_volume.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((i, j, k, 1.0))
    return (ras[0], ras[1], ras[2])


def test_why_here_explains_the_finding_at_the_point_placed_in_a_view(opened, scene, small_case):
    widget = opened(python=sys.executable)
    ui, node = widget.ui, widget.logic.getParameterNode()
    views = SliceViews(scene, size=(32, 32))
    choose_demo_with_inputs(widget, scene, small_case)
    ui.whyHereButton.click()
    assert widget.errors == [] and widget.panel._run is None  # nothing runs before the point
    points = node.whyHerePoint
    assert points is not None and points.GetName() == "Why here?" and ui.whyHerePointSelector.currentNode() is points
    application = slicer.app.applicationLogic()
    assert application.GetSelectionNode().GetActivePlaceNodeID() == points.GetID()
    assert application.GetInteractionNode().GetCurrentInteractionMode() == application.GetInteractionNode().Place
    assert ui.statusLabel.text == "Why here? Click the point in a slice view."
    centre = necrotic_core_centre(ui.inputVolumeSelector.currentNode())
    points.AddControlPointWorld(vtk.vtkVector3d(*centre))  # the user clicks in a slice view
    arguments = widget.panel._run.worker.arguments
    assert ui.applyButton.text == "Cancel" and "--findings" not in arguments
    assert [float(v) for v in arguments[arguments.index("--point") + 1].split(",")] == pytest.approx(centre)
    run_to_end(widget)
    assert widget.errors == [], widget.errors
    table = node.findingsTable
    chosen = widget.logic.sceneLogic().findingAt(table, 0)
    assert table.GetNumberOfRows() == 1 and chosen.className == "necrotic_core"
    assert re.search(
        rf"why here: finding {chosen.id} \(necrotic_core\), \d+\.\d mm from the point", ui.statusLabel.text
    )
    assert node.displayedHeatmap is chosen.heatmapNode and foregrounds(scene) == [chosen.heatmapNode.GetID()] * 3
    assert slice_centres(views) == [pytest.approx(chosen.centroid, abs=1e-4)] * 3
    assert points.GetNumberOfControlPoints() == 1  # the user's point is kept
    points.AddControlPointWorld(vtk.vtkVector3d(*centre))  # a point placed later, not after Why here?
    assert widget.panel._run is None
