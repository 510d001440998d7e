"""The library never imports Prefect: ``counterfactual_lab`` is plain Python, and only ``tasks/``
and ``flows/`` (which the CLI reaches through lazy imports when it runs a flow) know Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import counterfactual_lab
names = sorted(m.name for m in pkgutil.walk_packages(counterfactual_lab.__path__, "counterfactual_lab."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "prefect": sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))}))
"""


def test_importing_every_library_module_imports_no_prefect():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # The walk really covered the library (subpackages included), so an empty list means something.
    assert {"counterfactual_lab.cli", "counterfactual_lab.generation.batch", "counterfactual_lab.metrics.table",
            "counterfactual_lab.validity.editor"} <= set(found["modules"])
    assert found["prefect"] == [], f"library modules imported Prefect: {found['prefect'][:5]}"


def test_no_library_source_imports_prefect_even_inside_a_function():
    """A lazy ``from prefect... import`` inside a function escapes the import test above until
    the function runs; the source must not hold one at all (the CLI reaches Prefect through
    ``flows``, e.g. ``flows.temporary_server.prefect_api``)."""
    import ast

    offenders = []
    for path in sorted((REPO_ROOT / "counterfactual_lab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name == "prefect" or name.startswith(("prefect.", "prefect_")):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {name}")
    assert offenders == []
