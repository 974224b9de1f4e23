"""The README, docs/ and bench/RESULTS.md name only things that exist, and the README stays short.

What counts as a repository path (checked to exist):

- every markdown link or image, ``[text](target)`` and ``![alt](target)``, except web
  addresses (``http(s)://``, ``mailto:``) and links to an anchor of the same page (``#...``);
  the target is relative to the page that holds it, any ``#anchor`` is cut off;
- every word in backticks (inline code and fenced code blocks) whose first path component is
  one of the repository's top-level entries (:data:`TOP_LEVEL`), e.g. ``Testing/cli/test_cli.py``,
  ``docs/cli.md``, ``.ci/run``; ``SegGradCAMLib/...`` and ``Resources/...`` are read as
  ``SegGradCAM/SegGradCAMLib/...`` and ``SegGradCAM/Resources/...``. Such words are relative to
  the repository root.

Not repository paths, so not checked: what a command creates (``out/colin27``: ``out`` is no
top-level entry), system and home paths (``/usr/share/...``, ``~/nnUNet_results``), a virtual
environment a set-up script makes (any path through ``.venv``), and patterns: names holding
``<``, ``>``, ``*``, ``{``, ``}``, ``…`` or ``...`` (``heatmap_<class>.nrrd``, ``Testing/*/test_*.py``).
A pytest node id (``Testing/x.py::test_y``) is checked as its file.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150
TOP_LEVEL = (
    "SegGradCAM",
    "Testing",
    "docs",
    "bench",
    "scripts",
    ".ci",
    "CMakeLists.txt",
    "SegGradCAM.json",
    "pyproject.toml",
    "README.md",
    "LICENSE",
)
ALIASES = {"SegGradCAMLib": "SegGradCAM/SegGradCAMLib", "Resources": "SegGradCAM/Resources"}
PATTERN_MARKS = ("<", ">", "*", "{", "}", "…", "...")

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
SPLIT = re.compile(r"[\s,;()\[\]'\"=|&]+")


def documents() -> list[Path]:
    """The pages checked: the README, every page in docs/, and the benchmark results they link to."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]


def code_words(text: str) -> list[str]:
    """Every word inside backticks: fenced blocks first, then inline code in what is left."""
    words = []
    for match in FENCE.finditer(text):
        words += SPLIT.split(match.group(2))
    rest = FENCE.sub("", text)
    for match in INLINE_CODE.finditer(rest):
        words += SPLIT.split(match.group(2))
    return [w for w in words if w]


def repository_path(word: str) -> str | None:
    """``word`` as a path from the repository root, or None when it is no repository path."""
    word = word.split("::", 1)[0].rstrip(".:")
    if not word or any(mark in word for mark in PATTERN_MARKS):
        return None
    parts = word.split("/")
    if ".venv" in parts:
        return None
    if parts[0] in ALIASES:
        parts[0] = ALIASES[parts[0]]
    if parts[0] not in TOP_LEVEL and parts[0] not in ALIASES.values():
        return None
    return "/".join(parts)


def link_targets(text: str) -> list[str]:
    """Relative targets of markdown links and images (web addresses and same-page anchors left out)."""
    targets = []
    for match in LINK.finditer(FENCE.sub("", text)):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def missing_paths(page: Path, text: str) -> list[str]:
    """What ``text`` (the content of ``page``) names that does not exist, as readable lines."""
    missing = []
    for target in link_targets(text):
        if not (page.parent / target).exists():
            missing.append(f"link ({target})")
    for word in code_words(text):
        path = repository_path(word)
        if path is not None and not (ROOT / path).exists():
            missing.append(f"`{path}`")
    return missing


def test_the_top_level_entries_exist():
    assert [name for name in TOP_LEVEL if not (ROOT / name).exists()] == []


def test_every_path_and_link_in_the_docs_exists():
    found = {}
    for page in documents():
        missing = missing_paths(page, page.read_text(encoding="utf-8"))
        if missing:
            found[str(page.relative_to(ROOT))] = sorted(set(missing))
    assert found == {}


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for page in documents():
        for target in link_targets(page.read_text(encoding="utf-8")):
            linked.add((page.parent / target).resolve())
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages and [p.name for p in pages if p.resolve() not in linked] == []


def test_the_checker_finds_what_is_missing(tmp_path):
    """The rules above could pass by reading nothing: plant bad names in a page and see each found."""
    page = ROOT / "docs" / "planted.md"
    text = (
        "![figure](images/no_such_figure.png) and [a page](no_such_page.md#part), "
        "[fine](cli.md), [web](https://example.org/x.md), [anchor](#here)\n"
        "Run `Testing/no_such_test.py::test_x` or `SegGradCAMLib/no_such_module.py`; "
        "`out/colin27`, `/usr/share/x`, `heatmap_<class>.nrrd`, `Testing/*/test_*.py` are not checked.\n"
        "```bash\nbash scripts/no_such_script.sh && .venv/bin/seggradcam explain x --out out/y\n```\n"
    )
    assert sorted(missing_paths(page, text)) == sorted(
        [
            "link (images/no_such_figure.png)",
            "link (no_such_page.md)",
            "`Testing/no_such_test.py`",
            "`SegGradCAM/SegGradCAMLib/no_such_module.py`",
            "`scripts/no_such_script.sh`",
        ]
    )
