"""The module's widget driven on the real .ui file (loaded by PySide6's QUiLoader, offscreen).

What is a MOCK here: ``slicer_app_mock`` (Slicer's application modules) and ``PythonQtShim``,
which gives PySide6 widgets the PythonQt spelling the module uses (``widget.visible = x``,
``comboBox.checkedIndexes()``). The panel's code (``SegGradCAMLib.mrml.widget``), the .ui
file and the model declarations are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SegGradCAM"


class PythonQtShim:
    """MOCK: a PySide6 widget seen through PythonQt's conventions (properties as attributes)."""

    PROPERTIES = {
        "visible": "setVisible",
        "enabled": "setEnabled",
        "text": "setText",
        "value": "setValue",
        "maximum": "setMaximum",
        "currentIndex": "setCurrentIndex",
    }

    def __init__(self, widget) -> None:
        object.__setattr__(self, "widget", widget)

    def __getattr__(self, name):
        widget = object.__getattribute__(self, "widget")
        if name == "visible":
            return not widget.isHidden()
        getters = {"enabled": "isEnabled", "text": "text", "currentIndex": "currentIndex", "value": "value"}
        if name in getters:
            return getattr(widget, getters[name])()
        return getattr(widget, name)

    def __setattr__(self, name, value) -> None:
        widget = object.__getattribute__(self, "widget")
        getattr(widget, self.PROPERTIES[name])(value)

    def checkedIndexes(self):
        from PySide6.QtCore import Qt

        model = self.widget.model()
        return [
            model.index(row, 0)
            for row in range(model.rowCount())
            if model.data(model.index(row, 0), Qt.CheckStateRole) == Qt.Checked.value
        ]

    def setCheckState(self, index, state) -> None:
        from PySide6.QtCore import Qt

        self.widget.model().setData(index, Qt.Checked.value if state else Qt.Unchecked.value, Qt.CheckStateRole)


@pytest.fixture()
def widget():
    from conftest import load_slicer_ui
    from PySide6.QtCore import QObject

    root, app = load_slicer_ui()
    sys.path[:0] = [str(ROOT / "Testing"), str(MODULE_DIR)]
    import slicer_app_mock

    slicer_app_mock.install()
    sys.modules["qt"].Qt = SimpleNamespace(Checked=True, Unchecked=False)
    import SegGradCAM

    from SegGradCAMLib.mrml.widget import SegGradCAMPanel

    ui = SimpleNamespace(
        **{obj.objectName(): PythonQtShim(obj) for obj in root.findChildren(QObject) if obj.objectName()}
    )
    module_widget = SegGradCAMPanel(ui, SegGradCAM.SegGradCAMLogic())  # what the module widget's setup creates
    combo = root.findChild(QObject, "modelComboBox")
    combo.clear()
    combo.addItems(SegGradCAM.MODEL_CHOICES)
    module_widget._parameterNode = SimpleNamespace(
        modelName="hdbet",
        modelPath=None,
        layers="end_conv_2_bn",
        classes="brain",
        inputVolume="t1c",
        inputVolume2="flair",
        inputVolume3=None,
        inputVolume4=None,
    )
    yield SegGradCAM, module_widget, root
    root.deleteLater()
    del app


def test_switching_model_shows_the_new_models_inputs_and_classes(widget):
    """The combo box's slot runs while the parameter node still holds the previous model (PythonQt
    runs slots in connection order, and the parameter node's GUI connector was connected after)."""
    SegGradCAM, module_widget, root = widget
    module_widget.updateModelChoices()  # as shown for hdbet
    assert module_widget.ui.inputVolume2Selector.visible is False
    demo = SegGradCAM.MODEL_CHOICES.index(SegGradCAM.DEMO_MODEL)
    module_widget.updateModelChoices(demo)  # the parameter node still says "hdbet"
    ui, node = module_widget.ui, module_widget._parameterNode
    assert node.modelName == "hdbet"
    assert ui.inputVolume2Selector.visible and not ui.inputVolume3Selector.visible
    classes = ui.classesCheckableComboBox
    assert [classes.itemText(i) for i in range(classes.count())] == [
        "background",
        "edema",
        "enhancing_rim",
        "necrotic_core",
    ]
    evaluation = ui.evaluationClassComboBox
    assert [evaluation.itemText(i) for i in range(evaluation.count())] == ["edema", "enhancing_rim", "necrotic_core"]
    # what Apply will send: no class or layer of the previous model, the demo model's two inputs
    assert node.classes == "" and node.layers == ""
    node.modelName = SegGradCAM.DEMO_MODEL  # now the GUI connector writes the parameter node
    channels = module_widget.logic.modelInfo(node.modelName)["in_channels"]
    assert module_widget.logic.inputVolumes(node, channels) == ["t1c", "flair"]


def test_a_model_file_fills_the_inputs_and_classes_from_its_json_spec(widget):
    """'From file or folder': the JSON spec's labels and input channels, read without torch."""
    SegGradCAM, module_widget, root = widget
    from SegGradCAMLib.models.declarations import shipped_spec_path

    spec = str(shipped_spec_path(SegGradCAM.DEMO_MODEL))  # a JSON spec file like any user's
    module_widget.onModelPathChanged(spec)  # the combo box still shows hdbet: nothing read from the path
    assert module_widget.ui.inputVolume2Selector.visible is False
    from_path = SegGradCAM.MODEL_CHOICES.index(SegGradCAM.MODEL_FROM_PATH)
    module_widget.ui.modelComboBox.setCurrentIndex(from_path)
    module_widget.onModelPathChanged(spec)
    classes = module_widget.ui.classesCheckableComboBox
    assert module_widget.ui.inputVolume2Selector.visible
    assert [classes.itemText(i) for i in range(classes.count())][1:] == ["edema", "enhancing_rim", "necrotic_core"]
