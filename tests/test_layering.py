"""The house: one folder per pipeline stage, imports only downwards, no cycles, the library without
Prefect, and each generation method's facts in one place.

Every check reads the source (every import counts: at module level, inside a function, under
``TYPE_CHECKING``), so a lazy import cannot hide an edge until the code runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = REPO_ROOT / "counterfactual_lab"
ORCHESTRATION = {"flows": REPO_ROOT / "flows", "tasks": REPO_ROOT / "tasks"}

# The library's layers, bottom first: a module may import its own layer and the layers below.
# One subpackage per stage, in the order of the data flow where one stage reads another's output.
LAYERS: list[set[str]] = [
    {"errors", "version"},  # foundations
    {"storage"},
    {"config"},
    {"models"},
    {"ingest"},
    {"plan"},
    {"judge"},
    {"generation"},
    {"evaluate"},
    {"metrics"},
    {"runs"},
    {"review"},  # people's labels on a run's sets: reads the run and the metrics' intervals; the report shows them
    {"report"},
    {"demo"},
    {"validity"},
    {"api", "__init__"},  # the library's face
]
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    """The dotted name a file is imported by (flows/ and tasks/ are installed under counterfactual_lab)."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[0] in ORCHESTRATION:
        parts.insert(0, "counterfactual_lab")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files() -> list[Path]:
    return sorted([*LIBRARY.rglob("*.py"), *(p for root in ORCHESTRATION.values() for p in root.rglob("*.py"))])


