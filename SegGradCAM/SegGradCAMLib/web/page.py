"""The browser viewer's page (trame, Vuetify 3): the layout of its views and its controls, bound to
the state and the methods of :class:`~SegGradCAMLib.web.app.SegGradCAMWeb`."""

from __future__ import annotations

from trame_client.widgets import html
from trame_client.widgets.html import Div, Span
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3

from ..models.declarations import DEFAULT_MULTICLASS_MODEL
from ..mrml.findings import FINDING_COLUMNS as TABLE_COLUMNS, RELIANCE_MEASURES
from ..mrml.outputs import inferno_colors
from ..selection import AUTO_METHOD, METHOD_CHOICES
from .findings import HEATMAP

CELL = "padding: 2px 4px; height: auto;"  # the findings list's cells
ABOUT = {key: text for _, key, text in TABLE_COLUMNS}
LIST_COLUMNS = (  # the findings list's columns: title, tooltip (as the Slicer module's findings table says)
    ("#", "The finding's id (1: the largest)."),
    ("class", "Its class."),
    ("mL", ABOUT["volume_ml"]),
    ("mean p", ABOUT["probability_mean"]),
    ("reliance (occlusion)", f"Per input channel: {RELIANCE_MEASURES['occlusion']}"),
)
NOTE_SHARED = "All tabs share this server's scene and controls; one run at a time."


def checkbox(name: str, label: str, element_id: str):
    """A compact checkbox bound to the state's ``name``."""
    return v3.VCheckbox(v_model=(name,), label=label, density="compact", hide_details=True, id=element_id)


def quad_layout() -> Layout:
    """Axial and 3D on the left, coronal and sagittal on the right."""
    return Layout(
        LayoutDirection.Horizontal,
        [
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.threed_view()]),
            Layout(
                LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()]
            ),
        ],
    )


def initial_state(models: list[str], samples: list[str]) -> dict:
    """The page's state before anything is loaded: the offered ``models`` (the demo model chosen
    when offered) and ``samples``, default choices and display settings."""
    return dict(
        models=models,
        model=DEFAULT_MULTICLASS_MODEL if DEFAULT_MULTICLASS_MODEL in models else next(iter(models), None),
        classes_items=["all"],
        classes="all",
        layers_items=["auto"],
        layers="auto",
        methods=list(METHOD_CHOICES),
        method=AUTO_METHOD,
        samples=samples,
        sample=None,
        faithfulness=False,
        findings=False,
        why_here=False,
        overlay=HEATMAP,  # the findings' state besides: FindingsPanel.clear()
        running=False,
        progress=0,
        progress_text="",
        error="",
        message="",
        case_title="no volume loaded",
        heat_items=[],
        heat=None,
        show_heatmap=True,
        opacity=0.6,
        threshold=0.2,
        show_segmentation=True,
        segmentation_style="outline",
        bg_window=400.0,
        bg_level=200.0,
        range_min=0.0,
        range_max=1000.0,
        legend="",
        probe="",
        downloads=[],
        note=NOTE_SHARED,
    )


