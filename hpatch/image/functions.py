"""Function discovery: where each function starts, how long it is, and the evidence for it.

.pdata ranges (hpatch.image.pdata) and the starts the image states outright
(hpatch.image.evidence) come first; leaf functions without unwind data are then found
in the gaps from references in code and data, and dead code from its shape alone,
repeating until nothing changes; last,
each function's inline data, fall-through tails and padding are claimed. The rules are
described in docs/image-model.md.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import struct
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from hpatch._backend import core
from hpatch.arch import SiteColumns, SiteKind
from hpatch.cyclic_gc import collector_paused
from hpatch.errors import ImageFormatError
from hpatch.image.evidence import STRONG, exact_starts, relocated_pointers
from hpatch.image.model import (
    DataKind,
    DataRange,
    Evidence,
    Fragment,
    Function,
    Section,
)
from hpatch.image.pdata import Ranges, pdata_functions

if TYPE_CHECKING:
    from hpatch.image.reader import PEImage

_MAX_ROUNDS = 16
#: Bytes of the longest padding instruction (an x64 multi-byte nop), with room to spare.
_LONGEST_PADDING = 16
# Evidence is collected as bit masks, one bit per kind in the order of Evidence (the
# order a function lists its sources in): tens of thousands of targets gather it, and
# sets of enum members hash each member through Python code.
_BIT = {e: 1 << i for i, e in enumerate(Evidence)}
_STRONG = sum(_BIT[e] for e in STRONG)
_SITE_BIT = {
    int(SiteKind.CALL): _BIT[Evidence.CALL],
    int(SiteKind.JUMP): _BIT[Evidence.JUMP],
    int(SiteKind.COND_JUMP): _BIT[Evidence.JUMP],
    int(SiteKind.ADDRESS): _BIT[Evidence.ADDRESS],
}
#: _SITE_BIT as a list indexed by kind (0 where a kind gives no evidence).
_SITE_BITS = [_SITE_BIT.get(kind, 0) for kind in range(max(SiteKind) + 1)]
#: Private bits after those of Evidence (a function's sources never list them):
#: ``_ENTRY``, a reference that only a function entry explains: a call, or a jump or
#: an address taken from outside the referencing function (a tail call, a function
#: pointer), its site checked to be an instruction; ``_FOREIGN``, such a reference
#: that is a call or comes from a function other than the code right before the target.
_ENTRY = 1 << len(Evidence)
_FOREIGN = _ENTRY << 1
_CALL = _BIT[Evidence.CALL]
_NOT_A_JUMP = _CALL | _BIT[Evidence.ADDRESS]
_ACCEPTED = _STRONG | _ENTRY
#: What the core's reference_evidence marks entries with.
_ENTRY_BITS = (_CALL, _ENTRY, _FOREIGN, _NOT_A_JUMP)
#: The bits that decide what a gap holds.
_DECISIVE = _STRONG | _ENTRY | _FOREIGN
#: What the core's gap_leaves weighs candidates with: (accepted, strong).
_WALK_BITS = (_ACCEPTED, _STRONG)
_LOAD = int(SiteKind.LOAD)
_ADDRESS = int(SiteKind.ADDRESS)
_JUMP = int(SiteKind.JUMP)
_COND_JUMP = int(SiteKind.COND_JUMP)
_SOURCES: dict[int, tuple[Evidence, ...]] = {}


def _mask(sources: Iterable[Evidence]) -> int:
    return sum(_BIT[e] for e in set(sources))


def _sources(mask: int) -> tuple[Evidence, ...]:
    """The evidence a mask holds, in the order of Evidence."""
    found = _SOURCES.get(mask)
    if found is None:
        found = _SOURCES[mask] = tuple(e for e in Evidence if mask & _BIT[e])
    return found


class _Discovery:
    def __init__(self, image: PEImage) -> None:
        self.image = image
        self.arch = image.arch
        self.code_sections = image.executable_sections
        self.extents: dict[tuple[int, int], int | None] = {}
        #: (start, end) -> sites of the references a linear decode of the range finds,
        #: sorted: a column, not a set (an int and a slot each: 24 MB for a 20 MB DLL).
        self.decoded: dict[tuple[int, int], array[int]] = {}
        exact, self.names = exact_starts(image)
        self.iat_slots = {i.iat_rva: i for i in image.imports}
        self.thunk_names: dict[int, str] = {}
        #: .pdata start -> the entry before it that runs into it (see leaves_in_gap).
        self.pre_entries: dict[int, int] = {}
        #: The references into code, as columns in site order (loads left out).
        self.sites = SiteColumns(array("I"), array("I"), array("B"))
        self.pointers: list[int] = []
        #: PC-relative loads from code (literal pools), as (site, target) in site order.
        self.load_sites: list[tuple[int, int]] = []
        #: Sites that load __ImageBase (an address of RVA 0): MSVC indexes tables of RVAs.
        self.image_base_sites: list[int] = []
        if self.code_sections:
            lo = min(s.rva for s in self.code_sections)
            hi = max(s.end_rva for s in self.code_sections)
            self.pointers = relocated_pointers(image, lo, hi)
            # One scan for the references into code and the loads of __ImageBase: a
            # scanner's range only filters the targets it reports.
            scanned = _joined(
                [
                    self.arch.scan_sites(section.data, section.rva, 0, hi)
                    for section in self.code_sections
                ]
            )
            self.image_base_sites = sorted(
                scanned.sites[i]
                for i in _positions(scanned.targets, 0)
                if scanned.kinds[i] == _ADDRESS
            )
            # References into code reveal functions; loads only lead to literal pools.
            self.sites = scanned
            if _LOAD in scanned.kinds or min(scanned.targets, default=lo) < lo:
                rows = zip(*scanned, strict=True)
                self.load_sites = [(s, t) for s, t, k in rows if k == _LOAD and t >= lo]
                kept = [
                    i
                    for i, (t, k) in enumerate(zip(scanned.targets, scanned.kinds, strict=True))
                    if t >= lo and k != _LOAD
                ]
                self.sites = SiteColumns(
                    *(array(column.typecode, map(column.__getitem__, kept)) for column in scanned)
                )
                del kept
            del scanned
        #: (site, target) of every address taken in code, in site order, and the sites.
        sites, targets, kinds = self.sites
        self.address_sites = [(sites[i], targets[i]) for i in _positions(kinds, _ADDRESS)]
        self.address_site_rvas = [s for s, _ in self.address_sites]
        #: Where code takes an address or loads from, sorted.
        self.data_targets = sorted(
            {t for _, t in self.address_sites} | {t for _, t in self.load_sites}
        )
        #: The targets, sites and evidence bits of the sites ordered by target (then
        #: site), as the core takes them; the targets serve lookups by bisection.
        self.columns = _by_target(self.sites)
        self.target_keys = self.columns[0]
        #: RVA -> evidence mask of the exact starts and the relocated pointers: masks, and
        #: the one map of them kept, not the set per start exact_starts gives (200 bytes
        #: each: 200 MB for a million exports).
        self.static_evidence: dict[int, int] = dict.fromkeys(self.pointers, _BIT[Evidence.RELOC])
        for rva, sources in exact.items():
            self.static_evidence[rva] = self.static_evidence.get(rva, 0) | _mask(sources)
        del exact
        self.primaries, self.fragments = pdata_functions(
            image, self.sites, self.referenced, self.entry_references
        )
        self.pdata_ranges = self.covered({})
        self.pdata_starts_by_end = {end: start for start, end in self.primaries.items()}
        self.pdata_starts_by_end.update(
            (f.rva + f.size, f.rva) for parts in self.fragments.values() for f in parts
        )

    def covered(self, leaves: dict[int, int]) -> Ranges:
        ranges = list(self.primaries.items()) + list(leaves.items())
        ranges += [(f.rva, f.rva + f.size) for parts in self.fragments.values() for f in parts]
        return Ranges(ranges)

    def referenced(self) -> set[int]:
        """RVAs with evidence other than conditional jumps (asked only for frameless entries)."""
        return self._evidence_but(frozenset({_COND_JUMP}))

    def entry_references(self) -> set[int]:
        """RVAs with evidence other than jumps: stated starts, pointers, calls, addresses."""
        return self._evidence_but(frozenset({_JUMP, _COND_JUMP}))

    def _evidence_but(self, kinds_left_out: frozenset[int]) -> set[int]:
        """The exact starts, the relocated pointers, and the targets of the sites of every
        kind but ``kinds_left_out``."""
        found = set(self.static_evidence)
        _, targets, kinds = self.sites
        kept = map(operator.not_, map(kinds_left_out.__contains__, kinds))
        found.update(itertools.compress(targets, kept))
        return found

    @cached_property
    def branch_targets(self) -> list[int]:
        """Targets of direct jumps, sorted."""
        _, targets, kinds = self.sites
        jumps = (_JUMP, _COND_JUMP)
        return sorted({t for t, kind in zip(targets, kinds, strict=True) if kind in jumps})

    def evidence_for(self, starts: list[int], known: Ranges) -> dict[int, int]:
        """Evidence masks of ``starts`` (sorted), and of other RVAs: the exact and
        pointer evidence, plus each code reference whose site lies in a function known
        so far."""
        targets, sites, bits = self.columns
        static_targets = sorted(self.static_evidence)
        static_masks = [self.static_evidence[t] for t in static_targets]
        spans = _spans_at(starts, self.target_keys)
        found_targets, found_masks = core.gap_evidence(
            static_targets,
            static_masks,
            _take(targets, spans),
            _take(sites, spans),
            _take(bits, spans),
            known.starts,
            known.ends,
            None,
            self.is_reference_site,
        )
        return dict(zip(found_targets, found_masks, strict=True))

    def is_reference_site(self, start: int, end: int, site_rva: int) -> bool:
        """True if a linear decode of [start, end) has a reference at ``site_rva`` (a
        byte-level scan also reports matches inside other instructions)."""
        sites = self.decoded.get((start, end))
        if sites is None:
            found = self.arch.reference_sites(self.image.read(start, end - start), start)
            sites = self.decoded[start, end] = array("I", sorted(set(found)))
        index = bisect.bisect_left(sites, site_rva)
        return index < len(sites) and sites[index] == site_rva

    def gaps(self, pdata: Ranges) -> list[tuple[Section, int, int]]:
        """Parts of the code sections not covered by .pdata ranges."""
        gaps = []
        for section in self.code_sections:
            cursor = section.rva
            index = bisect.bisect_left(pdata.starts, section.rva)
            while index < len(pdata.starts) and pdata.starts[index] < section.end_rva:
                if pdata.starts[index] > cursor:
                    gaps.append((section, cursor, pdata.starts[index]))
                cursor = max(cursor, pdata.ends[index])
                index += 1
            if cursor < section.end_rva:
                gaps.append((section, cursor, section.end_rva))
        return gaps

    def padding_length(self, section: Section, offset: int, bound: int) -> int:
        """The padding at ``offset`` of the section's data, looked at no further than
        ``bound`` (plus the longest padding instruction, so that one across the bound
        still counts). Unbounded, each call scanned to the end of a zero-filled section,
        and discovery took time quadratic in its size."""
        return self.arch.padding_length(
            section.data[: max(bound, offset) + _LONGEST_PADDING], offset
        )

    def padding_at(self, section: Section, rva: int, limit: int) -> int:
        offset = rva - section.rva
        return min(self.padding_length(section, offset, limit - section.rva), limit - rva)

    def padding_to(self, section: Section, limit: int, rva: int) -> int:
        """``padding_at`` with the limit first, for a partial."""
        return self.padding_at(section, rva, limit)

    def thunk_at(self, rva: int, limit: int) -> int | None:
        """End of the import thunk at ``rva`` (recording its name), or None."""
        try:
            thunk = self.arch.import_thunk(self.image.read, rva)
        except ImageFormatError:
            return None
        if thunk is None or rva + thunk[0] > limit or thunk[1] not in self.iat_slots:
            return None
        imported = self.iat_slots[thunk[1]]
        self.thunk_names[rva] = imported.name or f"{imported.dll}#{imported.ordinal}"
        return rva + thunk[0]

    def addresses_from(self, start: int, end: int) -> list[tuple[int, int]]:
        """(site, target) of the addresses taken by code in [start, end), in site order."""
        rvas = self.address_site_rvas
        return self.address_sites[bisect.bisect_left(rvas, start) : bisect.bisect_left(rvas, end)]

    def table_roots(self, start: int, end: int, bound: int) -> set[int]:
        """Targets of the jump tables that the code in [start, end) addresses."""
        roots: set[int] = set()
        # Tables usually live in data, which the code-wide scan leaves out: rescan the
        # function's own bytes for every address it takes.
        code = self.image.read(start, end - start)
        scanned = self.arch.scan_sites(code, start, 0, self.image.size_of_image)
        addressed = sorted(
            {
                table_rva
                for table_rva in map(
                    scanned.targets.__getitem__, _positions(scanned.kinds, _ADDRESS)
                )
                if not start <= table_rva < end
            }
        )
        for index, table_rva in enumerate(addressed):
            section = self.image.section_at(table_rva)
            if section is None:
                continue
            # A switch's tables lie side by side: each ends where the next one the
            # function addresses begins, or its entries run on into the next table's.
            limit = min(section.end_rva, table_rva + 4096)
            if index + 1 < len(addressed):
                limit = min(limit, addressed[index + 1])
            targets = self.arch.jump_table_targets(self.image.read, table_rva, start, bound, limit)
            if len(targets) >= 2:
                roots.update(targets)
        roots.update(self.arch.dispatch_targets(self.image.read, start, end, bound))
        return roots

    def leaf_extent(self, start: int, bound: int) -> int | None:
        """End of a function without unwind data, following the jump tables it uses."""
        key = (start, bound)
        if key in self.extents:
            return self.extents[key]
        end = self.arch.code_extent(self.image.read, start, bound)
        roots: set[int] = set()
        while end is not None:
            found = self.table_roots(start, end, bound)
            if found <= roots:
                break
            roots |= found
            wider = self.arch.code_extent(self.image.read, start, bound, sorted(roots))
            if wider is None:
                break
            end = wider
        self.extents[key] = end
        return end

    def leaves_in_gap(
        self,
        section: Section,
        gap_start: int,
        gap_end: int,
        targets: list[int],
        masks: list[int],
    ) -> dict[int, int]:
        """Functions without unwind data in [gap_start, gap_end); ``targets`` are the
        candidate starts in the gap, sorted, and ``masks`` their evidence (its
        ``_DECISIVE`` bits are enough)."""
        leaves = self.referenced_in_gap(section, gap_start, gap_end, targets, masks)
        leaves.update(self.unreferenced_in_gap(section, gap_start, gap_end, leaves))
        return leaves

    def referenced_in_gap(
        self,
        section: Section,
        gap_start: int,
        gap_end: int,
        targets: list[int],
        masks: list[int],
    ) -> dict[int, int]:
        """The functions of the gap that references or stated starts reveal.

        A candidate is a function when the image states it (``_STRONG``) or a reference
        only an entry explains points at it (``_ENTRY``). Right after the previous
        function's code, with no padding between, it must be stated or reached from
        elsewhere (``_FOREIGN``), and code that falls through into it owns it. Each
        function ends where its code does, at the latest at the next candidate its
        code does not run into. The walk is the core's (``gap_leaves``); what it asks
        of the image and the arch, it asks through the calls below.
        """

        def runs_into(target: int) -> bool:
            # Straight-line code that runs into a .pdata range is that function's real
            # entry: MSVC ARM64 shrink-wraps, leaving the instructions before the
            # prolog outside the unwind range.
            return gap_end in self.primaries and self.arch.falls_through(
                self.image.read, target, gap_end
            )

        found: dict[int, int]
        found, pre_entry = core.gap_leaves(
            targets,
            masks,
            gap_start,
            gap_end,
            self.arch.instruction_alignment,
            _WALK_BITS,
            functools.partial(self.thunk_at, limit=gap_end),
            self.leaf_extent,
            functools.partial(self.padding_to, section, gap_end),
            functools.partial(self.may_follow, gap_start),
            runs_into,
        )
        if pre_entry is not None:
            self.pre_entries[gap_end] = pre_entry
        return found

    def unreferenced_in_gap(
        self, section: Section, gap_start: int, gap_end: int, leaves: dict[int, int]
    ) -> dict[int, int]:
        """Functions nothing references (dead code the linker kept) between the ones found.

        A run of code after a function that does not run on into it becomes functions
        when it decodes into whole functions back to back, each ending in a return, a
        jump or a trap, with only padding between them and up to the next function,
        and each jumping out of itself only where a tail call may go. A run that
        something addresses or loads from holds data, and one after a function that
        indexes tables through ``__ImageBase`` may hold its table: both are left alone.
        """
        found: dict[int, int] = {}
        # Each run follows the .pdata range before the gap (none at a section's start)
        # or a function found in the gap, and ends where the next one starts.
        runs = [(self.pdata_starts_by_end.get(gap_start), gap_start)]
        runs += sorted(leaves.items())
        next_starts = [*sorted(leaves), gap_end]
        for (previous, run_start), run_end in zip(runs, next_starts, strict=True):
            cursor = run_start + self.padding_at(section, run_start, run_end)
            if cursor >= run_end or self.data_inside(cursor, run_end):
                continue
            if previous is not None and (
                self.loads_image_base(previous, run_start)
                # A function found in the gap ends where its code stops; a range may not.
                or (
                    run_start == gap_start
                    and self.arch.falls_through(self.image.read, previous, run_start)
                )
            ):
                continue
            cursor = self.entry_in_padding(run_start, cursor)
            pieces: dict[int, int] = {}
            while cursor < run_end:
                piece_end = (
                    None
                    if cursor % self.arch.instruction_alignment
                    else self.thunk_at(cursor, run_end) or self.leaf_extent(cursor, run_end)
                )
                if piece_end is None or piece_end <= cursor:
                    pieces = {}
                    break
                pieces[cursor] = piece_end
                cursor = piece_end + self.padding_at(section, piece_end, run_end)
                cursor = self.entry_in_padding(piece_end, cursor)
            if pieces and self.jumps_only_to_starts(pieces, leaves, gap_start, gap_end):
                found.update(pieces)
        return found

    def jumps_only_to_starts(
        self, pieces: dict[int, int], leaves: dict[int, int], gap_start: int, gap_end: int
    ) -> bool:
        """True if every direct jump out of each piece may be a tail call: to a start
        found in the gap, or out of the gap but not into the middle of a .pdata range.
        Blocks of a function whose jump table went unread jump back into its middle."""
        pdata = self.pdata_ranges
        sites, targets, kinds = self.sites
        for start, end in pieces.items():
            first = bisect.bisect_left(sites, start)
            last = bisect.bisect_left(sites, end, first)
            rows = zip(sites[first:last], targets[first:last], kinds[first:last], strict=True)
            for site, target, kind in rows:
                if kind not in (_JUMP, _COND_JUMP) or start <= target < end:
                    continue
                if not self.is_reference_site(start, end, site):
                    continue  # a match inside another instruction
                if gap_start <= target < gap_end:
                    if target not in pieces and target not in leaves:
                        return False
                else:
                    index = pdata.find(target)
                    if index is not None and pdata.starts[index] != target:
                        return False
        return True

    def entry_in_padding(self, start: int, end: int) -> int:
        """Where a function preceded by the padding [start, end) begins: after the last
        trap in it, else at its end. A hotpatch-ready function opens with the two-byte
        nop (66 90) that compilers also pad with, right after the traps before it."""
        step = self.arch.instruction_alignment
        for rva in range(end - step, max(start, end - _LONGEST_PADDING) - 1, -step):
            # Code that stops before its first instruction is a trap.
            if self.arch.code_extent(self.image.read, rva, rva + step) == rva:
                return rva + step
        return end

    def data_inside(self, start: int, end: int) -> bool:
        """True if code addresses or loads from somewhere in [start, end)."""
        index = bisect.bisect_left(self.data_targets, start)
        return index < len(self.data_targets) and self.data_targets[index] < end

    def may_follow(self, gap_start: int, previous_end: int, mask: int) -> bool:
        """Whether a candidate with evidence ``mask`` may start right at ``previous_end``,
        where the code before it ends with no padding between: the image states it,
        or it is reached from elsewhere and the code before does not run on into it
        (a function found in the gap ends where its code stops)."""
        if mask & _STRONG:
            return True
        if previous_end == gap_start:
            start = self.pdata_starts_by_end.get(gap_start)
            if start is None:
                return True  # the section starts here
            if self.arch.falls_through(self.image.read, start, gap_start):
                return False
        return bool(mask & _FOREIGN)

    def run(self) -> tuple[Function, ...]:
        leaves = self.find_leaves()
        # What only the rounds needed is freed before build's peak: a million entries
        # made every map of them count.
        self.extents.clear()
        self.pre_entries = {p: e for p, e in self.pre_entries.items() if leaves.get(e) == p}
        starts = sorted({*self.primaries, *leaves})
        evidence = self.evidence_for(starts, self.covered(leaves))
        self.static_evidence = {}  # in ``evidence`` now, and asked for no more
        return self.build(leaves, evidence)

    def find_leaves(self) -> dict[int, int]:
        """Functions without unwind data (start -> end), found in rounds until the
        evidence they give finds no more."""
        pdata = self.pdata_ranges
        gaps = self.gaps(pdata)
        # Only references into the gaps, and stated starts there, can reveal new
        # functions: they are what each round weighs, kept as columns for the core.
        spans = _spans_outside(pdata, self.target_keys)
        in_targets, in_sites, in_bits = (_take(column, spans) for column in self.columns)
        static_targets = _outside(pdata, sorted(self.static_evidence))
        static_masks = [self.static_evidence[t] for t in static_targets]
        leaves: dict[int, int] = {}
        # gap start -> the decisive evidence of its candidates, and the gap's answer
        gap_results: dict[int, tuple[tuple[list[int], list[int]], dict[int, int]]] = {}
        for _ in range(_MAX_ROUNDS):
            known = self.covered(leaves)
            targets, masks = core.gap_evidence(
                static_targets,
                static_masks,
                in_targets,
                in_sites,
                in_bits,
                known.starts,
                known.ends,
                _ENTRY_BITS,
                self.is_reference_site,
            )
            # What a gap holds follows from these bits alone (see referenced_in_gap
            # and may_follow): a mask of each kind, one int object for each.
            decisive = {mask: mask & _DECISIVE for mask in set(masks)}
            masks = list(map(decisive.__getitem__, masks))
            found: dict[int, int] = {}
            for section, start, end in gaps:
                # A gap whose candidates and their decisive evidence did not change
                # since the last round gives the same answer. Only the latest answer of
                # each gap is kept (a gap of a million candidates must not keep a key of
                # a million pairs for every round); a gap without candidates or
                # functions (most: the padding between .pdata ranges) keeps a shared
                # record.
                low = bisect.bisect_left(targets, start)
                high = bisect.bisect_left(targets, end, low)
                record = gap_results.get(start)
                if low == high and record is _EMPTY_GAP:
                    continue  # the common case, at the cost of two bisections
                key = (targets[low:high], masks[low:high])
                if record is not None and record[0] == key:
                    result = record[1]
                else:
                    result = self.leaves_in_gap(section, start, end, *key)
                    gap_results[start] = (key, result) if low < high or result else _EMPTY_GAP
                if result:
                    found.update(result)
            if found == leaves:
                break
            leaves = found
        return leaves

    def inline_data(
        self, start: int, end: int
    ) -> tuple[int, tuple[DataRange, ...], tuple[Fragment, ...]]:
        """Jump tables inside [start, end) addressed from the function's own code.

        Returns the end of the code before the first table, the tables, and the code
        laid out after a table (MSVC ARM64 can put a table mid-function) as parts;
        (end, (), ()) when there are no tables.
        """
        sites = self.addresses_from(start, end)
        addressed = {t for site, t in sites if site < t < end}
        if not addressed:
            return end, (), ()  # most functions address nothing of their own
        read = self.image.read
        # Each table runs at most up to the next table its function addresses, and
        # stops at an entry that would point into the table itself.
        ordered = sorted(addressed)
        tables: list[DataRange] = []
        case_targets: set[int] = set()
        for index, table_rva in enumerate(ordered):
            limit = ordered[index + 1] if index + 1 < len(ordered) else end
            packed = self.packed_table(sites, table_rva, start, end, limit)
            if packed is not None:
                tables.append(packed[0])
                case_targets.update(packed[1])
                continue
            targets = self.arch.jump_table_targets(read, table_rva, start, end, limit)
            count = next(
                (i for i, t in enumerate(targets) if table_rva <= t < table_rva + 4 * len(targets)),
                len(targets),
            )
            if count >= 2:  # a switch worth a table has at least two cases
                tables.append(DataRange(table_rva, 4 * count, DataKind.JUMP_TABLE))
                case_targets.update(targets[:count])
        if not tables:
            return end, (), ()
        section = self.image.section_at(start)
        assert section is not None
        code_parts = []
        other: list[DataRange] = []
        for index, table in enumerate(tables):
            part_start = table.rva + table.size
            part_end = tables[index + 1].rva if index + 1 < len(tables) else end
            part_start += self.padding_at(section, part_start, part_end)
            reached = any(part_start <= t < part_end for t in case_targets) or self.branched_into(
                part_start, part_end
            )
            if part_start >= part_end:
                continue
            if reached:
                part_code_end = self.arch.last_instruction_end(read, part_start, part_end)
                if part_code_end > part_start:
                    code_parts.append(Fragment(part_start, part_code_end - part_start))
            else:
                other.append(DataRange(part_start, part_end - part_start, DataKind.DATA))
        code_end = self.arch.last_instruction_end(read, start, tables[0].rva)
        return code_end, tuple(tables + other), tuple(code_parts)

    def packed_table(
        self, sites: list[tuple[int, int]], table_rva: int, start: int, end: int, limit: int
    ) -> tuple[DataRange, list[int]] | None:
        """The compressed jump table at ``table_rva`` (entries narrower than a word) and
        its targets, when the code that takes its address dispatches through it so."""
        for site, target in sites:
            if target != table_rva:
                continue
            width = self.arch.packed_table_width(self.image.read, site)
            if width is None:
                continue
            targets = self.arch.packed_table_targets(
                self.image.read, table_rva, width, start, end, limit
            )
            if len(targets) < 2:  # a switch worth a table has at least two cases
                return None
            kind = DataKind.JUMP_TABLE_BYTES if width == 1 else DataKind.JUMP_TABLE_HALVES
            return DataRange(table_rva, width * len(targets), kind), targets
        return None

    def claim_rva_tables(self, parts: list[list[int]], tables: dict[int, list[DataRange]]) -> None:
        """MSVC x64 jump tables of RVAs inside the parts of functions that load __ImageBase.

        A run of at least three aligned words pointing into the function's own parts
        is table data; each table starts where the code names its RVA (the
        displacement of the ``__ImageBase``-relative load that indexes it), and any
        other address the code names past the tables, in the same part, is data too
        (the byte index table of a two-level switch). The part's code stops before.
        """
        read = self.image.read
        # Grouped only for the owners that load __ImageBase (few): not a list for each
        # of a million functions.
        loading = {part[3] for part in parts if self.loads_image_base(part[0], part[1])}
        by_owner: dict[int, list[list[int]]] = defaultdict(list)
        for part in parts:
            if part[3] in loading:
                by_owner[part[3]].append(part)
        for owner, owned in by_owner.items():
            ranges = [(part[0], part[1]) for part in owned]
            code = b"".join(read(a, b - a) for a, b in ranges)

            def inside(value: int, ranges: list[tuple[int, int]] = ranges) -> bool:
                return any(a <= value < b for a, b in ranges)

            for part in owned:
                found = self.tables_in(part[0], part[1], inside, code)
                if found:
                    tables[owner].extend(found)
                    part[1] = self.arch.last_instruction_end(read, part[0], found[0].rva)

    def loads_image_base(self, start: int, end: int) -> bool:
        index = bisect.bisect_left(self.image_base_sites, start)
        return index < len(self.image_base_sites) and self.image_base_sites[index] < end

    def tables_in(
        self, start: int, end: int, inside: Callable[[int], bool], code: bytes
    ) -> list[DataRange]:
        first = start + (-start % 4)
        count = (end - first) // 4
        if count < 3:
            return []
        words = struct.unpack_from(f"<{count}I", self.image.read(first, 4 * count))
        index = 0
        while index < count:
            if not inside(words[index]):
                index += 1
                continue
            run = index
            while run < count and inside(words[run]):
                run += 1
            if run - index >= 3:
                run_start, run_end = first + 4 * index, first + 4 * run
                starts = [
                    rva for rva in range(run_start, run_end, 4) if struct.pack("<I", rva) in code
                ]
                if starts:
                    bounds = [*starts, run_end]
                    found = [
                        DataRange(a, b - a, DataKind.JUMP_TABLE_RVA)
                        for a, b in itertools.pairwise(bounds)
                    ]
                    rest = [rva for rva in range(run_end, end) if struct.pack("<I", rva) in code]
                    if rest:
                        found.append(DataRange(rest[0], end - rest[0], DataKind.DATA))
                    return found
            index = run
        return []

    def branched_into(self, start: int, end: int) -> bool:
        """True if a direct branch targets [start, end)."""
        index = bisect.bisect_left(self.branch_targets, start)
        return index < len(self.branch_targets) and self.branch_targets[index] < end

    def claim_tails(self, parts: list[list[int]], tables: dict[int, list[DataRange]]) -> None:
        """Claim what follows each part (entry or fragment) before the next one starts.

        ``parts`` holds ``[start, code_end, extent_end, owner]`` rows sorted by start;
        code that a part's last instruction falls into is the part's own (MSVC ARM64
        ranges can stop one ``ret`` short), and a table of RVAs into the owner's code
        after it is the owner's jump table (MSVC x64).
        """
        starts = [part[0] for part in parts]
        for index, part in enumerate(parts):
            section = self.image.section_at(part[0])
            assert section is not None
            limit = section.end_rva
            if index + 1 < len(parts):
                limit = min(limit, parts[index + 1][0])
            if part[2] >= limit:
                continue
            owner = part[3]
            # the owner's entry part, by bisection (a map of every part cost a dict entry
            # per function); its tables' list is added only once it holds one
            at = bisect.bisect_left(starts, owner)
            while parts[at][3] != owner:
                at += 1
            owned = tables.get(owner)
            claimed = [] if owned is None else owned
            self.claim_tail(part, section, limit, parts[at], claimed)
            if owned is None and claimed:
                tables[owner] = claimed

    def claim_tail(
        self,
        part: list[int],
        section: Section,
        limit: int,
        owner_part: list[int],
        tables: list[DataRange],
    ) -> None:
        """Claim what follows ``part`` up to ``limit`` (see claim_tails) for the function
        whose entry part is ``owner_part``, adding its tables to ``tables``."""
        start, code_end, extent_end, _owner = part
        cursor = extent_end
        if (
            code_end == extent_end
            and self.padding_length(section, cursor - section.rva, cursor - section.rva) == 0
            and self.arch.falls_through(self.image.read, start, code_end)
        ):
            tail_end = self.arch.code_extent(self.image.read, code_end, limit)
            if tail_end is not None:
                part[1] = part[2] = cursor = tail_end
        if self.claim_index_table(cursor, limit, part, owner_part, tables):
            return
        cursor += self.padding_at(section, cursor, limit)
        cursor += -cursor % 4
        if cursor < limit:
            pool = self.literal_pool(cursor, limit, owner_part)
            if pool is not None:
                tables.append(pool)
                part[2] = pool.rva + pool.size
                cursor = part[2] + self.padding_at(section, part[2], limit)
                cursor += -cursor % 4
        if cursor < limit:
            self.claim_table(cursor, limit, part, owner_part, tables)
            if part[2] > cursor:
                self.claim_index_table(part[2], limit, part, owner_part, tables)

    def literal_pool(self, pool_rva: int, limit: int, owner: list[int]) -> DataRange | None:
        """The constants at ``pool_rva`` that the owning function's code loads, if any."""
        start, code_end = owner[0], owner[1]
        sites = self.load_sites
        first = bisect.bisect_left(sites, (start,))
        last = bisect.bisect_left(sites, (code_end,))
        loads = [(site, t) for site, t in sites[first:last] if pool_rva <= t < limit]
        if not loads or min(t for _, t in loads) != pool_rva:
            return None
        end = max(t + self.arch.load_size(self.image.read, site) for site, t in loads)
        return DataRange(pool_rva, min(end, limit) - pool_rva, DataKind.LITERAL_POOL)

    def claim_table(
        self, table_rva: int, limit: int, part: list[int], owner: list[int], tables: list[DataRange]
    ) -> None:
        """Record the jump table at ``table_rva`` if the owning function's code uses it.

        A table of offsets relative to itself must be addressed from the owner's code;
        a table of RVAs must have its own RVA in the owner's code (the displacement of
        the ``__ImageBase``-relative load that indexes it).
        """
        read = self.image.read
        start, code_end = owner[0], owner[1]
        addressed = any(t == table_rva for _, t in self.addresses_from(start, code_end))
        displaced = struct.pack("<I", table_rva) in read(start, code_end - start)
        for kind, size, used in (
            (
                DataKind.JUMP_TABLE,
                self.arch.jump_table_size(read, table_rva, start, limit),
                addressed,
            ),
            (
                DataKind.JUMP_TABLE_RVA,
                self.arch.rva_table_size(read, table_rva, start, limit),
                displaced,
            ),
        ):
            if used and size >= 8:
                tables.append(DataRange(table_rva, size, kind))
                part[2] = table_rva + size
                return

    def claim_index_table(
        self, table_rva: int, limit: int, part: list[int], owner: list[int], tables: list[DataRange]
    ) -> bool:
        """Claim the byte index table of an MSVC x64 two-level switch right after a part:
        the owner's code indexes it from __ImageBase (its RVA is a displacement there),
        and it runs up to the padding before the next part. It may start with a zero
        byte, which would otherwise pass for padding."""
        start, code_end = owner[0], owner[1]
        if not self.loads_image_base(start, code_end):
            return False
        if struct.pack("<I", table_rva) not in self.image.read(start, code_end - start):
            return False
        data = self.image.read(table_rva, limit - table_rva)
        end = table_rva + len(data.rstrip(b"\xcc"))
        if end <= table_rva:
            return False
        tables.append(DataRange(table_rva, end - table_rva, DataKind.DATA))
        part[2] = end
        return True

    def build(self, leaves: dict[int, int], evidence: dict[int, int]) -> tuple[Function, ...]:
        # A .pdata function with an entry before its range starts at that entry. Few do:
        # the maps below hold those, and the tables and parts of the functions that have
        # any, not an entry for each of a million functions.
        pre = {p: e for p, e in self.pre_entries.items() if p in self.primaries}
        pdata_of = {e: p for p, e in pre.items()}
        bounds = {pre.get(p, p): end for p, end in self.primaries.items()}
        bounds.update((start, end) for start, end in leaves.items() if start not in bounds)
        fragments: dict[int, list[Fragment]] = defaultdict(list)
        for owner, parts_of in self.fragments.items():
            fragments[pre.get(owner, owner)].extend(parts_of)
        tables: dict[int, list[DataRange]] = defaultdict(list)
        parts: list[list[int]] = []
        for start, end in bounds.items():
            code_end, inline_ranges, code_parts = self.inline_data(start, end)
            if inline_ranges:
                tables[start].extend(inline_ranges)
            if code_parts:
                fragments[start].extend(code_parts)
            parts.append(
                [start, code_end, max([code_end] + [t.rva + t.size for t in inline_ranges]), start]
            )
        for owner, pieces in fragments.items():
            parts.extend([f.rva, f.rva + f.size, f.rva + f.size, owner] for f in pieces)
        parts.sort()
        self.claim_rva_tables(parts, tables)
        self.claim_tails(parts, tables)
        row_starts = [part[0] for part in parts]

        def code_end_of(rva: int) -> int:
            """Where the code of the (last) part starting at ``rva`` ends."""
            return parts[bisect.bisect_right(row_starts, rva) - 1][1]

        starts = sorted(bounds)
        functions = []
        pdata_bit, thunk_bit = _BIT[Evidence.PDATA], _BIT[Evidence.IMPORT_THUNK]
        for position, start in enumerate(starts):
            pdata_start = pdata_of.get(start, start if start in self.primaries else None)
            sources = evidence.get(start, 0)
            if pdata_start is not None:
                sources |= evidence.get(pdata_start, 0) | pdata_bit
            if start in self.thunk_names:
                sources |= thunk_bit
            name = self.names.get(start) or self.names.get(pdata_start or start)
            section = self.image.section_at(start)
            assert section is not None
            limit = section.end_rva
            if position + 1 < len(starts):
                limit = min(limit, starts[position + 1])
            owned: list[Fragment] = []
            inline: tuple[DataRange, ...] = ()
            end = code_end = code_end_of(start)
            if fragments.get(start) or tables.get(start):  # most functions have neither
                owned = sorted(
                    (Fragment(f.rva, code_end_of(f.rva) - f.rva) for f in fragments.get(start, ())),
                    key=lambda f: f.rva,
                )
                # Each range belongs to the part it lies in or follows.
                part_starts = sorted([(start, 0)] + [(f.rva, i) for i, f in enumerate(owned, 1)])
                inline = tuple(
                    DataRange(t.rva, t.size, t.kind, _part_of(part_starts, t.rva))
                    for t in sorted(tables[start], key=lambda t: t.rva)
                )
                end = max([end] + [t.rva + t.size for t in inline if t.part == 0])
            functions.append(
                Function(
                    rva=start,
                    size=code_end - start,
                    name=name or self.thunk_names.get(start),
                    sources=_sources(sources),
                    fragments=tuple(owned),
                    padding_after=self.padding_at(section, end, limit) if end < limit else 0,
                    inline_data=inline,
                )
            )
        return tuple(functions)


