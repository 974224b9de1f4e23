"""The 3D Slicer module: file lists, .ui file, extension metadata, and import without torch."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from SegGradCAMLib.selection import METHOD_CHOICES

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SegGradCAM"
MODULE_FILE = MODULE_DIR / "SegGradCAM.py"
PANEL_FILES = [MODULE_DIR / "SegGradCAMLib" / "mrml" / name for name in ("widget.py", "findings_panel.py")]  # behaviour
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SegGradCAM.ui"
MANUALLY_SYNCED_FIELDS = {
    "layers",
    "classes",
    "regionSegmentation",
    "regionSegmentID",
}  # no connector for these widgets


def cmake_list(name: str) -> list[str]:
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({name}\s+(.*?)\)", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def files_on_disk(folder: str, pattern: str) -> set[str]:
    return {
        str(p.relative_to(MODULE_DIR))
        for p in (MODULE_DIR / folder).rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_cmake_lists_every_library_file():
    listed = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    assert "${MODULE_NAME}.py" in listed
    on_disk = files_on_disk("SegGradCAMLib", "*.py")
    assert on_disk - listed == set(), "Python files missing from SegGradCAM/CMakeLists.txt"
    assert {f for f in listed if f != "${MODULE_NAME}.py"} - on_disk == set(), "listed files that do not exist"


def test_cmake_lists_every_resource():
    listed = set(cmake_list("MODULE_PYTHON_RESOURCES"))
    on_disk = files_on_disk("Resources", "*")
    assert on_disk - listed == set(), "resources missing from SegGradCAM/CMakeLists.txt"
    assert listed - on_disk == set(), "listed resources that do not exist"
    assert {"Resources/UI/SegGradCAM.ui", "Resources/Icons/SegGradCAM.png"} <= listed


def test_cmake_registers_module_generic_and_self_tests():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\)\s+.*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert f"set({key} " in top
    assert "set(EXTENSION_DEPENDS PyTorch)" in top and "add_subdirectory(SegGradCAM)" in top
    assert "include(${Slicer_EXTENSION_CPACK})" in top


def test_extensions_index_entry():
    entry = json.loads((ROOT / "SegGradCAM.json").read_text())
    allowed = {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "dicom_support_rule",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["build_dependencies"] == ["PyTorch"] and 1 <= entry["tier"] <= 5


def test_icon_is_128_pixels():
    from PIL import Image

    assert Image.open(MODULE_DIR / "Resources" / "Icons" / "SegGradCAM.png").size == (128, 128)


def parameter_fields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegGradCAMParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def module_text() -> str:
    """The module file and its panel's code (which the module's widget creates)."""
    return MODULE_FILE.read_text() + "".join(path.read_text() for path in PANEL_FILES)


def widget_names_used_by_module() -> set[str]:
    text = module_text()
    names = set(re.findall(r"self\.ui\.(\w+)", text))
    for prefix, suffix in re.findall(r'getattr\(self\.ui, f"(\w+)\{i\}(\w+)"\)', text):
        names |= {f"{prefix}{i}{suffix}" for i in range(2, 5)}
    return names


@pytest.fixture(scope="module")
def loaded_ui():
    """The .ui file loaded by Qt's own QUiLoader (offscreen); ctk/qMRML widgets become their base class."""
    from conftest import load_slicer_ui
    from PySide6.QtCore import QObject

    widget, app = load_slicer_ui()
    objects = {obj.objectName(): obj for obj in widget.findChildren(QObject) if obj.objectName()}
    yield widget, objects
    del app


def test_every_widget_the_module_uses_exists(loaded_ui):
    _, objects = loaded_ui
    used = widget_names_used_by_module()
    assert {"applyButton", "progressBar", "modelFolderButton", "heatmapSelector", "inputVolume4Selector"} <= used
    assert {"findingsTableView", "whyHereButton", "findingsTableSelector"} <= used
    assert used - set(objects) == set()


