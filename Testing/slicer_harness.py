"""The SegGradCAM module's widget on a real ``slicer-core`` scene, driven as 3D Slicer drives it.

``module_widget(scene)`` returns a ``SegGradCAMWidget`` set up on the module's real .ui file and
a real MRML scene, with ``enter()``, ``exit()``, ``tick()`` (runs the panel's poll timer once),
``ui.<name>`` (the .ui's widgets), ``errors`` (what error dialogs would show), ``reload()``
(the developer's Reload button) and ``close()`` (the module closed; MOCKs removed).

What is a MOCK here, and the real source each follows (Slicer 5.10, CTK):

- the application modules of ``slicer_app_mock`` (``qt``, ``parameterNodeWrapper``,
  ``ScriptedLoadableModule``; see there);
- the C++ widgets of the .ui file, given to Qt's own QUiLoader as PySide6 classes:
  ``qMRMLNodeComboBox`` (emits ``currentNodeChanged`` when its node changes, drops a node removed
  from the scene, selects the first node when ``noneEnabled`` is false, as
  qMRMLNodeComboBox.cxx), ``ctkPathLineEdit`` (``currentPathChanged`` on a new path; its history
  is a QComboBox), ``ctkCheckableComboBox`` (``checkedIndexesChanged`` when a check state
  changes), ``ctkSliderWidget`` (``valueChanged(double)``, clamped to its range),
  ``qMRMLSegmentSelectorWidget``, ``ctkCollapsibleButton``, ``qMRMLWidget`` (passes the scene
  to its qMRML children, as the .ui's ``mrmlSceneChanged`` connections do) and ``qMRMLTableView``
  (a QTableView of a table node's cells behind a sort proxy, ``selectionChanged()`` when its
  selection changes, as qMRMLTableView.cxx and qMRMLTableModel.cxx); Qt's own widgets
  (QComboBox, QCheckBox, QPushButton, QTableView, ...) are real;
- :class:`PythonQtShim`: PythonQt's spelling (``widget.visible = x``, ``connect("sig(int)", f)``);
- :class:`ModulePanel`: the qSlicerScriptedLoadableModuleWidget that holds the module's widget:
  ``enter``/``exit`` with ``isEntered``, and ``reload()`` used by the real
  ``slicer.util.reloadScriptedModule`` (which execs the module file afresh, calls the old
  widget's ``cleanup()`` and empties the layout);
- ``slicer.app`` (version 5.10, a temporary folder as its temporary path and home, cursors, the
  application logic's selection and interaction nodes) and ``slicer.util.errorDisplay`` (records
  the message instead of a dialog).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "SegGradCAM" / "SegGradCAM.py"
UI_FILE = ROOT / "SegGradCAM" / "Resources" / "UI" / "SegGradCAM.ui"


def _widgetClasses():
    """The MOCK C++ widgets, as PySide6 classes named as in the .ui file."""
    from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
    from PySide6.QtGui import QStandardItem, QStandardItemModel
    from PySide6.QtWidgets import QComboBox, QTableView, QWidget

    class qMRMLWidget(QWidget):
        def setMRMLScene(self, scene):
            self.scene = scene
            for child in self.findChildren(QWidget):
                if child is not self and hasattr(child, "setMRMLScene") and not isinstance(child, qMRMLWidget):
                    child.setMRMLScene(scene)

        def mrmlScene(self):
            return getattr(self, "scene", None)

    class qMRMLNodeComboBox(QWidget):
        currentNodeChanged = Signal(object)

        def __init__(self, parent=None):
            super().__init__(parent)
            self.scene, self.node, self.nodeTypes, self.attributes, self.tags = None, None, [], {}, []

        def _candidates(self):
            if self.scene is None:
                return []
            nodes = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
            return [
                n
                for n in nodes
                if any(n.IsA(t) for t in self.nodeTypes)
                and all(n.GetAttribute(k) == v for k, v in self.attributes.items())
                and not n.GetHideFromEditors()
            ]

        def setMRMLScene(self, scene):
            self.scene = scene
            self.nodeTypes = self.nodeTypes or list(self.property("nodeTypes") or [])
            self.tags = [
                scene.AddObserver(scene.NodeAddedEvent, lambda caller, event: self._selectFirstIfNeeded()),
                scene.AddObserver(scene.NodeRemovedEvent, lambda caller, event: self._dropRemoved()),
            ]
            self._selectFirstIfNeeded()

        def release(self):
            """Stop observing the scene (the harness's close: no cycle left for the garbage collector)."""
            if self.scene is not None:
                for tag in self.tags:
                    self.scene.RemoveObserver(tag)
            self.scene, self.node = None, None

        def _selectFirstIfNeeded(self):
            if self.node is None and not self.property("noneEnabled") and self._candidates():
                self.setCurrentNode(self._candidates()[0])

        def _dropRemoved(self):
            if self.node is not None and not self.scene.IsNodePresent(self.node):
                self.setCurrentNode(None)

        def addAttribute(self, nodeType, name, value):
            self.attributes[name] = value

        def currentNode(self):
            return self.node

        def setCurrentNode(self, node):
            if node is not self.node:
                self.node = node
                self.currentNodeChanged.emit(node)

        def nodes(self):
            return self._candidates()

    class qMRMLSegmentSelectorWidget(qMRMLNodeComboBox):
        currentSegmentChanged = Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            self.nodeTypes, self.segmentId = ["vtkMRMLSegmentationNode"], ""

        def setCurrentSegmentID(self, segmentId):
            if segmentId != self.segmentId:
                self.segmentId = segmentId
                self.currentSegmentChanged.emit(segmentId)

        def currentSegmentID(self):
            return self.segmentId

    class ctkPathLineEdit(QWidget):
        currentPathChanged = Signal(str)
        Dirs, Files, Drives, NoDot, NoDotDot, Readable = 0x1, 0x2, 0x4, 0x2000, 0x4000, 0x10

        def __init__(self, parent=None):
            super().__init__(parent)
            self.path, self.history = "", QComboBox(self)
            self.history.setEditable(True)

        def comboBox(self):
            return self.history

        def currentPath(self):
            return self.path

        def setCurrentPath(self, path):
            if path != self.path:
                self.path = path
                self.history.setEditText(path)
                self.currentPathChanged.emit(path)

    class ctkCheckableComboBox(QComboBox):
        checkedIndexesChanged = Signal()

        def __init__(self, parent=None):
            super().__init__(parent)
            self.model().dataChanged.connect(self._onDataChanged)

        def _onDataChanged(self, topLeft, bottomRight, roles=()):
            if not roles or Qt.CheckStateRole in roles:
                self.checkedIndexesChanged.emit()

        def setCheckState(self, index, state):
            value = Qt.Checked if state in (True, Qt.Checked) else Qt.Unchecked
            self.model().setData(index, value.value, Qt.CheckStateRole)

        def checkedIndexes(self):
            model = self.model()
            rows = range(model.rowCount())
            return [
                model.index(r, 0) for r in rows if model.data(model.index(r, 0), Qt.CheckStateRole) == Qt.Checked.value
            ]

    class ctkSliderWidget(QWidget):
        valueChanged = Signal(float)

        def __init__(self, parent=None):
            super().__init__(parent)
            self.current, self.low, self.high = 0.0, 0.0, 99.0

        def setMinimum(self, value):
            self.low = value

        def setMaximum(self, value):
            self.high = value

        def value(self):
            return self.current

        def setValue(self, value):
            value = min(max(float(value), self.low), self.high)
            if value != self.current:
                self.current = value
                self.valueChanged.emit(value)

    class ctkCollapsibleButton(QWidget):
        pass

    class qMRMLTableModel(QStandardItemModel):
        """The table node's cells as text, its column names as headers (a table node's default)."""

        def fill(self, tableNode):
            self.clear()
            table = tableNode.GetTable() if tableNode is not None else None
            columns = table.GetNumberOfColumns() if table is not None else 0
            self.setHorizontalHeaderLabels([table.GetColumnName(c) for c in range(columns)])
            for row in range(table.GetNumberOfRows() if columns else 0):
                self.appendRow([QStandardItem(table.GetValue(row, c).ToString()) for c in range(columns)])

        def mrmlTableRowIndex(self, index):
            return index.row()

    class qMRMLTableView(QTableView):
        mrmlSelectionChanged = Signal()  # C++: selectionChanged(), beside QTableView's virtual slot
        SIGNALS = {"selectionChanged": "mrmlSelectionChanged"}

        def __init__(self, parent=None):
            super().__init__(parent)
            self.node, self.cells, self.proxy = None, qMRMLTableModel(self), QSortFilterProxyModel(self)
            self.proxy.setSourceModel(self.cells)
            self.setModel(self.proxy)
            self.setSortingEnabled(True)

        def setMRMLTableNode(self, tableNode):
            self.node = tableNode
            self.cells.fill(tableNode)
            self.mrmlSelectionChanged.emit()

        def mrmlTableNode(self):
            return self.node

        def tableModel(self):
            return self.cells

        def sortFilterProxyModel(self):
            return self.proxy

        def selectionChanged(self, selected, deselected):
            super().selectionChanged(selected, deselected)
            self.mrmlSelectionChanged.emit()

    return [
        qMRMLWidget,
        qMRMLNodeComboBox,
        qMRMLSegmentSelectorWidget,
        ctkPathLineEdit,
        ctkCheckableComboBox,
        ctkSliderWidget,
        ctkCollapsibleButton,
        qMRMLTableView,
    ]


class PythonQtShim:
    """MOCK: a PySide6 widget seen through PythonQt's conventions (properties as attributes,
    signals connected by their C++ signature)."""

    GETTERS = {
        "visible": lambda w: not w.isHidden(),
        "enabled": lambda w: w.isEnabled(),
        "text": lambda w: w.text(),
        "value": lambda w: w.value(),
        "maximum": lambda w: w.maximum(),
        "currentIndex": lambda w: w.currentIndex(),
        "currentText": lambda w: w.currentText(),
        "checked": lambda w: w.isChecked(),
        "currentPath": lambda w: w.currentPath(),
        "toolTip": lambda w: w.toolTip(),
        "filters": lambda w: w.property("filters"),
    }
    SETTERS = {
        "visible": "setVisible",
        "enabled": "setEnabled",
        "text": "setText",
        "value": "setValue",
        "maximum": "setMaximum",
        "currentIndex": "setCurrentIndex",
        "checked": "setChecked",
        "currentPath": "setCurrentPath",
        "toolTip": "setToolTip",
    }

    def __init__(self, widget) -> None:
        object.__setattr__(self, "widget", widget)

    def __getattr__(self, name):
        widget = object.__getattribute__(self, "widget")
        if name in self.GETTERS:
            return self.GETTERS[name](widget)
        return getattr(widget, name)

    def __setattr__(self, name, value) -> None:
        widget = object.__getattribute__(self, "widget")
        if name == "filters":
            widget.setProperty("filters", value)
            return
        getattr(widget, self.SETTERS[name])(value)

    def connect(self, signature: str, slot) -> None:
        name = signature.split("(")[0]
        getattr(self.widget, getattr(self.widget, "SIGNALS", {}).get(name, name)).connect(slot)


def loadUI(path):
    """MOCK of ``slicer.util.loadUI``: Qt's QUiLoader with the MOCK C++ widgets registered."""
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    _quietSceneConnections()
    loader = QUiLoader()
    for cls in _WIDGET_CLASSES:
        loader.registerCustomWidget(cls)
    file = QFile(str(path))
    assert file.open(QFile.ReadOnly), f"cannot open {path}"
    widget = loader.load(file)
    file.close()
    assert widget is not None, f"QUiLoader could not load {path}"
    return widget


def _quietSceneConnections():
    """The .ui's ``mrmlSceneChanged(vtkMRMLScene*)`` connections cannot be made with PySide6
    (no such C++ type): Qt's warnings about them are dropped; ``qMRMLWidget.setMRMLScene``
    passes the scene on instead."""
    from PySide6.QtCore import qInstallMessageHandler

    previous = []

    def handler(mode, context, message):
        if "mrmlSceneChanged" in message or "(sender name:" in message or "(receiver name:" in message:
            return
        if previous and previous[0] is not None:
            previous[0](mode, context, message)
        else:
            sys.stderr.write(message + "\n")

    previous.append(qInstallMessageHandler(handler))


def childWidgetVariables(widget):
    """``slicer.util.childWidgetVariables``: every named child, in ``findChildren`` order."""
    from PySide6.QtCore import QObject

    ui = types.SimpleNamespace()
    for child in widget.findChildren(QObject):
        if child.objectName():
            setattr(ui, child.objectName(), PythonQtShim(child))
    return ui


class ModulePanel:
    """MOCK of the qSlicerScriptedLoadableModuleWidget holding the module's widget."""

    def __init__(self, scene):
        from PySide6.QtWidgets import QVBoxLayout, QWidget

        self.scene, self.isEntered = scene, False
        self.container = QWidget()
        QVBoxLayout(self.container)
        self.module = None
        self.widget = None

    def layout(self):
        return self.container.layout()

    def reload(self):
        """What ``widget.parent.reload()`` does at the end of ``reloadScriptedModule``: a new
        widget of the freshly executed module, set up (and entered if the module was shown)."""
        self.module = sys.modules["SegGradCAM"]
        self.create(logic=None)
        if self.isEntered:
            self.widget.enter()

    def create(self, logic):
        import slicer

        widget = self.module.SegGradCAMWidget(self, logic=logic)
        widget.setup()
        original_enter, original_exit = widget.enter, widget.exit

        def enter():
            self.isEntered = True
            original_enter()

        def exit():
            self.isEntered = False
            original_exit()

        widget.enter, widget.exit = enter, exit
        widget.tick = lambda: widget.panel._timer.fire()
        widget.errors = _ERRORS
        widget.reload = widget.onReload
        widget.close = close
        widget.harness = self
        self.widget = widget
        slicer.modules.SegGradCAMWidget = widget
        return widget


_ERRORS: list = []
_SHOWN: list = []  # charts and layouts the module asked Slicer to show
_WIDGET_CLASSES: list = []
_SAVED: dict = {}
_TEMPORARY: list = []  # the MOCK application's temporary folders, removed by close()


def scene_with_slice_views():
    """A real MRML scene with the slice composite nodes of Slicer's three slice views."""
    import slicer

    scene = slicer.vtkMRMLScene()
    for name in ("Red", "Yellow", "Green"):
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", f"SliceComposite{name}")
    return scene


def load_module():
    """Execute SegGradCAM.py afresh as the module ``SegGradCAM`` (as Slicer loads it)."""
    spec = importlib.util.spec_from_file_location("SegGradCAM", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["SegGradCAM"] = module
    spec.loader.exec_module(module)
    return module


def install(scene) -> None:
    """Install the MOCKs around ``scene``; :func:`close` removes them."""
    import slicer
    import slicer_app_mock
    from PySide6.QtWidgets import QApplication

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    application = QApplication.instance() or QApplication([])
    if not _WIDGET_CLASSES:
        _WIDGET_CLASSES.extend(_widgetClasses())
    slicer_app_mock.install()
    for name in ("app", "mrmlScene", "modules"):
        _SAVED.setdefault(name, getattr(slicer, name, None))
    _SAVED.setdefault("library", {k: v for k, v in sys.modules.items() if k.split(".")[0] == "SegGradCAMLib"})
    for name in ("loadUI", "childWidgetVariables", "errorDisplay"):
        _SAVED.setdefault(f"util.{name}", getattr(slicer.util, name))
    _ERRORS.clear()
    temporary = Path(tempfile.mkdtemp(prefix="SegGradCAM-slicer-app-"))
    _TEMPORARY.append(temporary)
    selection = scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    interaction = scene.AddNewNodeByClass("vtkMRMLInteractionNode")
    slicer.app = types.SimpleNamespace(
        majorVersion=5,
        minorVersion=10,
        temporaryPath=str(temporary),
        slicerHome=str(temporary),
        setOverrideCursor=lambda cursor: None,
        restoreOverrideCursor=lambda: None,
        processEvents=application.processEvents,
        testingEnabled=lambda: False,
        layoutManager=lambda: types.SimpleNamespace(setLayout=_SHOWN.append),
        applicationLogic=lambda: types.SimpleNamespace(
            GetSelectionNode=lambda: selection,
            GetInteractionNode=lambda: interaction,
            PropagateTableSelection=lambda: None,
        ),
    )
    slicer.mrmlScene = scene
    slicer.util.loadUI = loadUI
    slicer.util.childWidgetVariables = childWidgetVariables
    slicer.util.errorDisplay = lambda text, **kwargs: _ERRORS.append((text, kwargs))


def close() -> None:
    """The module closed: its widget cleaned up, the MOCK widgets' scene observers removed, every
    MOCK removed from ``slicer``, the MOCK application's temporary folder removed, and the garbage
    collected now (not inside a later test's VTK
    callback, where freeing a scene and its Qt widgets can crash the process)."""
    import gc

    import slicer

    widget = getattr(getattr(slicer, "modules", None), "SegGradCAMWidget", None)
    if widget is not None:
        widget.cleanup()
        for child in widget.harness.container.findChildren(_WIDGET_CLASSES[1]):
            child.release()
    if "library" in _SAVED:  # a reload's fresh library forgotten: other tests keep their classes
        library = _SAVED.pop("library")
        for name in [k for k in sys.modules if k.split(".")[0] == "SegGradCAMLib"]:
            del sys.modules[name]
        sys.modules.update(library)
    for name, value in _SAVED.items():
        owner, attribute = (slicer.util, name[5:]) if name.startswith("util.") else (slicer, name)
        if value is None:
            if hasattr(owner, attribute):
                delattr(owner, attribute)
        else:
            setattr(owner, attribute, value)
    _SAVED.clear()
    while _TEMPORARY:
        shutil.rmtree(_TEMPORARY.pop(), ignore_errors=True)
    gc.collect()


def module_widget(scene, **logic_options):
    """A ``SegGradCAMWidget`` set up on ``scene`` (not yet entered), as Slicer creates it when
    the module is first shown. ``logic_options`` (``python``, ``installLogic``): given to the
    module's logic, which is then injected into the widget."""
    import slicer

    install(scene)
    panel = ModulePanel(scene)
    panel.module = load_module()
    slicer.modules = types.SimpleNamespace(
        seggradcam=types.SimpleNamespace(path=str(MODULE_FILE), widgetRepresentation=lambda: panel.container),
        plots=types.SimpleNamespace(logic=lambda: types.SimpleNamespace(ShowChartInLayout=_SHOWN.append)),
    )
    return panel.create(panel.module.SegGradCAMLogic(**logic_options) if logic_options else None)