#: What a gap without candidates or functions keeps, shared (never mutated).
_EMPTY_GAP: tuple[tuple[list[int], list[int]], dict[int, int]] = (([], []), {})


def _spans_outside(ranges: Ranges, values: Sequence[int]) -> list[tuple[int, int]]:
    """Index spans of the sorted ``values`` that no range holds: each range cuts its
    slice out by bisection, instead of a lookup for each value."""
    spans: list[tuple[int, int]] = []
    position = 0
    for start, end in zip(ranges.starts, ranges.ends, strict=True):
        inside = bisect.bisect_left(values, start, position)
        if inside > position:
            spans.append((position, inside))
        position = max(inside, bisect.bisect_left(values, end, inside))
    if position < len(values):
        spans.append((position, len(values)))
    return spans


def _spans_at(wanted: list[int], values: Sequence[int]) -> list[tuple[int, int]]:
    """Index spans of the sorted ``values`` equal to one of the sorted ``wanted``."""
    spans: list[tuple[int, int]] = []
    position = 0
    for value in wanted:
        first = bisect.bisect_left(values, value, position)
        position = bisect.bisect_right(values, value, first)
        if position > first:
            spans.append((first, position))
    return spans


_Column = TypeVar("_Column", list[int], "array[int]")


def _take(column: _Column, spans: list[tuple[int, int]]) -> _Column:
    """The slices of ``column`` the spans give, joined: a list or an array, as it is."""
    taken = column[:0]
    for first, last in spans:
        taken += column[first:last]
    return taken


