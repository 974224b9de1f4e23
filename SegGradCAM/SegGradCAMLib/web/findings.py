"""The browser viewer's findings and overlays (``explain --findings``, ``--point``): the list of
the shown run's findings beside the views; a click on a row centres the slice views on that
finding and shows its own heatmap; "Why here?" (a click on a slice view runs ``--point`` there
and shows the finding chosen); the probability, entropy and fold-disagreement maps as overlays.
The nodes are the scene logic's (:mod:`~SegGradCAMLib.mrml.findings`), made with the run's
other outputs and removed with them; their files passed :func:`~.case.served_file` first
(:func:`~.case.output_volumes` names them)."""

from __future__ import annotations

from typing import Any

from ..errors import SegGradCAMError
from ..mrml.findings import FINDING_ATTRIBUTE, MAP_ATTRIBUTE
from ..reports import ExplainReport
from .controls import CONTROLS, Choice, shown, shown_failures
from .views import SliceClicks

HEATMAP, FINDING = "heatmap", "finding"  # overlays: the class heatmap chosen above, the finding chosen
WHY_HERE_HINT = "Why here? Click a point on a slice view: the finding there is explained."
MAP_MEANINGS = {  # a map's kind -> what its 0..1 means
    "probability": "the network's output (softmax, or sigmoid for region models), not a calibrated likelihood",
    "entropy": "the predictive entropy over the classes divided by its maximum (0: one class certain, "
    "1: every class equally likely)",
    "fold_disagreement": "the fraction of the folds whose label differs from the ensemble's",
}


