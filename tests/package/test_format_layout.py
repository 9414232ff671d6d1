"""The format package's modules import one another one way (no circle), and none of
them imports the package itself: each job's module can be read, and loaded, on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import hpatch.package.format as package_format

HOME = Path(package_format.__file__).parent
PACKAGE = "hpatch.package.format"
MODULES = sorted(p.stem for p in HOME.glob("*.py") if p.stem != "__init__")


def siblings(module: str) -> set[str]:
    """The modules of the format package that ``module`` imports."""
    tree = ast.parse((HOME / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == PACKAGE:
                found.add("__init__")
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + "."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE + "."))
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_the_package_itself(module: str) -> None:
    assert "__init__" not in siblings(module)


def test_the_imports_between_the_modules_form_no_circle() -> None:
    graph = {module: siblings(module) for module in MODULES}
    assert any(graph.values())  # the walk below sees the imports
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"import circle: {exc.args[1]}")
    assert set(order) == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    code = f"import {PACKAGE}.{module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