def _positions(column: array[int], value: int) -> Iterator[int]:
    """Indexes of ``value`` in ``column``, ascending (the searches run in C, and a
    column without it costs one pass)."""
    index = -1
    for _ in range(column.count(value)):
        index = column.index(value, index + 1)
        yield index


def _joined(parts: list[SiteColumns]) -> SiteColumns:
    """The columns of the scans of several sections, one after the other."""
    if len(parts) == 1:
        return parts[0]
    joined = SiteColumns(array("I"), array("I"), array("B"))
    for part in parts:
        for column, more in zip(joined, part, strict=True):
            column += more
    return joined


def _by_target(sites: SiteColumns) -> tuple[array[int], array[int], array[int]]:
    """The targets, sites and evidence bits of ``sites`` ordered by target, then site
    (a stable sort: the sites ascend)."""
    site_column, targets, kinds = sites
    order = sorted(range(len(targets)), key=targets.__getitem__)
    return (
        array("I", map(targets.__getitem__, order)),
        array("I", map(site_column.__getitem__, order)),
        array("I", map(_SITE_BITS.__getitem__, map(kinds.__getitem__, order))),
    )


def _outside(ranges: Ranges, values: list[int]) -> list[int]:
    """The sorted ``values`` that no range holds."""
    return _take(values, _spans_outside(ranges, values))


def _part_of(part_starts: list[tuple[int, int]], rva: int) -> int:
    """Index of the part (0: entry) with the greatest start at or before ``rva``."""
    index = bisect.bisect_right(part_starts, (rva, len(part_starts))) - 1
    return part_starts[max(index, 0)][1]


def discover_functions(image: PEImage) -> tuple[Function, ...]:
    """Every function of ``image``, sorted by RVA."""
    with collector_paused():
        return _Discovery(image).run()
