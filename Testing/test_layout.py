"""The layout shows the architecture: docs/architecture.md's tree is the folders on disk, the
package root holds only modules the layer table places, and imports flow one way.

The import graph of ``SegGradCAMLib`` is read from every module's source (its AST): every
``import`` and ``from ... import`` of a ``SegGradCAMLib`` module, wherever it stands (inside
functions and ``if TYPE_CHECKING:`` blocks included), relative imports resolved, and
``from package import name`` counted as an import of the submodule ``package.name`` where there
is one, else of ``package`` itself. Importing ``a.b.c`` counts as importing ``a.b.c`` only, not
the packages ``a`` and ``a.b`` that Python runs first: a package's ``__init__`` is a node with
its own imports, and the models package's ``__init__`` must not drag ``models.declarations``
(the bottom layer) up to the loaders' layer. That graph must be acyclic, and no module may
import a module of a layer above its own (:data:`LAYERS`).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "SegGradCAM" / "SegGradCAMLib"
PACKAGE = "SegGradCAMLib"
LAYOUT_PAGE = ROOT / "docs" / "architecture.md"

# The layers of SegGradCAMLib, top to bottom: a module may import its own layer or any layer
# below, never one above. Names are relative to SegGradCAMLib; a name covers that module and,
# for a package, everything under it; the longest name that covers a module places it.
# Modules that no name covers are in DEFAULT_LAYER. Names of modules that do not exist yet are fine.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("front ends", ("__main__", "cli", "mrml", "web")),
    ("entry", ("api", "cohort")),
    ("runs", ("runs", "evaluation", "demo", "dicom")),
    ("pipelines", ("pipelines", "inference", "inference_nnunet", "volume_findings", "volume_runner")),
    (
        "engine",
        (
            "cam",
            "layers",
            "layer_grid",
            "model_grid",
            "nnunet_grid",
            "nnunet_targets",
            "preprocessing",
            "volumes",
            "models",
            "targets",
            "findings",
            "uncertainty",
            "reliance",
            "class_maps",
            "memory_plan",
            "sliding_windows",
        ),
    ),
    # The package __init__ ("") only maps names to modules lazily (importlib, no import
    # statement), so it imports nothing and sits at the bottom: importing it is always allowed,
    # and an import statement added to it would be reported as going up.
    (
        "declarations",
        (
            "models.declarations",
            "options",
            "engine_options",
            "dicom_options",
            "finding_options",
            "declared_options",
            "reports",
            "selection",
            "errors",
            "",
        ),
    ),
)
DEFAULT_LAYER = "engine"
LAYER_NAMES = [name for name, _ in LAYERS]
FRONT_ENDS = LAYERS[0][1]


def module_name(path: Path, library: Path = LIBRARY) -> str:
    """``SegGradCAMLib.models.registry`` for ``.../SegGradCAMLib/models/registry.py``."""
    parts = list(path.relative_to(library.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(library: Path = LIBRARY) -> dict[str, Path]:
    """Every module of the package by absolute name."""
    return {module_name(path, library): path for path in sorted(library.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that the module ``name`` (file ``path``) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    root = name.split(".")[0]
    found: set[str] = set()

    def nearest(dotted: str) -> str | None:
        """``dotted`` or its longest prefix that is a module of the package."""
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [nearest(alias.name) for alias in node.names if alias.name.split(".")[0] == root]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem.split(".")[0] != root:
                continue
            targets = [
                f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else nearest(stem) for alias in node.names
            ]
        found.update(target for target in targets if target and target != name)
    return found


def import_graph(library: Path = LIBRARY) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    paths = package_modules(library)
    return {name: imports_of(name, path, set(paths)) for name, path in paths.items()}


def layer_of(module: str, layers=LAYERS, default: str = DEFAULT_LAYER) -> str:
    """The layer whose longest name covers ``module`` (``SegGradCAMLib.x.y``)."""
    relative = module.partition(".")[2]
    best, chosen = -1, default
    for layer, names in layers:
        for covered in names:
            if (relative == covered or relative.startswith(covered + ".")) and len(covered) > best:
                best, chosen = len(covered), layer
    return chosen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]], layers=LAYERS, default: str = DEFAULT_LAYER) -> list[str]:
    """Every import of a module of a higher layer, as a readable line."""
    order = [name for name, _ in layers]
    found = []
    for module in sorted(graph):
        own = layer_of(module, layers, default)
        for target in sorted(graph[module]):
            theirs = layer_of(target, layers, default)
            if order.index(theirs) < order.index(own):
                found.append(f"{module} imports {target} (layer {theirs!r} above layer {own!r})")
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_flow_down_the_layers():
    violations = upward_imports(import_graph())
    assert not violations, "imports going up the layers:\n" + "\n".join(violations)


def tracked_folders() -> set[str]:
    """Every folder holding a tracked file, as ``a/b/``."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = set()
    for name in files:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    return folders


