"""The module panel's Findings section in 3D Slicer: the findings table in a table view (a row
selected: the slice views centre on that finding and show its heatmap) and the "Why here?" button
(the user clicks a point in a slice view; a run on the same inputs and choices explains the
finding there).

:class:`FindingsPanel` is a part of :class:`~.widget.SegGradCAMPanel` (its ``ui``, ``logic``,
parameter node and worker runs); the module logic does the work (:mod:`.module_logic`, on the
scene logic's :mod:`.findings`). No computation here, and no torch.
"""

from __future__ import annotations

import slicer
from slicer.i18n import tr as _

from .findings import FINDINGS_TABLE_ATTRIBUTE


class FindingsPanel:
    """The Findings section's slots of :class:`~.widget.SegGradCAMPanel`."""

    _placingOn = None  # the point list whose next placed point starts a "Why here?" run

    def setupFindings(self) -> None:
        """Offer only findings tables; connect the table view's selection and the Why here? button."""
        self.ui.findingsTableSelector.addAttribute("vtkMRMLTableNode", FINDINGS_TABLE_ATTRIBUTE, "true")
        self.ui.findingsTableView.connect("selectionChanged()", self.onFindingSelected)
        self.ui.whyHereButton.connect("clicked(bool)", self.onWhyHereButton)

    def showFindingsTable(self) -> None:
        """The parameter node's findings table in the table view."""
        table = self._parameterNode.findingsTable
        if self.ui.findingsTableView.mrmlTableNode() is not table:
            self.ui.findingsTableView.setMRMLTableNode(table)

    def onFindingSelected(self) -> None:
        """A row selected in the table view: its finding shown (the view's row mapped to the table's
        row through the view's sorting, as qMRMLTableView's own actions do)."""
        view = self.ui.findingsTableView
        index = view.selectionModel().currentIndex()
        if self._parameterNode is None or not index.isValid():
            return
        row = view.tableModel().mrmlTableRowIndex(view.sortFilterProxyModel().mapToSource(index))
        target = self.logic.showFinding(self._parameterNode, row)
        if target is not None:
            self.ui.statusLabel.text = _("Finding {id} ({name})").format(id=target.id, name=target.className)

    def onWhyHereButton(self) -> None:
        """Ask for a point: the next point placed in a slice view starts the run (ignored while a run
        or an installation goes on)."""
        if self._run is not None or self._installing or self._parameterNode is None:
            return
        with slicer.util.tryWithErrorDisplay(_("SegGradCAM could not start."), waitCursor=False):
            self._watchPlacing(self.logic.startPlacingWhyHerePoint(self._parameterNode))
            self.ui.statusLabel.text = _("Why here? Click the point in a slice view.")

    def _watchPlacing(self, pointList) -> None:
        """Observe ``pointList``'s next placed point (None: observe none)."""
        event = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
        if self._placingOn is not None:
            self.removeObserver(self._placingOn, event, self.onWhyHerePointPlaced)
        self._placingOn = pointList
        if pointList is not None:
            self.addObserver(pointList, event, self.onWhyHerePointPlaced)

    def onWhyHerePointPlaced(self, caller, event=None) -> None:
        """The point is placed: explain the finding there (the same inputs and choices as Apply)."""
        self._watchPlacing(None)
        point = self.logic.sceneLogic().pointOf(caller)
        if point is not None and self._run is None:
            self.startWorkerRun("explain", lambda: self.logic.startRun(self._parameterNode, point=point))

    def findingsStatus(self, outputs) -> str:
        """What a finished run found, for the status line: its findings, or a Why here? run's choice."""
        findings = outputs.findings
        if findings is None:
            return ""
        if findings.point is None:
            return _(", {count} finding(s)").format(count=findings.tableNode.GetNumberOfRows())
        target = self.logic.sceneLogic().findingAt(findings.tableNode, 0)
        return _(", why here: finding {id} ({name}), {distance:.1f} mm from the point").format(
            id=target.id, name=target.className, distance=findings.point["distance_mm"]
        )
