"""Globals only the new build has, carried in the package (BlobKind.DATA).

A fix that adds a global (a counter, a quota, a table, a pointer to a new string)
brings bytes the running image has nowhere. The package carries each such range with
the new build's initial bytes in DATA blobs: the first pages of the patch region, which
hold nothing else and which the applier leaves writable (the rest is executable, never
both). Pointers in them are fixups like the code's; every global the old image has
stays where it is and is reached through fixups (the code is replaced, the data stays).

Each package starts its new globals from their initial bytes: a package that replaces
another one carries them again, from the same initial bytes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hpatch.arch import Machine
from hpatch.errors import PackageFormatError
from hpatch.package.format.wire import arch_of
from hpatch.package.model import BlobKind, Package

if TYPE_CHECKING:  # the applier reads data pages and never loads the differ
    from hpatch.diff.api import DiffResult
    from hpatch.diff.correlate import Correlator
    from hpatch.diff.data_layout import WritableLayout

PAGE = 4096


def inserted_ranges(
    targets: Iterable[int],
    layouts: Iterable[WritableLayout],
    pointers: Callable[[int, int], list[int]],
) -> list[tuple[int, int]]:
    """The inserted ranges (new RVAs, [start, end)) holding ``targets``, and those the
    pointers in them name in turn (``pointers(start, end)``: the RVAs the relocated
    fields of a range name), sorted."""
    spans = [span for layout in layouts for span in layout.inserted]
    taken: set[tuple[int, int]] = set()
    pending = list(targets)
    while pending:
        target = pending.pop()
        for span in spans:
            if span[0] <= target < span[1] and span not in taken:
                taken.add(span)
                pending.extend(pointers(*span))
    return sorted(taken)


def carried_spans(diff: DiffResult, correlator: Correlator) -> list[tuple[int, int]]:
    """The new globals a package of ``diff`` carries: the inserted ranges the carried
    code names, and those the pointers in them name in turn ([start, end) new RVAs)."""
    from hpatch.diff.classify import Status
    from hpatch.diff.correlate import Resolution

    carried = {
        c.new.rva
        for c in diff.changes
        if c.new is not None and c.status in (Status.MODIFIED, Status.ADDED)
    }
    new = diff.correspondence.new
    targets = [
        reference.target_rva
        for rva in sorted(carried)
        for reference in new.fingerprints[rva].references
        if correlator.resolve(reference).resolution == Resolution.NEW_DATA
    ]
    if not targets:
        return []
    relocated = new.relocated

    def pointers(start: int, end: int) -> list[int]:
        low, high = bisect.bisect_left(relocated, start), bisect.bisect_left(relocated, end)
        return [new.pointer_at(f) for f in relocated[low:high] if f + 8 <= end]

    return inserted_ranges(targets, diff.correspondence.layouts.values(), pointers)


def alignment(machine: Machine) -> int:
    """How each carried global keeps its RVA's low bits: on ARM64 its page offset (the
    instruction completing an ADRP keeps them), elsewhere its 16-byte alignment."""
    return PAGE if arch_of(machine).data_by_page else 16


def span_offsets(spans: list[tuple[int, int]], alignment: int) -> list[int]:
    """The region offset of each span, placed in order from offset 0, each keeping its
    RVA's offset modulo ``alignment`` (the builder places them so)."""
    offsets, end = [], 0
    for start, stop in spans:
        end += (start % alignment - end) % alignment
        offsets.append(end)
        end += stop - start
    return offsets


def data_pages(package: Package) -> list[tuple[int, int]]:
    """The [start, end) region offsets of the pages holding DATA blobs, page-rounded."""
    pages: list[tuple[int, int]] = []
    for blob in package.blobs:
        if blob.kind != BlobKind.DATA:
            continue
        start = blob.offset - blob.offset % PAGE
        end = blob.offset + blob.size
        end += -end % PAGE
        if pages and start <= pages[-1][1]:
            pages[-1] = (pages[-1][0], max(end, pages[-1][1]))
        else:
            pages.append((start, end))
    return pages


def validate(package: Package) -> None:
    """DATA blobs share no page with any other blob: those pages become writable."""
    pages = data_pages(package)
    if not pages:
        return
    for blob in package.blobs:
        if blob.kind == BlobKind.DATA:
            continue
        for start, end in pages:
            if blob.offset < end and blob.offset + blob.size > start:
                raise PackageFormatError(
                    f"the {blob.kind.name} blob at region offset 0x{blob.offset:x} shares a "
                    "page with new data, which is writable"
                )