def finding_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One row of the findings list (findings.json's ``entry``): class, volume (mL), mean
    probability and each channel's occlusion reliance, as text."""
    probability = entry.get("probability_mean")
    occlusion = (entry.get("reliance") or {}).get("occlusion") or {}
    return {
        "id": entry["id"],
        "label": entry["class"],
        "volume": f"{entry['volume_ml']:.2f}",
        "probability": "—" if probability is None else f"{probability:.2f}",
        "reliance": " · ".join(f"{name} {value:.2f}" for name, value in occlusion.items() if name != "all"),
    }


class FindingsPanel:
    """The findings and overlays of what ``web`` (a :class:`~.app.SegGradCAMWeb`) shows. What the
    page may choose is kept here (the page's state is the client's): the findings by id, the one
    chosen, and the overlays offered (value -> title)."""

    def __init__(self, web) -> None:
        self.web, self.state = web, web.state  # the state: where shown_failures shows a failure
        self.findings: dict[int, dict[str, Any]] = {}
        self.finding: int | None = None
        self.nodes = None  # the shown outputs' findings nodes (a FindingOutputs), or None
        self.overlays: dict[str, str] = {}
        self.clear()
        SliceClicks(web.app.view_manager.get_views(), self._clicked)
        self.state.change("why_here")(self._why_here_switched)

    def clear(self) -> None:
        """No findings or overlays (the outputs are gone, their nodes with them)."""
        self.findings, self.nodes = {}, None
        self.state.finding_rows = []
        self._choose(None)

    def offer(self, outputs, report: ExplainReport, folder) -> None:
        """Offer the findings and maps of the ``outputs`` now shown (``report``, files in ``folder``:
        their nodes made here for an opened folder, whose run did not make them)."""
        if outputs.findings is None and (report.findings is not None or report.uncertainty):
            outputs.findings = self.web.logic.addFindings(report, folder, outputs, self.web.shown.volumes[0])
        self.nodes = outputs.findings
        self.findings = {entry["id"]: entry for entry in (report.findings or {}).get("findings", [])}
        self.state.finding_rows = [finding_row(entry) for entry in self.findings.values()]
        self._choose(None)

    def show_point(self) -> None:
        """After a ``--point`` run: its finding shown, and where the point lies said."""
        point = self.nodes.point if self.nodes is not None else None
        if point is None:
            return
        self.select(point["finding"])
        where = "lies in" if point["distance_mm"] == 0 else f"is {point['distance_mm']:.1f} mm from"
        r, a, s = point["ras"]
        self.state.message = f"Why here? ({r:.0f}, {a:.0f}, {s:.0f}) {where} finding {point['finding']}."

    def _choose(self, finding: int | None) -> None:
        """``finding`` (or none) chosen: the overlays offered, its map the one shown."""
        self.finding = finding
        chosen = {FINDING: f"finding {finding}, {self.findings[finding]['class']}"} if finding else {}
        maps = {name: name for name in self.nodes.mapNodes} if self.nodes is not None else {}
        self.overlays = {HEATMAP: "heatmap (chosen above)", **chosen, **maps}
        self.state.update(
            finding=finding,
            overlay=FINDING if finding else HEATMAP,
            overlay_items=[{"title": title, "value": value} for value, title in self.overlays.items()],
        )

    @shown_failures
    def select(self, finding: Any) -> None:
        """Show the finding ``finding`` (a row's id): its map as the overlay, every slice view
        centred on its centroid."""
        if not isinstance(finding, int) or isinstance(finding, bool) or finding not in self.findings:
            raise SegGradCAMError(f"Finding must be one of the listed findings; got {shown(finding)}.")
        self._choose(finding)
        row = list(self.findings).index(finding)
        self.web.logic.jumpToFinding(self.web.logic.findingAt(self.nodes.tableNode, row))
        self.web._show_heatmap()

    def overlay(self, heatmap):
        """The node to show over the background: the class ``heatmap`` node (or None), or the
        overlay chosen on the page (the chosen finding's map of the heatmap's layer, else of its
        first layer)."""
        overlay = self.web.control("overlay", Choice("Overlay", list(self.overlays), "the listed overlays"))
        if overlay == HEATMAP:
            return heatmap
        if overlay != FINDING:
            return self.nodes.mapNodes[overlay]
        layers = self.findings[self.finding]["layers"]
        layer = heatmap.GetAttribute("SegGradCAM.Layer") if heatmap is not None else None
        return self.nodes.heatmapNodes[(self.finding, layer if layer in layers else next(iter(layers)))]

    def legend(self, node, method: str) -> str:
        """What the overlay ``node``'s 0..1 means: a map's kind (and class); a heatmap's class (a
        finding's id and file), method, layer, raw maximum and faithfulness verdict."""
        label, layer = node.GetAttribute("SegGradCAM.Class"), node.GetAttribute("SegGradCAM.Layer")
        kind = node.GetAttribute(MAP_ATTRIBUTE)
        if kind:
            return f"{kind.replace('_', ' ')}{f' of {label}' if label else ''}: {MAP_MEANINGS.get(kind, '')}"
        finding = node.GetAttribute(FINDING_ATTRIBUTE)
        if finding:
            label = f"finding {finding}, {label} ({self.findings[int(finding)]['layers'][layer]['file']})"
        score = node.GetAttribute("SegGradCAM.Faithfulness")
        raw = float(node.GetAttribute("SegGradCAM.RawMax"))
        return f"{label} — {method} on {layer}; 1.0 = raw maximum {raw:.4g}" + (
            f". Faithfulness: {score}" if score else ""
        )

    def _why_here_switched(self, why_here, **_) -> None:
        """The "Why here?" switch moved: on, the page says what to do next; off, that hint goes."""
        if why_here is True:
            self.state.message = WHY_HERE_HINT
        elif self.state.message == WHY_HERE_HINT:
            self.state.message = ""

    def _clicked(self, ras: list[float]) -> None:
        """A click on a slice view: with "Why here?" on, a ``--point`` run there with the page's choices."""
        if not self.web.control("why_here", CONTROLS["why_here"]):
            return
        state = self.state
        with state:
            self.web.start_run(state.model, state.classes, state.layers, state.method, state.faithfulness, point=ras)