MODULES = {module_name(path): path for path in python_files()}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` that names one of the project's modules, resolved
    to the module (``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``)."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.append((node.lineno, name))
                break
    return found


def stage_of(module: str) -> str | None:
    """The library layer a module belongs to: its subpackage, or its own name at the top level."""
    parts = module.split(".")
    if parts[0] != "counterfactual_lab" or parts[1:2] in (["flows"], ["tasks"]):
        return None
    return parts[1] if len(parts) > 1 else "__init__"


EDGES = {module: sorted({target for _, target in imported_modules(path)} - {module}) for module, path in MODULES.items()}


def test_every_library_file_sits_in_a_known_layer():
    """A new subpackage or top-level module must be given its place in LAYERS."""
    unknown = sorted({stage_of(m) for m in MODULES if stage_of(m) is not None} - set(LAYER_OF))
    assert unknown == [], f"give these a layer in tests/test_layering.py LAYERS: {unknown}"


def test_no_library_module_imports_from_a_higher_layer():
    upward = []
    for module, path in MODULES.items():
        stage = stage_of(module)
        if stage is None:
            continue
        for line, target in imported_modules(path):
            target_stage = stage_of(target)
            if target_stage is not None and LAYER_OF[target_stage] > LAYER_OF[stage]:
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} ({stage}) imports {target} ({target_stage})")
    assert upward == []


def test_the_library_never_imports_the_orchestration_side():
    """flows/ and tasks/ build on the library; the library imports neither, nor Prefect."""
    offenders = []
    for module, path in MODULES.items():
        if stage_of(module) is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")
                if top[0] in ("flows", "tasks", "prefect") or top[0].startswith("prefect_") or top[:2] in (
                        ["counterfactual_lab", "flows"], ["counterfactual_lab", "tasks"]):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {name}")
    assert offenders == []


def test_tasks_never_import_flows():
    offenders = [f"{MODULES[m].relative_to(REPO_ROOT)} imports {t}" for m in MODULES if m.startswith("counterfactual_lab.tasks")
                 for t in EDGES[m] if t.startswith("counterfactual_lab.flows")]
    assert offenders == []


def strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, []):
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle_between_files():
    assert strongly_connected(EDGES) == []


def test_no_import_cycle_between_folders():
    """Between sibling folders: a package's face (its parent) imports its subpackages by design."""
    def folder(module: str) -> str:
        return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]

    def nested(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in EDGES.items():
        for target in targets:
            if folder(target) != folder(module) and not nested(folder(module), folder(target)):
                folders[folder(module)].add(folder(target))
    assert strongly_connected({k: sorted(v) for k, v in folders.items()}) == []


def test_the_cycle_checks_can_fail():
    """The checks above see a cycle and an upward import when there is one."""
    assert strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert strongly_connected({"a": ["b"], "b": []}) == []
    assert LAYER_OF["config"] < LAYER_OF["generation"] < LAYER_OF["report"]


def test_each_generation_method_name_is_written_in_at_most_two_files():
    """A method is its editor module plus its row in config/methods.py: its name is a string in
    the table, and at most one other file (the config's default, the planted-bias world's config)."""
    from counterfactual_lab.config.methods import METHODS

    files_of: dict[str, set[str]] = defaultdict(set)
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in METHODS:
                files_of[node.value].add(str(path.relative_to(REPO_ROOT)))
    assert files_of["img2img"] >= {"counterfactual_lab/config/methods.py"}, "the scan finds the table"
    crowded = {name: sorted(files) for name, files in files_of.items() if len(files) > 2}
    assert crowded == {}


def test_every_methods_editor_is_importable_and_its_table_row_is_complete():
    from counterfactual_lab.config.methods import METHODS

    for name, facts in METHODS.items():
        editor = facts.editor_class()
        assert hasattr(editor, "edit"), name
        facts.require_editor(editor)


def test_the_installed_packages_are_the_library_and_its_orchestration_under_one_name():
    """No top-level ``tasks`` or ``flows`` on the import path; every folder of the library is
    installed (a moved folder breaks this test, not a deploy)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    assert all(name == "counterfactual_lab" or name.startswith("counterfactual_lab.") for name in packages)
    folders = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in LIBRARY.rglob("__init__.py")}
    assert folders | {"counterfactual_lab.flows", "counterfactual_lab.tasks"} == packages
    assert setuptools["package-dir"] == {"counterfactual_lab.flows": "flows", "counterfactual_lab.tasks": "tasks"}
    assert project["project"]["scripts"]["cflab"].startswith("counterfactual_lab.flows.")


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import counterfactual_lab
names = sorted(m.name for m in pkgutil.walk_packages(counterfactual_lab.__path__, "counterfactual_lab."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "prefect": sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect.")),
                  "top_level": [m for m in ("flows", "tasks") if m in sys.modules]}))
"""


def test_importing_every_library_module_imports_no_prefect():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE], cwd="/", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # The walk really covered the library (subpackages included), so an empty list means something.
    assert {"counterfactual_lab.api", "counterfactual_lab.generation.batch", "counterfactual_lab.metrics.table",
            "counterfactual_lab.generation.planted"} <= set(found["modules"])
    assert found["prefect"] == [], f"library modules imported Prefect: {found['prefect'][:5]}"
    assert found["top_level"] == []


@pytest.mark.parametrize("module", ["counterfactual_lab.flows.audit", "counterfactual_lab.flows.watch",
                                    "counterfactual_lab.flows.cli", "counterfactual_lab.tasks.generate"])
def test_the_orchestration_side_imports_from_outside_the_repository(module):
    """Installed, the orchestration side is importable from anywhere under its own name."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd="/", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_prefect_yaml_entrypoints_name_flows_that_exist():
    import yaml

    deployments = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        file, _, function = deployment["entrypoint"].partition(":")
        tree = ast.parse((REPO_ROOT / file).read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, deployment["entrypoint"]


def test_every_import_inside_a_function_says_why_it_is_there():
    """An import belongs at the top of its module; one inside a function (to keep torch, diffusers
    or Prefect out of an import that does not need them) carries its reason as a comment."""
    silent = []
    for path in python_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = lines[node.lineno - 1] + lines[node.end_lineno - 1]
                    above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                    if "#" not in here and not above.startswith("#"):
                        silent.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert silent == []


def test_the_tests_mirror_the_library():
    """tests/<stage>/ holds a stage's tests, beside its name; tests/flows/ the orchestration side's."""
    test_folders = {p.name for p in (REPO_ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    stages = {p.name for p in LIBRARY.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert test_folders - {"__pycache__"} <= stages | {"flows"}, "a tests/ folder that names no stage"
    untested = sorted(stage for stage in stages if stage not in test_folders)
    assert untested == [], f"stages without a tests/<stage>/ folder: {untested}"
