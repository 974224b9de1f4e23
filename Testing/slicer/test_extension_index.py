"""The Slicer Extensions Index entry (SegGradCAM.json) and the top-level CMakeLists.txt,
checked offline the way the index's CI checks them.

The index (https://github.com/Slicer/ExtensionsIndex, scripts/check_description_files.py)
validates an entry against the JSON schema its ``$schema`` URL names, then checks the
category, the repository name, the ``scm_url`` scheme, the cloned repository's top-level
CMakeLists.txt (project name, icon and screenshot URLs) and its license file. The schemas are
vendored in Testing/extension_index/ (sources in its README.md); nothing here uses the
network. The index's 5.10 branch takes schema v1.0.1, main and 5.12 take v1.0.2: the entry
for 5.10 is this file with the ``$schema`` URL changed, so it must be valid under both.

The index's pre-commit hook also formats every entry with prettier and the index's
``.prettierrc.js`` (prettier-plugin-multiline-arrays, ``multilineArraysWrapThreshold: 0``: every
array one item a line); an entry that hook would reformat fails the index's lint. That
configuration is vendored as Testing/extension_index/prettierrc.js, with the prettier and plugin
versions the hook pins locked in package-lock.json there; scripts/setup.sh installs them.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_FILE = ROOT / "SegGradCAM.json"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "extension_index"
SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v{}.json#"
)
INDEX_BRANCH_SCHEMA = {"5.10": "1.0.1", "5.12": "1.0.2", "main": "1.0.2"}
REPOSITORY = "SlicerSegGradCAM"
# A few of ACCEPTED_EXTENSION_CATEGORIES in check_description_files.py (all that could fit here).
INDEX_CATEGORIES = {"Analysis", "Neuroimaging", "Quantification", "Segmentation"}
PRETTIER = SCHEMA_DIR / "node_modules" / ".bin" / "prettier"
PRETTIER_CONFIG = SCHEMA_DIR / "prettierrc.js"
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
CMAKE_KEYS = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
)


def load_entry() -> dict:
    return json.loads(ENTRY_FILE.read_text(encoding="utf-8"))


def cmake_text() -> str:
    return (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def schema_for(url: str) -> dict:
    """The vendored schema that a ``$schema`` URL names (KeyError-like failure if not vendored)."""
    match = re.fullmatch(re.escape(SCHEMA_URL).replace(r"v\{\}", r"v(\d+\.\d+\.\d+)"), url)
    assert match, f"$schema is not a Slicer extension catalog entry schema URL: {url!r}"
    path = SCHEMA_DIR / f"slicer-extension-catalog-entry-schema-v{match.group(1)}.json"
    assert path.is_file(), f"schema v{match.group(1)} is not vendored in {SCHEMA_DIR}"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$id"] == url, "the vendored schema's $id is not the URL the entry names"
    return schema


def schema_errors(entry: dict) -> list[str]:
    """What the index's ``jsonschema.validate`` would reject, one message per problem."""
    schema = schema_for(entry.get("$schema", ""))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<entry>'}: {e.message}" for e in validator.iter_errors(entry)
    )


def repository_of(url: str) -> tuple[str, str]:
    """(owner, repository) of a github.com, raw.githubusercontent.com or git URL."""
    parts = [p for p in urllib.parse.urlsplit(url).path.split("/") if p]
    assert len(parts) >= 2, f"no owner/repository in {url!r}"
    return parts[0], re.sub(r"\.git$", "", parts[1])


def entry_problems(entry: dict) -> list[str]:
    """The index's offline checks of an entry: schema, category, repository name, scm_url."""
    problems = schema_errors(entry)
    if entry.get("category") not in INDEX_CATEGORIES:
        problems.append(f"category {entry.get('category')!r} is not one the index accepts for this extension")
    url = entry.get("scm_url", "")
    if "://" not in url or urllib.parse.urlsplit(url).scheme not in ("git", "https"):
        problems.append(f"scm_url {url!r} is not a git:// or https:// URL")
        return problems
    name = repository_of(url)[1]
    if "slicer" not in name.lower():  # the index's rule
        problems.append(f"repository name {name!r} does not contain 'Slicer'")
    elif not name.startswith("Slicer"):  # the index's pull request checklist: Slicer + extension name
        problems.append(f"repository name {name!r} does not start with 'Slicer'")
    return problems


def cmake_values(text: str) -> dict[str, str]:
    """``set(KEY "value")`` / ``set(KEY value)`` at the top level, quotes removed."""
    values = {}
    for key, value in re.findall(r"^\s*set\s*\(\s*(EXTENSION_\w+)\s+(.*?)\s*\)\s*$", text, re.M):
        values[key] = value[1:-1] if value.startswith('"') and value.endswith('"') else value
    return values


