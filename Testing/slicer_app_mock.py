"""MOCK of the parts of the 3D Slicer *application* that cannot exist outside it.

The ``slicer-core`` wheel gives the real MRML classes (and ``slicer.util``), but not the Qt
GUI application: ``qt``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``
and ``slicer.i18n`` live only inside Slicer. These stand-ins let a test import
``SegGradCAM.py`` and drive its widget (``Testing/slicer_harness.py``). Each follows the real
source named in its docstring (Slicer 5.10, ``Base/Python/slicer/``):

- ``slicer.parameterNodeWrapper``: :func:`parameterNodeWrapper` stores typed values in a real
  ``vtkMRMLScriptedModuleNode`` and connects widgets as ``wrapper.py`` and ``guiConnectors.py``
  do (see :func:`_connectGui`);
- ``slicer.ScriptedLoadableModule``: the logic's singleton parameter node and the widget's
  ``resourcePath``/``onReload`` as ``ScriptedLoadableModule.py``;
- ``qt``: PySide6's classes, except ``QTimer`` (never fires by itself: the harness's ``tick()``
  runs it), ``QSettings`` (a dict) and ``QFileDialog`` (answers what a test sets).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import types
import typing


class ModuleParent:
    """Stands in for the qSlicerScriptedLoadableModule a Slicer module receives."""

    def __init__(self):
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""


# -- qt --------------------------------------------------------------------------------


class QTimer:
    """MOCK: records its slot; ``fire()`` runs it once while started (the harness's tick)."""

    def __init__(self):
        self.interval, self.slot, self.active = 0, None, False

    def setInterval(self, msec):
        self.interval = msec

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        if self.active and self.slot is not None:
            self.slot()


class QSettings:
    """MOCK: Slicer's settings as one dict shared by every instance (``values``)."""

    values: dict = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value):
        self.values[key] = value


class QFileDialog:
    """MOCK: the folder a test wants "chosen" (``answer``; "" = cancelled), and the calls seen."""

    answer = ""
    calls: list = []

    @classmethod
    def getExistingDirectory(cls, *args):
        cls.calls.append(args)
        return cls.answer


def _qtModule() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QSettings, qt.QFileDialog = QTimer, QSettings, QFileDialog

    def fromPySide(name):
        from PySide6 import QtCore, QtWidgets

        for module in (QtCore, QtWidgets):
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module 'qt' has no attribute {name!r}")

    qt.__getattr__ = fromPySide  # type: ignore[attr-defined]
    return qt


# -- slicer.parameterNodeWrapper ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Choice:
    """validators.py: the value must be one of ``choices``."""

    choices: tuple

    def __init__(self, choices):
        object.__setattr__(self, "choices", tuple(choices))

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value {value!r} is not in {self.choices}")


@dataclasses.dataclass(frozen=True)
class WithinRange:
    """validators.py: ``minimum <= value <= maximum``."""

    minimum: float
    maximum: float

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value {value!r} is not within [{self.minimum}, {self.maximum}]")


class _Serializer:
    """serializers.py: how one parameter type is stored in a vtkMRMLScriptedModuleNode."""

    def __init__(self, datatype, validators):
        self.datatype, self.validators = datatype, validators
        self.isNode = isinstance(datatype, type) and datatype.__name__.startswith("vtkMRML")

    def default(self):
        return None if self.isNode else {str: "", bool: False, float: 0.0, pathlib.Path: pathlib.Path()}[self.datatype]

    def isIn(self, node, name) -> bool:
        return self.isNode or node.HasParameter(name)

    def write(self, node, name, value) -> None:
        for validator in self.validators:
            validator.validate(value)
        if self.isNode:
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            node.SetParameter(name, str(value))

    def read(self, node, name):
        if self.isNode:
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if self.datatype is bool:
            return text == "True"
        return self.datatype(text)


def parameterNodeWrapper(classtype):
    """wrapper.py ``_processClass``: typed properties over a parameter node, defaults written at
    construction, ``connectGui``/``disconnectGui``, and the node's observer methods. Values are
    read from the node each time (the real wrapper caches them and refreshes the cache on the
    node's ModifiedEvent: the same values outside a NodeModify block)."""
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {}
    for name, hint in hints.items():
        datatype, extras = (hint.__origin__, hint.__metadata__) if hasattr(hint, "__metadata__") else (hint, ())
        serializer = _Serializer(datatype, [v for v in extras if isinstance(v, (Choice, WithinRange))])
        default = getattr(classtype, name) if hasattr(classtype, name) else serializer.default()
        parameters[name] = (serializer, default, extras)
        setattr(classtype, name, _property(name))

    def init(self, parameterNode):
        self.parameterNode = parameterNode
        self._parameterGUIs, self._nextTag, self._updatingGUI = {}, 0, False
        for name, (serializer, default, _) in parameters.items():
            if not serializer.isIn(parameterNode, name):
                serializer.write(parameterNode, name, default)

    classtype.allParameters = parameters
    classtype.__init__ = init
    classtype.getValue = lambda self, name: parameters[name][0].read(self.parameterNode, name)
    classtype.setValue = lambda self, name, value: parameters[name][0].write(self.parameterNode, name, value)
    classtype.connectGui = _connectGui
    classtype.disconnectGui = _disconnectGui
    classtype.StartModify = lambda self: self.parameterNode.StartModify()
    classtype.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
    classtype.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
        event, callback, priority
    )
    classtype.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    classtype.Modified = lambda self: self.parameterNode.Modified()
    return classtype