def documented_layout() -> list[str]:
    """The first word of each line of the fenced block under ``## Layout`` in docs/architecture.md."""
    text = LAYOUT_PAGE.read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert match, f"{LAYOUT_PAGE.relative_to(ROOT)} has no fenced block under '## Layout'"
    return [line.split()[0] for line in match.group(1).splitlines() if line.strip()]


def test_documented_layout_lists_exactly_the_folders_on_disk():
    listed = documented_layout()
    assert len(listed) == len(set(listed)), "a folder is listed twice"
    folders = tracked_folders()
    expected = {f for f in folders if f.count("/") == 1}  # top level
    expected |= {f for f in folders if re.fullmatch(r"SegGradCAM/[^/]+/", f)}
    expected |= {f for f in folders if f.startswith("SegGradCAM/SegGradCAMLib/")}
    assert set(listed) == expected


def test_package_root_holds_only_modules_the_layer_table_places():
    placed = {name for _, names in LAYERS for name in names}
    modules = {path.stem for path in LIBRARY.glob("*.py")} - {"__init__"}
    assert modules <= placed, f"modules at the package root that LAYERS does not place: {sorted(modules - placed)}"


def is_front_end(module: str) -> bool:
    return layer_of(module) == LAYER_NAMES[0]


def test_no_module_below_the_front_ends_imports_one():
    checked, offenders = 0, []
    for name, imported in sorted(import_graph().items()):
        if is_front_end(name):
            continue
        checked += 1
        offenders += [f"{name} imports {m}" for m in sorted(imported) if is_front_end(m)]
    assert checked > 20 and offenders == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``SegGradCAMLib`` under ``root`` made of ``files`` (relative path -> source)."""
    library = root / PACKAGE
    for relative, source in files.items():
        (library / relative).parent.mkdir(parents=True, exist_ok=True)
        (library / relative).write_text(source, encoding="utf-8")
    return library


def test_the_import_reader_resolves_relative_lazy_and_submodule_imports(tmp_path):
    """The rules above could pass by reading nothing: check the reader on a known tree."""
    library = write_package(
        tmp_path,
        {
            "__init__.py": "import importlib\n",
            "errors.py": "",
            "cam.py": "from .errors import SegGradCAMError\n",
            "models/__init__.py": "from .spec import LoadedModel\nVALUE = 1\n",
            "models/spec.py": "def f():\n    from .. import cam\n    from ..models import VALUE\n",
            "models/loader.py": (
                "import SegGradCAMLib.cam\nfrom . import spec, VALUE\nfrom SegGradCAMLib import errors\n"
            ),
            "cli/run.py": "def main():\n    if True:\n        from ..models.loader import x\n    import numpy\n",
        },
    )
    graph = import_graph(library)
    assert graph == {
        "SegGradCAMLib": set(),
        "SegGradCAMLib.errors": set(),
        "SegGradCAMLib.cam": {"SegGradCAMLib.errors"},
        "SegGradCAMLib.models": {"SegGradCAMLib.models.spec"},
        "SegGradCAMLib.models.spec": {"SegGradCAMLib.cam", "SegGradCAMLib.models"},
        "SegGradCAMLib.models.loader": {
            "SegGradCAMLib.cam",
            "SegGradCAMLib.models.spec",
            "SegGradCAMLib.models",
            "SegGradCAMLib.errors",
        },
        "SegGradCAMLib.cli.run": {"SegGradCAMLib.models.loader"},
    }
    assert find_cycle(graph) == ["SegGradCAMLib.models", "SegGradCAMLib.models.spec", "SegGradCAMLib.models"]
    real = import_graph()["SegGradCAMLib.evaluation.roar"]
    assert {"SegGradCAMLib.cam", "SegGradCAMLib.demo.data", "SegGradCAMLib.demo.training"} <= real


def test_the_layer_table_places_modules_by_their_longest_name():
    assert layer_of("SegGradCAMLib.models.declarations") == "declarations"
    assert layer_of("SegGradCAMLib.models.registry") == "engine"
    assert layer_of("SegGradCAMLib.models") == "engine"
    assert layer_of("SegGradCAMLib") == "declarations"
    assert layer_of("SegGradCAMLib.cli.explain") == "front ends"
    assert layer_of("SegGradCAMLib.clinic") == DEFAULT_LAYER  # "cli" covers cli.*, not clinic
    assert layer_of("SegGradCAMLib.something_new") == DEFAULT_LAYER
    graph = {"SegGradCAMLib.selection": {"SegGradCAMLib.cam"}, "SegGradCAMLib.cam": {"SegGradCAMLib.selection"}}
    assert upward_imports(graph) == [
        "SegGradCAMLib.selection imports SegGradCAMLib.cam (layer 'engine' above layer 'declarations')"
    ]
