"""``seggradcam web``: the browser viewer, a trame-slicer application.

Slicer's own slice views and 3D view (rendered on the server, streamed as images) over an MRML
scene, driven by the same :class:`~SegGradCAMLib.mrml.runs.SegGradCAMSceneLogic` as the
3D Slicer module: runs go through the worker process and its progress events, outputs become the
same label map, segmentation and heatmap nodes with the input's geometry, shown with the same
colour tables. One scene and one set of controls per server: every browser tab shares them, and
one run goes at a time (no other volume opens meanwhile: a run's outputs belong to its inputs).
Only the server's own page may connect (:mod:`.access`); what it sends is checked (:mod:`.controls`).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import slicer
from trame.app import TrameApp
from trame.app.file_upload import ClientFile
from trame.decorators import change
from trame_server.utils.asynchronous import create_task
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from ..errors import SegGradCAMError
from ..models.nnunet import find_nnunet_folders
from ..models.declarations import SHIPPED_MODELS
from ..models.registry import declared_facts, list_models
from ..mrml.runs import SegGradCAMSceneLogic
from ..reports import EXPLAIN_FILE, ExplainReport
from ..selection import METHOD_CHOICES
from ..volumes.files import check_files, check_no_itk_sibling
from .access import PageAccess
from .case import Shown, dicom_download, output_files, output_volumes, sample_files, sample_names, served_file
from .controls import CONTROLS, Choice, heatmap_index, shown_failures
from .findings import FindingsPanel
from .page import build_page, initial_state, quad_layout
from .uploads import MAX_DISK_MB, WEB_MAX_VOXELS, UploadArea, UploadedFile
from .views import value_at

DOWNLOAD_TYPES = {".nrrd": "application/octet-stream", ".png": "image/png", ".json": "application/json"}


def model_choices(model_dirs: Sequence[Path]) -> dict[str, str]:
    """Title -> ``--model`` value: the installed registry, the shipped nnU-Net, and the nnU-Net
    folders under ``model_dirs`` (the server's ``--models``; the page never sends a path)."""
    choices = {f"{entry['name']}": entry["name"] for entry in list_models() if entry["installed"]}
    for root in [SHIPPED_MODELS, *model_dirs]:
        for folder in find_nnunet_folders(root):
            choices[f"{folder.parent.name}/{folder.name}"] = str(folder)
    return choices


def run_choices(model: str | None) -> tuple[list[str], list[str]]:
    """The classes and layers offered for the ``--model`` value ``model`` (what it declares)."""
    facts = declared_facts(model) if model else None
    labels = [name for i, name in enumerate(facts.labels) if i or name.lower() != "background"] if facts else []
    return ["all", *labels], ["auto", *(facts.layers if facts else [])]


class SegGradCAMWeb(TrameApp):
    """The viewer: controls in a side drawer, four views, a status line."""

    def __init__(
        self,
        server=None,
        workdir: Path | None = None,
        model_dirs: Sequence[Path] = (),
        trust: bool = False,
        max_upload_mb: float = 512,
        max_disk_mb: float = MAX_DISK_MB,
        max_voxels: int = WEB_MAX_VOXELS,
        host: str = "127.0.0.1",
        allowed_origins: Sequence[str] = (),
        encoder: str | None = None,
        python: str | None = None,
    ):
        super().__init__(server)
        PageAccess(host, allowed_origins).bind(self.server)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="seggradcam-web-"))
        self.uploads = UploadArea(
            self.workdir / "uploads", max_upload_mb=max_upload_mb, max_disk_mb=max_disk_mb, max_voxels=max_voxels
        )
        self.trust = trust
        self.models = model_choices(model_dirs)
        self.app = SlicerApp()
        self.scene = self.app.scene
        register_rca_factories(self.app.view_manager, self.server, rca_encoder=encoder)
        self.layout = LayoutManager(self.scene, self.app.view_manager, self.server)
        self.layout.register_layout("quad", quad_layout())
        self.layout.set_layout("quad")
        for view in self.app.view_manager.get_views():
            view.render_window().SetMultiSamples(0)  # software OpenGL: multisampling costs 3-4x per frame
        self.logic = SegGradCAMSceneLogic(self.scene, python=python)
        self.shown = Shown([])
        self.run = None
        self._runs = 0
        self.good = initial_state(list(self.models), sample_names())  # the last good value of each control
        self.state.update(self.good)
        self.findings = FindingsPanel(self)
        build_page(self)
        self.ctrl.on_client_connected.add(self._fit_views_soon)
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._on_cursor)
        self._on_model(self.state.model)

    # -- volumes ---------------------------------------------------------------------------

    def load_case(self, paths: Sequence[Path], title: str, own: Path | None = None) -> list:
        """Load volume files as the case's channels (the first is the background), in place of the
        case shown (its nodes and the server's files of it removed). ``own``: the server's folder
        of these files, removed with them (also when they are refused). Each file is first checked
        as the volume reader checks it (declared size against --max-voxels, bytes promised)."""
        nodes: list = []
        try:
            self._check_no_run()
            check_files([str(path) for path in paths], self.uploads.max_voxels)
            check_no_itk_sibling([str(path) for path in paths])  # Slicer's reader is ITK's
            for path in paths:
                loaded = self.app.io_manager.load_volumes(str(path))
                if not loaded:
                    raise SegGradCAMError(f"{Path(path).name} could not be read as a volume.")
                nodes.append(loaded[0])
        except BaseException:
            Shown(nodes, own).remove(self.logic)
            raise
        self.shown.remove(self.logic)
        self.shown = Shown(nodes, own)
        self.findings.clear()
        self.logic.showLabels(None)
        background = nodes[0]
        display = background.GetDisplayNode()
        low, high = background.GetImageData().GetScalarRange()
        self.state.update(
            range_min=float(low),
            range_max=float(high),
            bg_window=float(display.GetWindow()),
            bg_level=float(display.GetLevel()),
            case_title=f"{title} ({len(nodes)} channel(s))",
            heat_items=[],
            heat=None,
            legend="",
            downloads=[],
        )
        self.logic.showHeatmap(None, background)
        self.app.display_manager.reset_views()
        return nodes

    def _check_no_run(self) -> None:
        """No other volume while a run goes: its outputs belong to the inputs it was started on."""
        if self.run is not None:
            raise SegGradCAMError("A run is going: cancel it (or let it end) before opening another volume.")

    def open_output_folder(self, folder: Path) -> None:
        """A folder ``seggradcam explain`` wrote: its inputs as the background when they still
        exist, then the segmentation and heatmaps as the same nodes a run adds."""
        served_file(folder, EXPLAIN_FILE)
        report = ExplainReport.read(folder)
        output_files(report, folder)  # inside the folder and present, before anything is loaded
        check_files([str(folder / name) for name in output_volumes(report)], self.uploads.max_voxels)
        inputs = [Path(p) for p in report.inputs]
        if inputs and all(p.is_file() for p in inputs):
            self.load_case(inputs, folder.name)
        else:
            self.load_case([folder / report.segmentation], f"{folder.name}: segmentation only")
            self.state.message = (
                f"The inputs named in {folder.name}/explain.json are gone; showing the "
                "segmentation alone (on its own grid) with the heatmaps."
            )
        outputs = self.logic.addOutputs(report, folder, self.shown.volumes[0], f"web|{folder}")
        self.show_outputs(outputs, report, folder, f"web|{folder}", owned=False)

    # -- runs ---------------------------------------------------------------------------------

    @shown_failures
    def start_run(
        self, model: str, classes: str, layers: str, method: str, faithfulness: bool, findings=False, point=None
    ) -> None:
        """Run with the choices the page showed when Run was clicked (checked against the server's
        lists, never trusted: the page never sends a path); ``point``: a clicked RAS point (``--point``)."""
        if self.run is not None:
            return
        self.state.error = self.state.message = ""
        if not self.shown.volumes:
            raise SegGradCAMError("Open a volume first (a sample or an upload).")
        model = Choice("Model", list(self.models), "the offered models")(model)
        class_names, layer_names = run_choices(self.models[model])
        self.run = self.logic.startRun(
            self.shown.volumes,
            self.models[model],
            classes=Choice("Classes", class_names)(classes),
            layers=Choice("Layers", layer_names)(layers),
            method=Choice("Method", METHOD_CHOICES)(method),
            trust=self.trust,
            faithfulness=CONTROLS["faithfulness"](faithfulness),
            findings=CONTROLS["findings"](findings),
            point=point,
            dicomSeries=[str(folder) for folder in self.shown.dicom.series] if self.shown.dicom else (),
        )
        self.state.update(running=True, progress=0, progress_text="starting the worker")
        create_task(self._follow(self.run))

    @shown_failures
    async def _follow(self, run) -> None:
        """Poll the worker (never blocking the server's loop) and add its outputs when it ends (a
        failure of the polling ends the run and is shown)."""
        try:
            while not run.finished:
                self.logic.pollRun(run)
                if run.progress:
                    p = run.progress
                    left = "" if p.get("eta_s") is None else f", {p['eta_s']:.0f} s left"
                    with self.state:
                        self.state.progress = round(100 * p["done"] / max(p["total"], 1))
                        self.state.progress_text = f"{p['stage']} {p['done']}/{p['total']}{left}"
                await asyncio.sleep(0.2)
        except BaseException:
            self.cancel_run()
            raise
        if self.run is not run:  # cancelled
            return
        self.run = None
        with self.state:
            self.state.running = False
            self.state.progress_text = "failed"  # until the outputs are shown
            self._finish(run)

    @shown_failures
    def _finish(self, run) -> None:
        """Show a finished run's outputs on its inputs (a copy of its folder kept for downloads)."""
        self._runs += 1
        kept = self.workdir / "outputs" / f"run{self._runs}"
        if run.outFolder.is_dir():
            shutil.copytree(run.outFolder, kept)  # the run's own folder goes now
        try:
            outputs = self.logic.finishRun(run)
        except BaseException:
            shutil.rmtree(kept, ignore_errors=True)
            raise
        self.show_outputs(outputs, ExplainReport.read(kept), kept, run.runKey, owned=True)
        self.state.progress, self.state.progress_text = 100, f"done in {time.perf_counter() - run.started:.1f} s"

    @shown_failures
    def cancel_run(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            self.logic.cancelRun(run)
            self.state.update(running=False, progress=0, progress_text="Cancelled", message="Cancelled.")

    # -- display --------------------------------------------------------------------------------

    def show_outputs(self, outputs, report: ExplainReport, folder: Path, run_key: str, owned: bool) -> None:
        """Offer the run's heatmaps (class / layer), show the first over its segmentation (in place
        of the outputs shown before; ``run_key`` tags the nodes, ``owned``: the folder is the server's)."""
        self.shown.replace_outputs(self.logic, outputs, report, folder, run_key, owned)
        outputs.segmentationNode.GetDisplayNode().SetVisibility2D(False)  # 2D: the label layer, outline or fill
        outputs.segmentationNode.CreateClosedSurfaceRepresentation()  # 3D: the segments' surfaces
        items = [{"title": f"{label} / {layer}", "value": i} for i, (label, layer) in enumerate(outputs.heatmapNodes)]
        self.findings.offer(outputs, report, folder)
        files = [*output_files(report, folder), *dicom_download(self.shown.dicom, report, folder)]
        self.shown.files = tuple(files)
        self.state.update(heat_items=items, heat=0 if items else None, downloads=files)
        self._show_segmentation()
        self._show_heatmap()
        self.app.display_manager.reset_views()  # the 3D view onto the new surfaces
        self.findings.show_point()

    def control(self, name: str, check=None):
        """The page's value of the control ``name``, checked (by ``check``, else its check in
        :data:`~.controls.CONTROLS`); a bad one is put back to the last good one, and said."""
        try:
            self.good[name] = (check or CONTROLS[name])(self.state[name])
        except SegGradCAMError as error:
            self.state.error = str(error)
            self.state[name] = self.good[name]
        return self.good[name]

    def _heatmap_node(self):
        nodes = list(self.shown.outputs.heatmapNodes.values()) if self.shown.outputs else []
        index = self.control("heat", heatmap_index(len(nodes)))
        return self.findings.overlay(None if index is None else nodes[index])

    @change("heat", "overlay", "show_heatmap", "opacity", "threshold")
    @shown_failures
    def _show_heatmap(self, **_) -> None:
        node = self._heatmap_node()
        if not self.shown.volumes:
            return
        self.logic.showHeatmap(
            node,
            self.shown.volumes[0],
            opacity=self.control("opacity"),
            threshold=self.control("threshold"),
            visible=self.control("show_heatmap"),
        )
        if node is not None:
            self.state.legend = self.findings.legend(node, self.shown.report.method)
        self._render()

    @change("show_segmentation", "segmentation_style")
    @shown_failures
    def _show_segmentation(self, **_) -> None:
        labelmap = self.shown.outputs.labelmapNode if self.shown.outputs else None
        visible = self.control("show_segmentation")
        self.logic.showLabels(labelmap, outline=self.control("segmentation_style") == "outline", visible=visible)
        if self.shown.outputs:  # 3D: the segments' surfaces
            self.shown.outputs.segmentationNode.GetDisplayNode().SetVisibility3D(visible)
        self._render()

    @change("bg_window", "bg_level")
    @shown_failures
    def _window_level(self, **_) -> None:
        window, level = self.control("bg_window"), self.control("bg_level")
        if self.shown.volumes:
            display = self.shown.volumes[0].GetDisplayNode()
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(window, level)
            self._render()

    @change("model")
    @shown_failures
    def _on_model(self, model, **_) -> None:
        classes, layers = run_choices(self.models.get(model) if isinstance(model, str) else None)
        self.state.update(classes_items=classes, classes="all", layers_items=layers, layers="auto")

    def _fit_views_soon(self, **_) -> None:
        """Fit the views to the volume once the new page has sized them."""
        asyncio.get_event_loop().call_later(1.0, self.app.display_manager.reset_views)

    def _render(self) -> None:
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def _on_cursor(self, crosshair, _event) -> None:
        """The background's, the segmentation's and the shown heatmap's values under the mouse."""
        ras = [0.0, 0.0, 0.0]
        if not self.shown.volumes or not crosshair.GetCursorPositionRAS(ras):
            return
        parts = [f"RAS ({ras[0]:.0f}, {ras[1]:.0f}, {ras[2]:.0f})"]
        outputs = self.shown.outputs
        labels = self.shown.report.model.labels if self.shown.report else []
        for name, node in [
            ("image", self.shown.volumes[0]),
            ("label", outputs.labelmapNode if outputs else None),
            ("heat", self._heatmap_node()),
        ]:
            value = value_at(node, ras) if node is not None else None
            if value is not None:
                text = labels[int(value)] if name == "label" and 0 <= int(value) < len(labels) else f"{value:.3g}"
                parts.append(f"{name} {text}")
        with self.state:
            self.state.probe = " · ".join(parts)

    # -- files ------------------------------------------------------------------------------------

    @shown_failures
    async def upload(self, files) -> None:
        """Volumes from the browser: one file per channel, or zipped DICOM series (then runs also write DICOM)."""
        self.state.error = self.state.message = ""
        self._check_no_run()  # before anything is stored
        received = [ClientFile(f) for f in files or [] if isinstance(f, dict)]  # the name is never a path
        uploaded = [UploadedFile(str(f.name or ""), bytes(f.content or b"")) for f in received]
        paths = self.uploads.store(uploaded)
        self.load_case(paths, ", ".join(f.name[:40] for f in uploaded), own=paths[0].parent)
        self.shown.dicom, self.state.message = self.uploads.dicom_upload(uploaded, paths)

    @shown_failures
    def open_sample(self, name: str) -> None:
        self.state.error = self.state.message = ""
        if name in sample_names():
            paths, own = sample_files(name, self.workdir / "samples")
            self.load_case(paths, name, own)

    @shown_failures
    def download(self, name: str):
        """The bytes of one output file, looked up by name among the outputs (never a path), its
        real path checked again to lie in the folder."""
        if self.shown.folder is None or name not in self.shown.files:
            return None
        content = served_file(self.shown.folder, name).read_bytes()
        return self.server.protocol.addAttachment(content)

    def close(self) -> None:
        """Stop a running worker and delete uploads and outputs (patient data)."""
        self.cancel_run()
        shutil.rmtree(self.workdir, ignore_errors=True)
