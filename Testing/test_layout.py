"""The layout shows the architecture: the README's tree is the folders on disk, the
package root holds only the engine, and nothing below the front ends imports one."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "SegGradCAM" / "SegGradCAMLib"
FRONT_ENDS = ("SegGradCAMLib.cli", "SegGradCAMLib.mrml", "SegGradCAMLib.web", "SegGradCAMLib.__main__")
ENGINE_MODULES = {"__init__", "__main__", "errors", "cam", "layer_grid", "layers", "inference", "inference_nnunet", "preprocessing",
                  "selection"}


def tracked_folders() -> set[str]:
    """Every folder holding a tracked file, as ``a/b/``."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = set()
    for name in files:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    return folders


def readme_layout() -> list[str]:
    """The first word of each line of the fenced block under ``## Layout``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no fenced block under '## Layout'"
    return [line.split()[0] for line in match.group(1).splitlines() if line.strip()]


def test_readme_layout_lists_exactly_the_folders_on_disk():
    listed = readme_layout()
    assert len(listed) == len(set(listed)), "a folder is listed twice"
    folders = tracked_folders()
    expected = {f for f in folders if f.count("/") == 1}  # top level
    expected |= {f for f in folders if re.fullmatch(r"SegGradCAM/[^/]+/", f)}
    expected |= {f for f in folders if f.startswith("SegGradCAM/SegGradCAMLib/")}
    assert set(listed) == expected


def test_package_root_holds_only_the_engine():
    modules = {path.stem for path in LIBRARY.glob("*.py")}
    assert modules <= ENGINE_MODULES, f"not engine modules at the package root: {sorted(modules - ENGINE_MODULES)}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, at any depth (lazy imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def is_front_end(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FRONT_ENDS) or module == "SegGradCAM"


def test_no_module_below_the_front_ends_imports_one():
    checked, offenders = 0, []
    for path in sorted(LIBRARY.rglob("*.py")):
        name = module_name(path)
        if is_front_end(name):
            continue
        checked += 1
        offenders += [f"{name} imports {m}" for m in sorted(imported_modules(path)) if is_front_end(m)]
    assert checked > 20 and offenders == []


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path):
    """The rule above could pass by reading nothing: check the reader on a known file."""
    found = imported_modules(LIBRARY / "evaluation" / "roar.py")
    assert {"SegGradCAMLib.cam", "SegGradCAMLib.demo.training", "SegGradCAMLib.selection.DEFAULT_FRACTIONS"} <= found
    found = imported_modules(LIBRARY / "cli" / "explain.py")
    assert "SegGradCAMLib.inference.explain_volume" in found  # imported inside a function