def _property(name):
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def _connectGui(self, gui):
    """wrapper.py ``_connectGui`` then ``_connectParametersToGui``: every widget of ``gui`` (an
    object of widget attributes, in their order) with a ``SlicerParameterName`` property gets a
    connector; each connector is created (a combo box is cleared and refilled with its choices),
    written from the node and then connected, one after the other; the node's ModifiedEvent then
    writes every connector of every connected GUI (firing the widgets' signals)."""
    import vtk

    widgets = {}
    for widget in gui.__dict__.values():
        name = widget.property("SlicerParameterName")
        if name:
            widgets[name] = widget
    connectors = {name: _connector(widget, self.allParameters[name]) for name, widget in widgets.items()}
    tag = self._nextTag
    self._nextTag += 1
    self._parameterGUIs[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))
        connector.connect(_guiToParameter(self, name, connector))
    self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _updateGuiFromParameterNode(self))
    return tag


def _guiToParameter(self, name, connector):
    """wrapper.py ``_makeGuiToParamCallback`` (the signal's arguments are ignored)."""
    import slicer

    def callback(*signalArguments):
        with slicer.util.NodeModify(self.parameterNode):
            if not self._updatingGUI:
                self.setValue(name, connector.read())

    return callback


def _updateGuiFromParameterNode(self):
    """wrapper.py ``_updateGUIFromParameterNode``."""
    import slicer

    if self._updatingGUI:
        return
    try:
        self._updatingGUI = True
        with slicer.util.NodeModify(self.parameterNode):
            for connectors in self._parameterGUIs.values():
                for name, connector in connectors.items():
                    connector.write(self.getValue(name))
    finally:
        self._updatingGUI = False


def _disconnectGui(self, tag):
    """wrapper.py ``_disconnectGui``: the connectors' callbacks are removed (not the observer)."""
    for connector in self._parameterGUIs.pop(tag, {}).values():
        connector.disconnect()


class _Connector:
    """guiConnectors.py: one widget <-> one parameter. ``signal``, ``read`` and ``write`` are
    those of the real connector for the widget's exact class (PySide6 spelling)."""

    def __init__(self, widget, signal, read, write):
        self.widget, self.signal, self.read, self.write = widget, signal, read, write
        self.slot = None

    def connect(self, slot):
        self.slot = slot
        self.signal.connect(slot)

    def disconnect(self):
        if self.slot is not None:
            self.signal.disconnect(self.slot)
            self.slot = None


def _connector(shim, parameter) -> _Connector:
    """guiConnectors.py ``createGuiConnector``: chosen by the widget's exact class and the type."""
    serializer, _, extras = parameter
    widget = getattr(shim, "widget", shim)
    kind, datatype = type(widget).__name__, serializer.datatype
    if kind == "QCheckBox" and datatype is bool:
        return _Connector(widget, widget.stateChanged, widget.isChecked, widget.setChecked)
    if kind == "QComboBox":
        choices = next(v.choices for v in extras if isinstance(v, Choice))
        widget.clear()  # QComboBoxToStringableConnector.__init__
        for choice in choices:
            widget.addItem(str(choice))

        def writeChoice(value):
            if value not in choices:
                raise ValueError(f"Unable to find value {value} in choices {choices}")
            widget.setCurrentIndex(choices.index(value))

        return _Connector(widget, widget.currentIndexChanged, lambda: choices[widget.currentIndex()], writeChoice)
    if kind == "ctkSliderWidget" and datatype is float:
        for bound in (v for v in extras if isinstance(v, WithinRange)):
            widget.setMinimum(bound.minimum)
            widget.setMaximum(bound.maximum)
        return _Connector(widget, widget.valueChanged, widget.value, widget.setValue)
    if kind == "ctkPathLineEdit" and datatype is pathlib.Path:
        return _Connector(
            widget,
            widget.currentPathChanged,
            lambda: pathlib.Path(widget.currentPath()),
            lambda value: widget.setCurrentPath(str(value)),
        )
    if kind == "qMRMLNodeComboBox" and serializer.isNode:
        widget.nodeTypes = [datatype.__name__]
        return _Connector(widget, widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{kind}'")


# -- slicer.ScriptedLoadableModule -----------------------------------------------------


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    """ScriptedLoadableModule.py: the module's parameter node is a singleton of the scene."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            return node
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleWidget:
    """ScriptedLoadableModule.py: ``parent`` gives the layout; ``onReload`` calls
    ``slicer.util.reloadScriptedModule`` (the harness gives one)."""

    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.layout = parent.layout() if parent is not None else None

    def setup(self):
        pass

    def resourcePath(self, filename):
        return str(pathlib.Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

    def onReload(self):
        import slicer

        slicer.util.reloadScriptedModule(self.moduleName)


class ScriptedLoadableModuleTest:
    pass


def install() -> None:
    """Register the mocked application modules in ``sys.modules``."""
    import slicer

    sys.modules["qt"] = _qtModule()

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, cls.__name__, cls)
    sys.modules["slicer.ScriptedLoadableModule"] = scripted

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    wrapper.Choice = Choice
    wrapper.WithinRange = WithinRange
    sys.modules["slicer.parameterNodeWrapper"] = wrapper

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n
