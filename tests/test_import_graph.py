"""Imports between hpatch's modules run one way: no module imports, at any depth and
at any place in it (a function's deferred import too), a module that imports it back.
Imports for type checking only are not imports at run time and are left out."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "hpatch"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
            continue
        yield child
        yield from _runtime_nodes(child)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from package import module`` imports that module, not the package's body
            subs = {f"{module}.{alias.name}" for alias in node.names} & set(known)
            found |= subs or ({module} & set(known))
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_inside_hpatch() -> None:
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_the_check_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_backend_imports_the_twins(tmp_path: Path) -> None:
    """The twins are the C core's oracle, not a utility library: code that cross-checks
    the core (the relocators, site prediction) must not share code with it."""
    known = modules()
    importers = {
        name
        for name, path in known.items()
        if not name.startswith("hpatch._fallback")
        and any(m.startswith("hpatch._fallback") for m in imports_of(name, path, known))
    }
    assert "hpatch._fallback.scan" in known
    assert importers == set()
    # the backend loads it by name, when it is chosen
    assert 'import_module("hpatch._fallback")' in known["hpatch._backend"].read_text()
    # and the walk does see an import of the twins where there is one
    probe = tmp_path / "probe.py"
    probe.write_text("from hpatch._fallback.scan import normalise_x64\n", encoding="utf-8")
    assert imports_of("probe", probe, known) == {"hpatch._fallback.scan"}