def build_page(web) -> None:
    """The page of ``web`` (a :class:`~SegGradCAMLib.web.app.SegGradCAMWeb`): controls in a side drawer,
    four views, a status line (a declarative template)."""
    stops = ", ".join(f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})" for r, g, b in inferno_colors(9))
    with SinglePageWithDrawerLayout(web.server, full_height=True) as ui:
        ui.title.set_text("SegGradCAM")
        ui.root.theme = "dark"
        with ui.toolbar:
            v3.VSpacer()
            v3.VProgressLinear(
                model_value=("progress",), height=8, style="max-width: 220px", id="progress", active=("running",)
            )
            Span("{{ progress_text }}", id="progress-text", classes="mx-2 text-caption")
        with ui.drawer as drawer:
            drawer.width = 330
            with v3.VContainer(classes="pa-2", style="font-size: 13px"):
                Div("{{ note }}", classes="text-caption mb-2", id="note")
                v3.VSelect(
                    label="Sample",
                    items=("samples",),
                    v_model=("sample",),
                    density="compact",
                    id="sample",
                    update_modelValue=(web.open_sample, "[$event]"),
                    hide_details=True,
                    disabled=("running",),  # the server refuses another volume while a run goes
                )
                v3.VFileInput(
                    label="Upload (one file per channel, or a DICOM zip)",
                    multiple=True,
                    id="upload",
                    disabled=("running",),
                    density="compact",
                    hide_details=True,
                    classes="mt-2",
                    change=f"trigger('{web.ctrl.trigger_name(web.upload)}', [$event.target.files])",
                )
                Div("{{ case_title }}", id="case", classes="text-caption my-1")
                v3.VSelect(
                    label="Model",
                    items=("models",),
                    v_model=("model",),
                    density="compact",
                    id="model",
                    hide_details=True,
                    classes="mt-2",
                )
                v3.VSelect(
                    label="Classes",
                    items=("classes_items",),
                    v_model=("classes",),
                    density="compact",
                    id="classes",
                    hide_details=True,
                    classes="mt-2",
                )
                v3.VSelect(
                    label="Layers",
                    items=("layers_items",),
                    v_model=("layers",),
                    density="compact",
                    id="layers",
                    hide_details=True,
                    classes="mt-2",
                )
                v3.VSelect(
                    label="Method",
                    items=("methods",),
                    v_model=("method",),
                    density="compact",
                    id="method",
                    hide_details=True,
                    classes="mt-2",
                )
                checkbox("faithfulness", "Score faithfulness (slower)", "faithfulness")
                checkbox("findings", "Findings (each lesion on its own, probabilities)", "findings")
                v3.VSwitch(
                    v_model=("why_here",),
                    label="Why here? (then click a slice view)",
                    density="compact",
                    hide_details=True,
                    color="primary",
                    id="why-here",
                )
                with Div(classes="d-flex mt-2"):
                    v3.VBtn(
                        "Run",
                        click=(web.start_run, "[model, classes, layers, method, faithfulness, findings]"),
                        disabled=("running",),
                        id="run",
                        color="primary",
                        classes="mr-2",
                    )
                    v3.VBtn("Cancel", click=web.cancel_run, disabled=("!running",), id="cancel")
                v3.VAlert(
                    text=("error",), v_show=("error",), type="error", density="compact", id="error", classes="mt-2"
                )
                v3.VAlert(
                    text=("message",), v_show=("message",), type="info", density="compact", id="message", classes="mt-2"
                )
                v3.VDivider(classes="my-2")
                v3.VSelect(
                    label="Heatmap (class / layer)",
                    items=("heat_items",),
                    v_model=("heat",),
                    density="compact",
                    hide_details=True,
                    id="heat",
                )
                v3.VSelect(
                    label="Overlay",
                    items=("overlay_items",),
                    v_model=("overlay",),
                    density="compact",
                    hide_details=True,
                    id="overlay",
                    classes="mt-2",
                )
                checkbox("show_heatmap", "Show heatmap", "show-heatmap")
                v3.VSlider(
                    v_model=("opacity",), min=0, max=1, step=0.05, label="Opacity", density="compact", hide_details=True
                )
                v3.VSlider(
                    v_model=("threshold",),
                    min=0,
                    max=1,
                    step=0.05,
                    label="Threshold",
                    density="compact",
                    hide_details=True,
                )
                Div(style=f"height: 10px; background: linear-gradient(to right, {stops});", classes="mt-1")
                with Div(classes="d-flex text-caption"):
                    Span("0")
                    v3.VSpacer()
                    Span("1")
                Div("{{ legend }}", classes="text-caption", id="legend")
                checkbox("show_segmentation", "Show segmentation", "show-segmentation")
                with v3.VRadioGroup(v_model=("segmentation_style",), inline=True, density="compact", hide_details=True):
                    v3.VRadio(label="outline", value="outline")
                    v3.VRadio(label="fill", value="fill")
                v3.VSlider(
                    v_model=("bg_window",),
                    min=1,
                    max=("range_max - range_min",),
                    label="Window",
                    density="compact",
                    hide_details=True,
                )
                v3.VSlider(
                    v_model=("bg_level",),
                    min=("range_min",),
                    max=("range_max",),
                    label="Level",
                    density="compact",
                    hide_details=True,
                )
                v3.VDivider(classes="my-2")
                Div("Downloads", classes="text-caption", v_show=("downloads.length",))
                v3.VBtn(
                    "{{ name }}",
                    v_for="name in downloads",
                    key="name",
                    size="x-small",
                    variant="tonal",
                    classes="ma-1 download",
                    style="text-transform: none",
                    click=(
                        f"utils.download(name, trigger('{web.ctrl.trigger_name(web.download)}', "
                        "[name]), 'application/octet-stream')"
                    ),
                )
        with ui.content, Div(style="position: relative; height: calc(100vh - 64px);"):  # beside the drawer
            with Div(style=("`position: absolute; inset: 0 ${finding_rows.length ? 360 : 0}px 22px 0;`",)):
                web.layout.initialize_layout_grid(ui)
            findings_list(web)
            Div("{{ probe }}", id="probe", style="position: absolute; bottom: 0; height: 22px; font: 12px monospace;")


def findings_list(web) -> None:
    """The findings of the run shown, beside the views: a click on a row shows that finding."""
    with Div(
        v_show=("finding_rows.length",),
        id="findings-list",
        style="position: absolute; top: 0; right: 0; bottom: 22px; width: 360px; overflow-y: auto; font-size: 12px;",
        classes="pa-1",
    ):
        with v3.VTable(density="compact"):
            with html.Thead(), html.Tr():
                for title, about in LIST_COLUMNS:
                    html.Th(title, title=about, style=CELL)
            with html.Tbody():
                with html.Tr(
                    v_for="row in finding_rows",
                    key="row.id",
                    classes=("row.id === finding ? 'finding-row bg-primary' : 'finding-row'",),
                    style="cursor: pointer",
                    click=(web.findings.select, "[row.id]"),
                ):
                    for field in ("id", "label", "volume", "probability", "reliance"):
                        html.Td(f"{{{{ row.{field} }}}}", style=CELL)