def cmake_problems(text: str, entry: dict, extension_name: str = ENTRY_FILE.stem) -> list[str]:
    """The index's CMakeLists.txt checks, plus agreement of the metadata with the entry."""
    problems = []
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", text, re.I)  # the index's pattern
    if not project or project[0].strip("\"'") != extension_name:
        problems.append(f"project() name {project[:1]} is not the description file name {extension_name!r}")
    # The index reads these two only in this quoted form (its own regular expressions).
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.I)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.I)
    if not icon:
        problems.append("no quoted EXTENSION_ICONURL")
    if not shots or not shots[0].split():
        problems.append("no quoted EXTENSION_SCREENSHOTURLS")
    values = cmake_values(text)
    for key in CMAKE_KEYS:
        if not values.get(key):
            problems.append(f"{key} is not set")
    if problems:
        return problems
    owner_repo = repository_of(entry["scm_url"])
    homepage = values["EXTENSION_HOMEPAGE"]
    if not re.fullmatch(rf"https://github\.com/{re.escape('/'.join(owner_repo))}/?(#readme)?", homepage):
        problems.append(f"EXTENSION_HOMEPAGE {homepage!r} is not the page of {entry['scm_url']!r}")
    for url in [icon[0], *shots[0].split()]:
        split = urllib.parse.urlsplit(url)
        parts = split.path.strip("/").split("/")
        if split.scheme != "https" or split.netloc != "raw.githubusercontent.com" or len(parts) < 4:
            problems.append(f"{url!r} is not an https raw.githubusercontent.com file URL")
            continue
        if tuple(parts[:2]) != owner_repo:
            problems.append(f"{url!r} is not in the repository of scm_url {entry['scm_url']!r}")
        if parts[2] != entry.get("scm_revision", "main"):
            problems.append(f"{url!r} is not on the branch scm_revision {entry.get('scm_revision')!r}")
        local = ROOT.joinpath(*parts[3:])
        if not local.is_file() or local.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif"):
            problems.append(f"{url!r} names no image file of this repository ({local.relative_to(ROOT)})")
    if values["EXTENSION_CATEGORY"] != entry.get("category"):
        problems.append(f"EXTENSION_CATEGORY {values['EXTENSION_CATEGORY']!r} != category {entry.get('category')!r}")
    depends = values.get("EXTENSION_DEPENDS", "").split()
    if depends != entry.get("build_dependencies", []):
        problems.append(f"EXTENSION_DEPENDS {depends} != build_dependencies {entry.get('build_dependencies')}")
    return problems


def for_index_branch(entry: dict, branch: str) -> dict:
    """The entry as submitted to one branch of the index: only ``$schema`` differs."""
    return {**entry, "$schema": SCHEMA_URL.format(INDEX_BRANCH_SCHEMA[branch])}


# --- the entry and the CMake file of this repository -------------------------------------


def test_vendored_schemas_are_valid_draft7_schemas():
    for version in sorted(set(INDEX_BRANCH_SCHEMA.values())):
        schema = schema_for(SCHEMA_URL.format(version))
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
        jsonschema.Draft7Validator.check_schema(schema)


def test_entry_is_valid_under_the_schema_it_declares():
    entry = load_entry()
    assert schema_errors(entry) == []
    assert entry_problems(entry) == []


@pytest.mark.parametrize("branch", sorted(INDEX_BRANCH_SCHEMA))
def test_entry_is_valid_for_each_index_branch(branch):
    assert entry_problems(for_index_branch(load_entry(), branch)) == []


def test_entry_names_the_slicer_repository_and_keeps_pytorch():
    entry = load_entry()
    assert repository_of(entry["scm_url"])[1] == REPOSITORY == "Slicer" + ENTRY_FILE.stem
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_revision"] == "main" and entry["build_subdirectory"] == "."


def test_cmake_metadata_agrees_with_the_entry():
    assert cmake_problems(cmake_text(), load_entry()) == []


def test_no_url_names_the_old_repository():
    old = re.compile(r"github(usercontent)?\.com/[^/\s\"]+/SegGradCAM(\.git|[/#\"\s]|$)")
    for path in (ENTRY_FILE, ROOT / "CMakeLists.txt"):
        assert not old.search(path.read_text(encoding="utf-8")), f"{path.name} still names a repository 'SegGradCAM'"


def test_license_file_at_the_root():
    assert any((ROOT / name).is_file() for name in LICENSE_NAMES)


