"""Function discovery: where each function starts, how long it is, and the evidence for it.

Sources, strongest first: .pdata (exact ranges; fragments folded into their parent),
exports, COFF function symbols, the entry point and the CFG function table (exact
starts), then starts inferred from code and data: direct call/jump targets, addresses
materialised in code (x64 LEA RIP, ARM64 ADRP+ADD) and relocated pointers in data.

Functions without unwind data (leaf functions) live in the gaps between .pdata
ranges. An inferred start there is accepted only if the reference comes from inside
a known function and the target is a plausible entry (right after the previous
function and its padding, or preceded by padding); its extent is then found by
following its control flow. Accepting functions can validate more references, so
the pass repeats until nothing changes.
"""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from hpatch.arch import SiteKind
from hpatch.image.model import BaseRelocationType, Evidence, Fragment, Function, Section

if TYPE_CHECKING:
    from hpatch.image.reader import PEImage

_MAX_ROUNDS = 16
_EXACT = frozenset(
    {Evidence.PDATA, Evidence.EXPORT, Evidence.SYMBOL, Evidence.ENTRY, Evidence.GUARD_CF}
)
_SITE_EVIDENCE = {
    SiteKind.CALL: Evidence.CALL,
    SiteKind.JUMP: Evidence.JUMP,
    SiteKind.COND_JUMP: Evidence.JUMP,
    SiteKind.ADDRESS: Evidence.ADDRESS,
}
_EVIDENCE_ORDER = {e: i for i, e in enumerate(Evidence)}


class _Ranges:
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


def _pdata_functions(image: PEImage) -> tuple[dict[int, int], dict[int, list[Fragment]]]:
    """Primary .pdata ranges (start -> end) and the fragments folded into them."""
    primaries: dict[int, int] = {}
    pending: list[tuple[int, int, int | None]] = []
    for entry in image.unwind_entries:
        if entry.is_fragment:
            pending.append((entry.begin_rva, entry.end_rva, entry.parent_rva))
        else:
            primaries[entry.begin_rva] = entry.end_rva
    fragments: dict[int, list[Fragment]] = defaultdict(list)
    starts = sorted(primaries)
    for begin, end, parent in pending:
        if parent is None:
            # ARM64 fragments name no parent: they continue the function laid out before them.
            index = bisect.bisect_right(starts, begin) - 1
            parent = starts[index] if index >= 0 else None
        if parent is None or parent not in primaries:
            primaries[begin] = end
            continue
        fragments[parent].append(Fragment(begin, end - begin))
    return primaries, fragments


def _exact_starts(image: PEImage) -> tuple[dict[int, set[Evidence]], dict[int, str]]:
    """Starts named by exports, COFF symbols, the entry point and the CFG table."""
    evidence: dict[int, set[Evidence]] = defaultdict(set)
    names: dict[int, str] = {}

    def is_code(rva: int) -> bool:
        section = image.section_at(rva)
        return section is not None and section.is_executable

    for symbol in image.symbols:
        if symbol.is_function and is_code(symbol.rva):
            evidence[symbol.rva].add(Evidence.SYMBOL)
            names.setdefault(symbol.rva, symbol.name)
    for export in image.exports:
        if export.forwarder is None and is_code(export.rva):
            evidence[export.rva].add(Evidence.EXPORT)
            if export.name:
                names[export.rva] = export.name
    if image.entry_rva and is_code(image.entry_rva):
        evidence[image.entry_rva].add(Evidence.ENTRY)
    if image.load_config is not None:
        for rva in image.load_config.guard_cf_function_rvas:
            if is_code(rva):
                evidence[rva].add(Evidence.GUARD_CF)
    return evidence, names


def _relocated_pointers(image: PEImage, lo: int, hi: int) -> list[int]:
    """Targets of base-relocated pointers that land in executable code."""
    targets = []
    for relocation in image.relocations:
        if relocation.type == BaseRelocationType.DIR64:
            (value,) = struct.unpack("<Q", image.read(relocation.rva, 8))
        elif relocation.type == BaseRelocationType.HIGHLOW:
            (value,) = struct.unpack("<I", image.read(relocation.rva, 4))
        else:
            continue
        rva = value - image.image_base
        if lo <= rva < hi:
            targets.append(rva)
    return targets


