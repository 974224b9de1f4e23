"""The browser viewer's slice views on the server: the value of a volume under a point, and left
clicks on a slice view as RAS points (the page's mouse events reach each view's VTK interactor)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import slicer
import vtk
from trame_slicer.views import SliceView

CLICK_PIXELS = 4  # a press and release further apart than this is a drag (window/level), not a click


def value_at(node, ras: Sequence[float]) -> float | None:
    """The voxel value of a volume node at a RAS point, or None outside it."""
    matrix = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(matrix)
    ijk = [int(round(v)) for v in matrix.MultiplyPoint([*ras, 1.0])[:3]]
    array = slicer.util.arrayFromVolume(node)  # (K, J, I)
    if not all(0 <= ijk[axis] < array.shape[2 - axis] for axis in range(3)):
        return None
    return float(np.asarray(array[ijk[2], ijk[1], ijk[0]]))


class SliceClicks:
    """Calls ``on_click(ras)`` for each left click (press and release at one place) on one of the
    slice ``views``, with the clicked RAS point (mm)."""

    def __init__(self, views: Sequence, on_click: Callable[[list[float]], None]) -> None:
        self.on_click = on_click
        self.pressed: tuple[int, int] | None = None
        for view in views:
            if isinstance(view, SliceView):
                interactor = view.interactor()
                interactor.AddObserver("LeftButtonPressEvent", self._press, 10.0)  # before Slicer's style
                interactor.AddObserver("LeftButtonReleaseEvent", lambda i, _e, v=view: self._release(i, v), 10.0)

    def _press(self, interactor, _event) -> None:
        self.pressed = interactor.GetEventPosition()

    def _release(self, interactor, view) -> None:
        pressed, self.pressed = self.pressed, None
        x, y = interactor.GetEventPosition()
        if pressed is None or max(abs(x - pressed[0]), abs(y - pressed[1])) > CLICK_PIXELS:
            return
        ras = view.get_view_node().GetXYToRAS().MultiplyPoint([float(x), float(y), 0.0, 1.0])[:3]
        self.on_click([float(v) for v in ras])
