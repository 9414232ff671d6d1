"""Outside hpatch/arch nothing branches on the machine: code asks the Arch for a fact
(``arch_for(machine).pdata_entry_size``, ``.predict_sites(...)``, ...) instead of
comparing the machine with a member of ``Machine``. The emulator's register tables
(``hpatch/emu/cpu.py``, Unicorn's numbers for each machine) are the one table keyed by
machine outside hpatch/arch, and they are a lookup, not a comparison."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "hpatch"
MEMBERS = frozenset(("AMD64", "ARM64"))
#: Files outside hpatch/arch that may name a machine (as a table's key, never compared).
TABLES = frozenset(("emu/cpu.py",))


def _members(node: ast.AST) -> list[ast.Attribute]:
    """``Machine.AMD64`` and ``Machine.ARM64`` (however Machine was reached) in ``node``."""
    return [
        found
        for found in ast.walk(node)
        if isinstance(found, ast.Attribute)
        and found.attr in MEMBERS
        and (
            (isinstance(found.value, ast.Name) and found.value.id == "Machine")
            or (isinstance(found.value, ast.Attribute) and found.value.attr == "Machine")
        )
    ]


def machine_branches(source: str) -> list[int]:
    """Lines where a comparison (``==``, ``!=``, ``is``, ``in``, a ``match`` case) holds a
    member of Machine."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            lines += [found.lineno for found in _members(node)]
        elif isinstance(node, ast.match_case):
            lines += [found.lineno for found in _members(node.pattern)]
    return sorted(set(lines))


def outside_arch() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] != "arch")


def test_no_module_outside_arch_compares_the_machine() -> None:
    paths = outside_arch()
    assert len(paths) > 50  # the walk found the package
    found = {
        str(path.relative_to(ROOT)): lines
        for path in paths
        if (lines := machine_branches(path.read_text(encoding="utf-8")))
    }
    assert found == {}, "ask the Arch (hpatch/arch) instead of comparing the machine"


def test_only_the_register_tables_name_a_machine_outside_arch() -> None:
    named = {
        str(path.relative_to(ROOT))
        for path in outside_arch()
        if _members(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert named <= TABLES


def test_the_check_finds_each_form_of_branch() -> None:
    source = """
if machine == Machine.AMD64: pass
size = 12 if image.machine != hpatch.arch.Machine.ARM64 else 8
ok = machine in (Machine.AMD64, Machine.ARM64)
match machine:
    case Machine.ARM64: pass
table = {Machine.AMD64: 1}
"""
    assert machine_branches(source) == [2, 3, 4, 6]
