"""Packages and diffs made wrong on purpose, one thing at a time."""

from __future__ import annotations

import copy
import dataclasses

from hpatch.arch import RefKind
from hpatch.diff import DiffResult, Status
from hpatch.diff.classify import Correspondence
from hpatch.package import Package
from hpatch.package.model import FixupEntry, PatchFunction, TargetKind

#: How far a corrupted fixup target moves: past any page and any short instruction.
SHIFT = 0x1010


def owner(package: Package, region_offset: int) -> PatchFunction:
    """The function whose code holds region byte ``region_offset``."""
    for function in package.functions:
        for part in function.parts:
            if part.offset <= region_offset < part.offset + part.size:
                return function
    raise AssertionError(f"no function holds region offset 0x{region_offset:x}")


def corrupt_fixup(package: Package) -> tuple[Package, PatchFunction]:
    """The package with its first fixup against old code or data moved by SHIFT bytes."""
    for index, fixup in enumerate(package.fixups):
        if fixup.target_kind != TargetKind.OLD_RVA:
            continue
        try:
            function = owner(package, fixup.offset)
        except AssertionError:
            continue  # a fixup in data or in the unwind table
        moved: FixupEntry = dataclasses.replace(fixup, target=fixup.target + SHIFT)
        fixups = (*package.fixups[:index], moved, *package.fixups[index + 1 :])
        return dataclasses.replace(package, fixups=fixups), function
    raise AssertionError("the package has no fixup against old code or data")


def swap_callee(diff: DiffResult) -> tuple[DiffResult, str]:
    """The diff with an unchanged callee of a modified function matched to another old
    function (and that one's match to the callee's): the name of the modified caller."""
    unchanged = sorted(c.new.rva for c in diff.with_status(Status.UNCHANGED) if c.new is not None)
    fingerprints = diff.correspondence.new.fingerprints
    for change in diff.with_status(Status.MODIFIED):
        assert change.new is not None
        callees = [
            r.target_rva
            for r in fingerprints[change.new.rva].references
            if r.kind == RefKind.CALL and r.target_rva in unchanged
        ]
        if callees:
            break
    else:
        raise AssertionError("no modified function calls an unchanged one")
    callee = callees[0]
    other = next(
        rva
        for rva in unchanged
        if rva != callee and fingerprints[rva].digest != fingerprints[callee].digest
    )
    by_new = {m.new_rva: m for m in diff.matches}
    first, second = by_new[callee], by_new[other]
    matches = tuple(
        dataclasses.replace(m, old_rva=second.old_rva)
        if m is first
        else dataclasses.replace(m, old_rva=first.old_rva)
        if m is second
        else m
        for m in diff.matches
    )
    correspondence = Correspondence(diff.correspondence.old, diff.correspondence.new, matches)
    swapped = dataclasses.replace(diff, matches=matches, correspondence=correspondence)
    name = change.new.name or f"sub_{change.new.rva:x}"
    return swapped, name


def carry(diff: DiffResult, new_rva: int) -> DiffResult:
    """The diff with the unchanged function at ``new_rva`` counted as modified, so that
    its package carries it (as an update that changes it would)."""
    changes = tuple(
        dataclasses.replace(c, status=Status.MODIFIED, reason="carried on purpose")
        if c.new is not None and c.new.rva == new_rva and c.status == Status.UNCHANGED
        else c
        for c in diff.changes
    )
    assert changes != diff.changes, f"no unchanged function at 0x{new_rva:x}"
    return dataclasses.replace(diff, changes=changes)


def misplace_global(diff: DiffResult, new_rva: int, old_rva: int) -> DiffResult:
    """The diff with the writable global at ``new_rva`` taken for the one at ``old_rva``
    of the old image, as if the global had moved there (a wrong correlation that the
    initial values cannot show: both hold the same bytes)."""
    correspondence = copy.copy(diff.correspondence)
    correspondence.writable_moves = {**correspondence.writable_moves, old_rva: new_rva}
    # without its layout, the section's globals are placed by offset and by the moves
    section = diff.new.section_at(new_rva)
    correspondence.layouts = {
        name: layout
        for name, layout in correspondence.layouts.items()
        if section is None or name != section.name
    }
    return dataclasses.replace(diff, correspondence=correspondence)