def test_parameter_names_match_the_parameter_node(loaded_ui):
    _, objects = loaded_ui
    bound = {
        str(obj.property("SlicerParameterName")) for obj in objects.values() if obj.property("SlicerParameterName")
    }
    fields = parameter_fields()
    assert bound - fields == set(), "SlicerParameterName without a parameter node field"
    assert fields - bound == MANUALLY_SYNCED_FIELDS, "parameter node fields without a widget"
    assert all(re.search(rf"(node|_parameterNode)\.{name}\b", module_text()) for name in MANUALLY_SYNCED_FIELDS)


def ui_widget_classes() -> dict[str, str]:
    import xml.etree.ElementTree as ET

    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).iter("widget")}


def parameter_annotations() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegGradCAMParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def can_bind(widget_class: str, annotation: str) -> bool:
    """The widget/type pairs Slicer's parameterNodeWrapper GUI connectors accept (exact widget class)."""
    if widget_class == "qMRMLNodeComboBox":
        return annotation.startswith("vtkMRML")
    if widget_class == "QComboBox":
        return "Choice(" in annotation
    if widget_class == "QCheckBox":
        return annotation == "bool"
    if widget_class in ("ctkSliderWidget", "QDoubleSpinBox"):
        return annotation.startswith("Annotated[float") and "WithinRange(" in annotation
    if widget_class == "ctkPathLineEdit":
        return annotation == "pathlib.Path"
    if widget_class == "QLineEdit":
        return annotation == "str"
    return False


def test_every_binding_is_one_slicer_can_make(loaded_ui):
    _, objects = loaded_ui
    classes, annotations = ui_widget_classes(), parameter_annotations()
    for name, obj in objects.items():
        field = obj.property("SlicerParameterName")
        if field:
            assert can_bind(classes[name], annotations[str(field)]), (name, classes[name], annotations[str(field)])


def test_choice_widgets_offer_the_parameter_choices(loaded_ui):
    _, objects = loaded_ui
    method = objects["methodComboBox"]
    assert [method.itemText(i) for i in range(method.count())] == list(METHOD_CHOICES)  # auto first
    device = objects["deviceComboBox"]
    tree = ast.parse(MODULE_FILE.read_text())
    declared = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DEVICE_CHOICES")
    assert (
        [device.itemText(i) for i in range(device.count())]
        == ast.literal_eval(declared)
        == [
            "auto",
            "cpu",
            "cuda",
            "mps",
        ]
    )


IMPORT_WITHOUT_TORCH = """
import importlib.abc, sys
class BlockHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "monai", "captum"):
            raise ImportError(name + " is not installed (blocked by the test)")
sys.meta_path.insert(0, BlockHeavy())
import slicer  # before Testing/ is on the path: slicer-core's package would take Testing/slicer/ in
sys.path[:0] = [{testing!r}, {module_dir!r}]
import slicer_app_mock
slicer_app_mock.install()
import SegGradCAM
parent = slicer_app_mock.ModuleParent()
SegGradCAM.SegGradCAM(parent)
logic = SegGradCAM.SegGradCAMLogic()
print(parent.title, parent.categories, logic.modelNames()[:2], logic.modelInfo("hdbet")["layers"][-1])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "captum")))
"""


def test_module_imports_and_lists_models_without_torch():
    code = IMPORT_WITHOUT_TORCH.format(testing=str(ROOT / "Testing"), module_dir=str(MODULE_DIR))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, heavy = proc.stdout.strip().splitlines()[-2:]
    assert first == "SegGradCAM ['Segmentation'] ['hdbet', 'hdbet-fold1'] end_conv_2_bn"
    assert heavy == "[]"


@pytest.mark.parametrize("name", ["hdbet", "deepbet", "demo-lesions-unet2d"])
def test_registry_declarations_match_the_loaded_models(name):
    from SegGradCAMLib.models import REGISTRY, load_model

    loaded = load_model(name, trust=True)
    info = REGISTRY[name].info
    assert info["labels"] == loaded.spec.labels
    assert info["in_channels"] == loaded.spec.in_channels
    assert info["layers"] == loaded.layers
