"""pyproject.toml says what the code needs: every third-party import of the library (counterfactual_lab/,
flows/, tasks/) is a declared dependency, every core dependency is imported or its line says why not,
test-only packages stay in the test extra, and constraints.txt, the manifest's versions and CI's
lowest-versions subset agree with it.

Every import counts (module level, inside a function, under ``TYPE_CHECKING``), read from the source;
a module maps to its distribution through the installed metadata, so this runs where the test extra is
installed, as CI does.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from counterfactual_lab.runs.manifest import VERSIONED_DISTRIBUTIONS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("counterfactual_lab", "flows", "tasks")
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
TEST_ONLY = {"boto3", "fairlearn", "flask", "flask-cors", "moto", "pytest", "scikit-learn"}


def requirements(group: str) -> dict[str, Requirement]:
    """The requirements of ``core`` or an extra, by normalised name (the project's own extra left out)."""
    listed = PROJECT["dependencies"] if group == "core" else PROJECT["optional-dependencies"][group]
    parsed = {canonicalize_name(r.name): r for r in map(Requirement, listed)}
    parsed.pop(canonicalize_name(PROJECT["name"]), None)
    return parsed


def runtime_dependencies() -> set[str]:
    """What a user's install may bring: the core and the ray extra (the library imports Ray lazily)."""
    return set(requirements("core")) | set(requirements("ray"))


def not_imported_on_purpose() -> dict[str, str]:
    """Core dependencies whose line in pyproject.toml says ``# not imported: <why>``."""
    said = {}
    line = re.compile(r'^\s*"([A-Za-z0-9_.\-]+)[^"]*",\s*#\s*not imported:\s*(.+)$', re.M)
    for match in line.finditer(PYPROJECT.read_text()):
        said[canonicalize_name(match.group(1))] = match.group(2).strip()
    return said


def third_party_imports(root: Path, packages: tuple[str, ...] = LIBRARY) -> dict[str, set[str]]:
    """Top-level module -> the files under ``root/<package>`` importing it (stdlib and the project left out)."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in LIBRARY and top != "__future__":
                        found.setdefault(top, set()).add(path.relative_to(root).as_posix())
    return found


@cache
def module_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The installed distributions providing the top-level ``module`` (empty when none is installed)."""
    return {canonicalize_name(d) for d in module_distributions().get(module, [])}


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    """One line per imported module no declared distribution provides, naming the files that import it."""
    problems = []
    for module, files in sorted(imports.items()):
        provided_by = distributions_of(module)
        if not provided_by & declared:
            name = " or ".join(sorted(provided_by)) or "no installed distribution"
            problems.append(f"{name} (import {module}: {', '.join(sorted(files)[:3])})")
    return problems


def test_every_library_import_is_a_declared_dependency():
    problems = undeclared(third_party_imports(ROOT), runtime_dependencies())
    assert not problems, (
        f"imported by the library but not declared in pyproject.toml's dependencies (or the ray extra): {problems}; "
        "declare each with the lowest version .ci/lowest passes with"
    )


def test_the_check_names_an_import_nobody_declared(tmp_path):
    """The check above can fail: a library module importing an undeclared package is named, with its file."""
    storage = tmp_path / "counterfactual_lab" / "storage"
    storage.mkdir(parents=True)
    # A lazy import inside a function counts as much as one at the top.
    (storage / "files.py").write_text("import numpy\n\n\ndef s3():\n    from boto3.session import Session\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "cli.py").write_text("import pytest\nfrom counterfactual_lab.storage import files\n")
    problems = undeclared(third_party_imports(tmp_path), runtime_dependencies())
    assert problems == [
        "boto3 (import boto3: counterfactual_lab/storage/files.py)",
        "pytest (import pytest: flows/cli.py)",
    ]


def test_every_core_dependency_is_imported_or_says_why_not():
    imported = {d for module in third_party_imports(ROOT) for d in distributions_of(module)}
    said = not_imported_on_purpose()
    unexplained = sorted(set(requirements("core")) - imported - set(said))
    assert not unexplained, (
        f"declared in pyproject.toml but imported nowhere in the library: {unexplained}; "
        "drop it, or say why it stays on its line: # not imported: <why>"
    )
    stale = sorted(set(said) & imported)
    assert not stale, f"pyproject.toml says 'not imported' beside {stale}, which the library imports"
    elsewhere = sorted(set(said) - set(requirements("core")))
    assert not elsewhere, f"pyproject.toml says 'not imported' beside {elsewhere}, which are not core dependencies"


def test_test_only_packages_are_in_the_test_extra_only():
    assert not TEST_ONLY & runtime_dependencies(), "a package only the tests import is a core or ray dependency"
    assert {"fairlearn", "moto", "boto3", "pytest"} <= set(requirements("test"))
    assert "counterfactual-lab[ray]" in PROJECT["optional-dependencies"]["test"], "the test extra runs the Ray tests"


def test_the_manifest_versions_what_the_library_runs_on():
    """The project, torch's CUDA libraries and declared dependencies: a test-only package changes no run's numbers."""
    others = {canonicalize_name(d) for d in VERSIONED_DISTRIBUTIONS} - runtime_dependencies() - {PROJECT["name"]}
    assert {d for d in others if not d.startswith("nvidia-")} == set()


def test_constraints_pin_versions_pyproject_allows():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name)] = version.strip()
    declared = {**requirements("core"), **requirements("ray"), **requirements("test")}
    missing = sorted(set(declared) - set(pins))
    assert not missing, f"constraints.txt pins no version of {missing}"
    outside = sorted(f"{name}=={pins[name]} (pyproject.toml: {req})" for name, req in declared.items()
                     if not req.specifier.contains(pins[name], prereleases=True))
    assert not outside, f"constraints.txt pins versions pyproject.toml does not allow: {outside}"


def test_the_lowest_versions_subset_names_tests_that_exist():
    entries = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "lowest-subset.txt").read_text().splitlines()]
    entries = [entry for entry in entries if entry]
    assert entries
    for entry in entries:
        path, _, test = entry.partition("::")
        assert (ROOT / path).is_file(), f".ci/lowest-subset.txt: {path} does not exist"
        if test:
            defined = re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M)
            assert defined, f".ci/lowest-subset.txt: no test {entry}"