class _Discovery:
    def __init__(self, image: PEImage) -> None:
        self.image = image
        self.arch = image.arch
        self.code_sections = image.executable_sections
        self.primaries, self.fragments = _pdata_functions(image)
        self.extents: dict[tuple[int, int], int | None] = {}
        self.exact, self.names = _exact_starts(image)
        if not self.code_sections:
            self.sites = []
            self.pointers: list[int] = []
            return
        lo = min(s.rva for s in self.code_sections)
        hi = max(s.end_rva for s in self.code_sections)
        self.sites = [
            site
            for section in self.code_sections
            for site in self.arch.scan_sites(section.data, section.rva, lo, hi)
        ]
        self.pointers = _relocated_pointers(image, lo, hi)

    def covered(self, leaves: dict[int, int]) -> _Ranges:
        ranges = list(self.primaries.items()) + list(leaves.items())
        ranges += [(f.rva, f.rva + f.size) for parts in self.fragments.values() for f in parts]
        return _Ranges(ranges)

    def candidates(self, known: _Ranges) -> dict[int, set[Evidence]]:
        """Inferred starts whose evidence is trustworthy given the functions known so far."""
        found: dict[int, set[Evidence]] = defaultdict(set)
        for site in self.sites:
            if known.find(site.site_rva) is not None:
                found[site.target_rva].add(_SITE_EVIDENCE[site.kind])
        for rva in self.pointers:
            found[rva].add(Evidence.RELOC)
        return found

    def gaps(self, pdata: _Ranges) -> list[tuple[Section, int, int]]:
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

    def padding_at(self, section: Section, rva: int, limit: int) -> int:
        return min(self.arch.padding_length(section.data, rva - section.rva), limit - rva)

    def preceded_by_padding(self, section: Section, rva: int) -> bool:
        step = self.arch.instruction_alignment
        offset = rva - section.rva
        if offset < step:
            return False
        return self.arch.padding_length(section.data, offset - step) >= step

    def leaves_in_gap(
        self,
        section: Section,
        gap_start: int,
        gap_end: int,
        evidence: dict[int, set[Evidence]],
        ordered: list[int],
    ) -> dict[int, int]:
        leaves: dict[int, int] = {}
        targets = ordered[
            bisect.bisect_left(ordered, gap_start) : bisect.bisect_left(ordered, gap_end)
        ]
        exact_targets = [t for t in targets if evidence[t] & _EXACT]
        cursor = gap_start + self.padding_at(section, gap_start, gap_end)
        for target in targets:
            if target < cursor or target % self.arch.instruction_alignment:
                continue
            is_exact = bool(evidence[target] & _EXACT)
            if not (is_exact or target == cursor or self.preceded_by_padding(section, target)):
                continue
            next_exact = bisect.bisect_right(exact_targets, target)
            bound = exact_targets[next_exact] if next_exact < len(exact_targets) else gap_end
            key = (target, bound)
            if key not in self.extents:
                self.extents[key] = self.arch.code_extent(self.image.read, target, bound)
            end = self.extents[key]
            if end is None or end <= target:
                continue
            leaves[target] = end
            cursor = end + self.padding_at(section, end, gap_end)
        return leaves

    def run(self) -> tuple[Function, ...]:
        pdata = _Ranges(
            list(self.primaries.items())
            + [(f.rva, f.rva + f.size) for parts in self.fragments.values() for f in parts]
        )
        gaps = self.gaps(pdata)
        leaves: dict[int, int] = {}
        evidence: dict[int, set[Evidence]] = {}
        for _ in range(_MAX_ROUNDS):
            evidence = self.candidates(self.covered(leaves))
            for rva, sources in self.exact.items():
                evidence.setdefault(rva, set()).update(sources)
            ordered = sorted(evidence)
            found: dict[int, int] = {}
            for section, start, end in gaps:
                found.update(self.leaves_in_gap(section, start, end, evidence, ordered))
            if found == leaves:
                break
            leaves = found
        return self.build(leaves, evidence)

    def build(
        self, leaves: dict[int, int], evidence: dict[int, set[Evidence]]
    ) -> tuple[Function, ...]:
        bounds = dict(self.primaries)
        bounds.update(leaves)
        starts = sorted(bounds)
        functions = []
        for position, start in enumerate(starts):
            end = bounds[start]
            sources = set(evidence.get(start, ()))
            if start in self.primaries:
                sources.add(Evidence.PDATA)
            section = self.image.section_at(start)
            assert section is not None
            limit = section.end_rva
            if position + 1 < len(starts):
                limit = min(limit, starts[position + 1])
            padding = self.padding_at(section, end, limit) if end < limit else 0
            functions.append(
                Function(
                    rva=start,
                    size=end - start,
                    name=self.names.get(start),
                    sources=tuple(sorted(sources, key=_EVIDENCE_ORDER.__getitem__)),
                    fragments=tuple(sorted(self.fragments.get(start, ()), key=lambda f: f.rva)),
                    padding_after=max(padding, 0),
                )
            )
        return tuple(functions)


def discover_functions(image: PEImage) -> tuple[Function, ...]:
    """Every function of ``image``, sorted by RVA."""
    return _Discovery(image).run()
