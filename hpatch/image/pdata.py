"""Functions and fragments from .pdata: which unwind entries start a function and
which continue another one."""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import compress
from typing import TYPE_CHECKING

from hpatch.arch import SiteColumns, SiteKind, UnwindEntry
from hpatch.image.model import Fragment

if TYPE_CHECKING:
    from hpatch.image.reader import PEImage

_SPLIT_PART_NAME = re.compile(r"^(.+)\.cold(?:\.\d+)?$")
#: Bytes that may separate a fragment from the function it continues (an epilog
#: instruction left outside both unwind ranges, alignment).
_FRAGMENT_SLACK = 16


class Ranges:
    """Sorted, disjoint [start, end) ranges with point lookup."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        ordered = sorted(ranges)
        self.starts = [s for s, _ in ordered]
        self.ends = [e for _, e in ordered]

    def find(self, rva: int) -> int | None:
        index = bisect.bisect_right(self.starts, rva) - 1
        if index >= 0 and rva < self.ends[index]:
            return index
        return None


def split_parts(image: PEImage) -> dict[int, int]:
    """Split-off parts named by the symbol table (``foo.cold``) -> the RVA of ``foo``."""
    function_rvas = {s.name: s.rva for s in image.symbols if s.is_function}
    parts = {}
    for symbol in image.symbols:
        match = _SPLIT_PART_NAME.match(symbol.name)
        if symbol.is_function and match and match.group(1) in function_rvas:
            parts[symbol.rva] = function_rvas[match.group(1)]
    return parts


def runs_into(image: PEImage, entry: UnwindEntry) -> bool:
    """True if the code of ``entry`` runs on past its end, into what follows it."""
    return image.arch.runs_on(image.read, entry.begin_rva, entry.end_rva)


def pdata_functions(
    image: PEImage,
    sites: SiteColumns,
    referenced: Callable[[], set[int]],
    entry_references: Callable[[], set[int]],
) -> tuple[dict[int, int], dict[int, list[Fragment]]]:
    """Primary .pdata ranges (start -> end) and the fragments folded into them.

    A fragment whose unwind data names no parent (ARM64 fragments, gcc ``.cold``
    parts) belongs to the one function that jumps to it; failing that, to the
    function whose last part ends right before it; failing both, it stands alone.
    A frameless entry (gcc gives even frameless ``.cold`` parts .pdata) that nothing
    calls, exports, names or points at, and that only one function reaches by
    conditional jumps, is a fragment of that function. ``referenced`` gives the
    RVAs with evidence other than conditional jumps. A primary entry that the entry
    before it runs on into, that nothing but jumps from that function reaches (no
    call, pointer, address or stated start: ``entry_references``), continues that
    function. Where the symbol table names a part (``foo.cold``), the name decides.
    """
    entries = image.unwind_entries
    named_parts = split_parts(image)
    owner: dict[int, int] = dict(named_parts)
    for entry in entries:
        if entry.begin_rva in named_parts:
            continue
        if not entry.is_fragment:
            owner[entry.begin_rva] = entry.begin_rva
        elif entry.parent_rva is not None:
            owner[entry.begin_rva] = entry.parent_rva
    all_ranges = Ranges((e.begin_rva, e.end_rva) for e in entries)
    starts = {e.begin_rva for e in entries}
    jumpers: dict[int, set[int]] = defaultdict(set)
    jumped_from_elsewhere: set[int] = set()
    conditional_only: dict[int, bool] = {}  # absent: True
    # Only the sites whose targets are entries, picked out at C speed (a 20 MB DLL has
    # hundreds of thousands of sites, a few thousand of them into entries).
    into_entries = compress(zip(*sites, strict=True), map(starts.__contains__, sites.targets))
    for site_rva, target_rva, kind in into_entries:
        if kind not in (SiteKind.JUMP, SiteKind.COND_JUMP):
            continue
        index = all_ranges.find(site_rva)
        if index is None:
            jumped_from_elsewhere.add(target_rva)  # code no entry covers (a leaf)
        elif all_ranges.starts[index] != target_rva:
            jumpers[target_rva].add(all_ranges.starts[index])
            if kind != SiteKind.COND_JUMP:
                conditional_only[target_rva] = False

    known_references: set[int] | None = None

    def jumping_root(begin: int) -> int | None:
        # .get, not [...]: a lookup must not add an empty set per entry (a million
        # frameless entries made a million sets)
        roots = {owner.get(rva) for rva in jumpers.get(begin, ())}
        return roots.pop() if len(roots) == 1 and None not in roots else None

    entry_evidence: set[int] | None = None

    def continued_root(position: int) -> int | None:
        # MSVC (ARM64) gives a function whose prolog is shrink-wrapped a primary entry per
        # stage of its frame: the code before runs on into the next stage's entry, which
        # nothing else reaches. Such an entry is a part of the function it continues.
        nonlocal entry_evidence
        before, begin = entries[position - 1], entries[position].begin_rva
        root = owner.get(before.begin_rva)
        if root is None or before.end_rva != begin:
            return None
        if entry_evidence is None:
            entry_evidence = entry_references()
        if begin in entry_evidence or begin in jumped_from_elsewhere:
            return None
        if any(owner.get(rva) != root for rva in jumpers.get(begin, ())):
            return None
        return root if runs_into(image, before) else None

    for position, entry in enumerate(entries):
        begin = entry.begin_rva
        if begin in named_parts:
            continue
        continued = None
        if image.arch.pdata_stages_continue and not entry.is_fragment and position:
            continued = continued_root(position)
        if continued is not None:
            owner[begin] = continued
        elif entry.is_fragment and entry.parent_rva is None:
            parent = jumping_root(begin)
            if parent is None and position:
                before = entries[position - 1]
                if begin - before.end_rva <= _FRAGMENT_SLACK and before.begin_rva in owner:
                    parent = owner[before.begin_rva]
            owner[begin] = parent if parent is not None else begin
        elif entry.frameless and conditional_only.get(begin, True):
            if known_references is None:
                known_references = referenced()
            if begin in known_references:
                continue
            parent = jumping_root(begin)
            if parent is not None:
                owner[begin] = parent
    primaries: dict[int, int] = {}
    fragments: dict[int, list[Fragment]] = defaultdict(list)
    for entry in entries:
        root = owner[entry.begin_rva]
        if root == entry.begin_rva:
            primaries[root] = entry.end_rva
    for entry in entries:
        root = owner[entry.begin_rva]
        if root == entry.begin_rva:
            continue
        if root not in primaries:
            primaries[entry.begin_rva] = entry.end_rva
            continue
        fragments[root].append(Fragment(entry.begin_rva, entry.end_rva - entry.begin_rva))
    return primaries, fragments
