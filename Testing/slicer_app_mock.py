"""MOCK of the parts of the 3D Slicer *application* that cannot exist outside it.

The ``slicer-core`` wheel gives the real MRML classes (and ``slicer.util``), but not the Qt
GUI application: ``qt``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``
and ``slicer.i18n`` live only inside Slicer. These stand-ins let a test import
``SegGradCAM.py`` and build its Module and Logic objects; they do nothing else. The
widget itself is checked statically (``Testing/slicer/test_slicer_module.py``), and for real
by the module's own self-test inside Slicer.
"""

from __future__ import annotations

import sys
import types


class ModuleParent:
    """Stands in for the qSlicerScriptedLoadableModule a Slicer module receives."""

    def __init__(self):
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""


class _QTimer:
    def setInterval(self, msec):
        self.interval = msec

    def connect(self, signal, slot):
        self.slot = slot


def install() -> None:
    """Register the mocked application modules in ``sys.modules``."""
    import slicer

    qt = types.ModuleType("qt")
    qt.QTimer = _QTimer
    sys.modules["qt"] = qt

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest:
        pass

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, cls.__name__, cls)
    sys.modules["slicer.ScriptedLoadableModule"] = scripted

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    sys.modules["slicer.parameterNodeWrapper"] = wrapper

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n