def prettier_check(path: Path) -> subprocess.CompletedProcess:
    """``prettier --check`` of one file with the index's configuration (the vendored copy).

    ``--no-editorconfig``: the index has no .editorconfig, so none of this repository may count.
    """
    assert PRETTIER.is_file(), (
        f"{PRETTIER.relative_to(ROOT)} is missing: run scripts/setup.sh "
        "(it installs the index's prettier with npm ci --prefix Testing/extension_index)"
    )
    command = [str(PRETTIER), "--config", str(PRETTIER_CONFIG), "--no-editorconfig", "--check"]
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return subprocess.run([*command, str(name)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_entry_is_formatted_as_the_index_prettier_configuration_wants():
    result = prettier_check(ENTRY_FILE)
    output = result.stdout + result.stderr
    fix = " ".join(str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in result.args)
    fix = fix.replace("--check", "--write")
    assert result.returncode == 0, f"the index's prettier would reformat {ENTRY_FILE.name}; fix: {fix}\n{output}"
    assert "All matched files use Prettier code style!" in output, output  # checked, not ignored


def test_prettier_check_rejects_a_one_line_array(tmp_path):
    """The vendored configuration is in force: the one-line array the index reformats fails."""
    one_line = ENTRY_FILE.read_text(encoding="utf-8").replace('[\n    "PyTorch"\n  ]', '["PyTorch"]')
    assert '"build_dependencies": ["PyTorch"],' in one_line
    probe = tmp_path / ENTRY_FILE.name
    probe.write_text(one_line, encoding="utf-8")
    result = prettier_check(probe)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{probe.parent.name}/{probe.name}" in result.stderr  # prettier names it relative to the cwd


# --- the checks reject what the index rejects ---------------------------------------------


DELETE = object()


def mutated(changes: dict) -> dict:
    """The entry with some fields changed (``DELETE``: removed)."""
    entry = copy.deepcopy(load_entry())
    for key, value in changes.items():
        if value is DELETE:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"scm_url": "https://github.com/SegGradCAM/SegGradCAM.git"}, "does not contain 'Slicer'"),
        ({"scm_url": "https://github.com/SegGradCAM/SegGradCAM-Slicer.git"}, "does not start with 'Slicer'"),
        ({"scm_url": "ssh://git@github.com/SegGradCAM/SlicerSegGradCAM.git"}, "not a git:// or https:// URL"),
        ({"category": DELETE}, "'category' is a required property"),
        ({"scm_url": DELETE}, "'scm_url' is a required property"),
        ({"category": "Machine Learning"}, "not one the index accepts"),
        ({"homepage": "https://example.org"}, "Additional properties are not allowed"),
        ({"tier": 7}, "7 is greater than the maximum of 5"),
        ({"build_dependencies": "PyTorch"}, "'PyTorch' is not of type 'array'"),
        ({"scm_type": "svn"}, "'svn' is not one of ['git', 'local']"),
    ],
)
def test_entry_checks_reject(changes, expected):
    problems = entry_problems(mutated(changes))
    assert any(expected in p for p in problems), problems


def test_missing_or_unknown_schema_is_rejected():
    with pytest.raises(AssertionError, match="not a Slicer extension catalog entry schema URL"):
        entry_problems(mutated({"$schema": DELETE}))
    with pytest.raises(AssertionError, match="v9.9.9 is not vendored"):
        entry_problems(mutated({"$schema": SCHEMA_URL.format("9.9.9")}))


def test_dicom_support_rule_needs_v102_so_not_on_the_510_branch():
    entry = mutated({"dicom_support_rule": "Modality == 'MR'"})
    assert entry_problems(for_index_branch(entry, "main")) == []
    assert any("dicom_support_rule" in p for p in entry_problems(for_index_branch(entry, "5.10")))


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("project(SegGradCAM)", "project(SlicerSegGradCAM)", "is not the description file name"),
        ("SlicerSegGradCAM#readme", "SegGradCAM#readme", "EXTENSION_HOMEPAGE"),
        ("SlicerSegGradCAM/main/SegGradCAM/Resources", "SegGradCAM/main/SegGradCAM/Resources", "not in the repository"),
        ("SlicerSegGradCAM/main/docs", "SlicerSegGradCAM/master/docs", "not on the branch"),
        ("slicer_scene_colin27.png", "no_such_screenshot.png", "names no image file"),
        (
            '"https://raw.githubusercontent.com/SegGradCAM/SlicerSegGradCAM/main/SegGradCAM/Resources/Icons/SegGradCAM.png"',
            "https://raw.githubusercontent.com/SegGradCAM/SlicerSegGradCAM/main/SegGradCAM/Resources/Icons/SegGradCAM.png",
            "no quoted EXTENSION_ICONURL",
        ),
        ("set(EXTENSION_DEPENDS PyTorch)", "set(EXTENSION_DEPENDS NA)", "EXTENSION_DEPENDS"),
        ('set(EXTENSION_CATEGORY "Segmentation")', 'set(EXTENSION_CATEGORY "Analysis")', "EXTENSION_CATEGORY"),
        ('set(EXTENSION_CONTRIBUTORS "', 'set(EXTENSION_CONTRIBUTORS_X "', "EXTENSION_CONTRIBUTORS is not set"),
    ],
)
def test_cmake_checks_reject(old, new, expected):
    text = cmake_text()
    assert old in text
    problems = cmake_problems(text.replace(old, new, 1), load_entry())
    assert any(expected in p for p in problems), problems
