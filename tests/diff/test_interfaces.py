"""Imports and exports in the verdict: one blocker per real change, named both sides."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from hpatch.blockers import Blocker, BlockerCause, BlockerClass, BlockerKind, Build
from hpatch.diff import DiffResult
from hpatch.diff.match import Side
from hpatch.diff.verdict import Verdict
from hpatch.image import Export, Import, PEImage

from ..conftest import BUILDS
from .samples import sample_diff


def interface_blockers(
    diff: DiffResult,
    *,
    old_exports: tuple[Export, ...] | None = None,
    new_exports: tuple[Export, ...] | None = None,
    new_imports: tuple[Import, ...] | None = None,
    new_pointers: dict[int, int] | None = None,
) -> list[Blocker]:
    """check_interfaces over the diff's builds, with the listed tables of either replaced."""
    correspondence = diff.correspondence

    def side_with(side: Side, **tables: object) -> Side:
        image: PEImage = copy.copy(side.image)
        for name, table in tables.items():
            if table is not None:
                setattr(image, name, table)
        changed = copy.copy(side)
        changed.image = image
        return changed

    verdict = Verdict(
        side_with(correspondence.old, exports=old_exports),
        side_with(
            correspondence.new, exports=new_exports, imports=new_imports, pointers=new_pointers
        ),
        correspondence,
    )
    verdict.check_interfaces()
    return verdict.blockers


def with_insertion(exports: tuple[Export, ...], name: str, rva: int) -> tuple[Export, ...]:
    """The export table a linker makes with ``name`` added: ordinals follow the sorted
    names, so every export after it is renumbered."""
    named = sorted(
        [*(e for e in exports if e.name is not None), Export(0, name, rva, None)],
        key=lambda e: e.name or "",
    )
    return tuple(dataclasses.replace(e, ordinal=n) for n, e in enumerate(named, start=1))


@pytest.mark.parametrize("build", BUILDS)
def test_the_samples_keep_their_interfaces(build: str) -> None:
    """Functions move between builds, exports with them: no interface blocker."""
    for old, new in (("v1", "v2"), ("v1", "v4")):
        assert interface_blockers(sample_diff(build, old, new)) == []


@pytest.mark.parametrize("build", BUILDS)
def test_an_added_export_is_one_blocker_though_every_ordinal_after_it_shifts(build: str) -> None:
    diff = sample_diff(build, "v1", "v2")
    exports = diff.new.exports
    function = next(e for e in exports if e.name == "hp_adler32")
    grown = with_insertion(exports, "hp_aaa_added", function.rva)
    shifted = {(e.ordinal, e.name) for e in exports} - {(e.ordinal, e.name) for e in grown}
    assert len(shifted) == len(exports)  # compared by ordinal, every export would differ
    blockers = interface_blockers(diff, new_exports=grown)
    assert [(b.kind, b.cause, b.symbol) for b in blockers] == [
        (BlockerKind.EXPORTS, BlockerCause.EXPORT_ADDED, "hp_aaa_added")
    ]
    (added,) = blockers
    assert added.blocker_class == BlockerClass.HAZARD
    assert added.rva == function.rva and added.build == Build.NEW


@pytest.mark.parametrize("build", BUILDS)
def test_a_removed_export_and_one_without_a_name(build: str) -> None:
    diff = sample_diff(build, "v1", "v2")
    exports = diff.new.exports
    gone = exports[3]
    kept = tuple(
        dataclasses.replace(e, ordinal=n)
        for n, e in enumerate((e for e in exports if e is not gone), start=1)
    )
    unnamed = Export(100, None, exports[0].rva, None)
    blockers = interface_blockers(diff, new_exports=(*kept, unnamed))
    assert sorted((b.cause.value, b.symbol) for b in blockers) == [
        ("export_added", "ordinal 100"),
        ("export_removed", gone.name),
    ]
    removed = next(b for b in blockers if b.cause == BlockerCause.EXPORT_REMOVED)
    assert removed.build == Build.OLD
    assert removed.rva == next(e.rva for e in diff.old.exports if e.name == gone.name)


@pytest.mark.parametrize("build", BUILDS)
def test_a_changed_forwarder_or_target_is_a_change_a_move_is_not(build: str) -> None:
    diff = sample_diff(build, "v1", "v2")
    old_exports, new_exports = diff.old.exports, diff.new.exports
    first, second = new_exports[0], new_exports[1]
    forwarded = Export(200, "hp_forwarded", 0, "samplehost.host_log")
    blockers = interface_blockers(
        diff,
        old_exports=(*old_exports, forwarded),
        new_exports=(
            dataclasses.replace(first, rva=second.rva),  # names another function now
            *new_exports[1:],
            dataclasses.replace(forwarded, forwarder="samplehost.host_now"),
        ),
    )
    assert sorted((b.cause.value, b.symbol) for b in blockers) == [
        ("export_changed", first.name),
        ("export_changed", "hp_forwarded"),
    ]
    reasons = {b.symbol: b.reason for b in blockers}
    assert "samplehost.host_now instead of samplehost.host_log" in reasons["hp_forwarded"]
    assert all(b.blocker_class == BlockerClass.HAZARD for b in blockers)


@pytest.mark.parametrize("build", BUILDS)
def test_a_new_import_blocks_only_when_data_names_it_a_changed_dll_names_both_sides(
    build: str,
) -> None:
    diff = sample_diff(build, "v1", "v2")
    imports = diff.new.imports
    first = imports[0]
    renamed = dataclasses.replace(first, dll="samplehost-2.dll")
    new_slot = max(i.iat_rva for i in imports) + 8
    added = Import("kernel32.dll", "Sleep", None, new_slot)
    table = (renamed, *imports[1:], added)
    # Nothing names the new import (carried code would, and the package carries its slot).
    blockers = interface_blockers(diff, new_imports=table)
    assert [b.cause for b in blockers] == [BlockerCause.IMPORT_DLL_CHANGED]
    (moved,) = blockers
    assert moved.blocker_class == BlockerClass.LIMITATION
    old_slot = next(i for i in diff.old.imports if i.name == first.name)
    expected = f"IAT slot 0x{first.iat_rva:x}"
    if old_slot.iat_rva != first.iat_rva:
        expected += f" (0x{old_slot.iat_rva:x} in the old build)"
    assert moved.where == (
        f"{expected}: samplehost.dll!{first.name} -> samplehost-2.dll!{first.name}"
    )
    assert moved.symbol == f"samplehost-2.dll!{first.name}"
    # Data naming its slot is what a package cannot change.
    data = next(s for s in diff.new.sections if s.name == ".data")
    pointers = {**diff.new.pointers, data.rva + 8: new_slot}
    blockers = interface_blockers(diff, new_imports=table, new_pointers=pointers)
    by_cause = {b.cause: b for b in blockers}
    assert set(by_cause) == {BlockerCause.IMPORT_DLL_CHANGED, BlockerCause.NEW_IMPORT}
    new = by_cause[BlockerCause.NEW_IMPORT]
    assert new.kind == BlockerKind.IMPORTS and new.blocker_class == BlockerClass.LIMITATION
    assert new.where == new.symbol == "kernel32.dll!Sleep"
    assert new.rva == new_slot and new.build == Build.NEW
    assert f"data at RVA 0x{data.rva + 8:x}" in new.reason
