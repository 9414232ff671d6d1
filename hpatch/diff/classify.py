"""Classify matched functions: unchanged only if the code and what it references agree.

kpatch's rule on linked images: equal normalised code, and every reference pointing at
corresponding things: the same place in matched functions, the same import, the same
global (learned from functions whose code is identical), or read-only data of equal
content.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from hpatch.arch import Reference
from hpatch.diff.data_layout import WritableLayout, learn_layouts
from hpatch.diff.match import Match, Side, c_string
from hpatch.diff.references import ReferenceRow, as_reference, reference_rows
from hpatch.image import Function, Import, PEImage, Section

#: Bytes on either side of a moved writable reference that must have moved with it.
_OBJECT_WINDOW = 8


class Status(Enum):
    """What happened to a function between the builds."""

    UNCHANGED = "unchanged"
    MODIFIED = "modified"
    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class FunctionChange:
    """One function's fate; ``reason`` says why a matched function counts as modified."""

    status: Status
    old: Function | None
    new: Function | None
    match: Match | None
    reason: str = ""
    #: For a function modified only in what it references: the first pair that differs.
    differing_references: tuple[Reference, Reference] | None = None


def import_key(imported: Import) -> tuple[str, str | int]:
    """What identifies an import across builds: its DLL and its name or ordinal."""
    return (
        imported.dll.lower(),
        imported.name if imported.name is not None else imported.ordinal or 0,
    )


def dll_changed_imports(
    old_imports: tuple[Import, ...], new_imports: tuple[Import, ...]
) -> dict[int, Import]:
    """New-build IAT slot -> the old build's import of the same symbol from another DLL
    (a versioned DLL name): the old import at the same slot, or else the one old import
    of that symbol the new build dropped."""
    old_keys = {import_key(i) for i in old_imports}
    new_keys = {import_key(i) for i in new_imports}
    dropped: dict[str | int, list[Import]] = defaultdict(list)
    for imported in old_imports:
        if import_key(imported) not in new_keys:
            dropped[import_key(imported)[1]].append(imported)
    found = {}
    for imported in new_imports:
        if import_key(imported) in old_keys:
            continue
        candidates = dropped.get(import_key(imported)[1], [])
        same_slot = [c for c in candidates if c.iat_rva == imported.iat_rva]
        if same_slot:
            found[imported.iat_rva] = same_slot[0]
        elif len(candidates) == 1:
            found[imported.iat_rva] = candidates[0]
    return found


def _part_position(image: PEImage, rva: int) -> tuple[int, int, int] | None:
    """(function rva, part index, offset in part) of a code address, if in a function."""
    function = image.function_at(rva)
    if function is None:
        return None
    if function.rva <= rva < function.extent_end:
        return function.rva, 0, rva - function.rva
    for index, fragment in enumerate(function.fragments, start=1):
        if fragment.rva <= rva < fragment.rva + fragment.size:
            return function.rva, index, rva - fragment.rva
    return None


def beyond_section(image: PEImage, rva: int) -> tuple[str, int] | None:
    """(name of the section, bytes past its end) for an address in the gap after a
    section: linkers name section ends (``__RUNTIME_PSEUDO_RELOC_LIST_END__``, the end
    of ``.rdata``), and code compares against them."""
    found = None
    for section in image.sections:
        if section.end_rva <= rva and (found is None or section.end_rva > found.end_rva):
            found = section
    if found is None or image.section_at(rva) is not None:
        return None
    return found.name, rva - found.end_rva


def _fields_in(fields: list[int], start: int, end: int) -> list[int]:
    """The relocated fields lying wholly in [start, end)."""
    low = bisect.bisect_left(fields, start)
    return [f for f in fields[low : bisect.bisect_left(fields, end)] if f + 8 <= end]


#: A writable global that identical code names: (old target, new target, and the
#: section of each).
WritablePair = tuple[int, int, Section, Section]


class _SectionLookup:
    """``image.section_at``, remembered per address."""

    def __init__(self, image: PEImage) -> None:
        self.image = image
        self.found: dict[int, Section | None] = {}

    def __call__(self, rva: int) -> Section | None:
        found = self.found
        if rva in found:
            return found[rva]
        section = found[rva] = self.image.section_at(rva)
        return section


class Correspondence:
    """Decides whether an old target and a new target are the same thing."""

    def __init__(self, old: Side, new: Side, matches: tuple[Match, ...]) -> None:
        self.old, self.new = old, new
        self.matches = matches
        self.matched = {m.old_rva: m.new_rva for m in matches}
        self.old_imports = {i.iat_rva: import_key(i) for i in old.image.imports}
        self.new_imports = {i.iat_rva: import_key(i) for i in new.image.imports}
        self._comparing: set[tuple[int, int]] = set()
        #: Answers of ``same`` asked outside any comparison in progress: the same
        #: callees, imports and globals come up in function after function.
        self._same: dict[tuple[int, int], bool] = {}
        data_votes, writable = self._identical_code_references(matches)
        self.data = {old: next(iter(new)) for old, new in data_votes.items() if len(new) == 1}
        self.section_shift = self._learn_section_shifts()
        #: Writable sections whose globals are placed, by name (see data_layout).
        self.layouts: dict[str, WritableLayout] = {}
        self.layouts = learn_layouts(old, new, self._writable_votes(writable), self.same_content)
        # Answers given while the layouts were learned compared globals by offset.
        self._same.clear()
        self.writable_moves = self._learn_writable_moves(writable)

    def _identical_code_references(
        self, matches: tuple[Match, ...]
    ) -> tuple[dict[int, set[int]], list[WritablePair]]:
        """What matched functions whose normalised code is identical show, reference by
        reference: the new read-only data each old read-only address may be (votes,
        see ``data``), and the writable globals they name in either build, in order.

        Writable data is not learned by vote: a field inserted in a global and a global
        inserted before it look alike without symbols, so writable data is identified
        by its offset in its section (see ``same``). The targets' sections are looked
        up once per target: the same globals come up in function after function.
        """
        old_sections = _SectionLookup(self.old.image)
        new_sections = _SectionLookup(self.new.image)
        old_imports = self.old_imports
        votes: dict[int, set[int]] = defaultdict(set)
        writable: list[WritablePair] = []
        for match in matches:
            old_print = self.old.fingerprints[match.old_rva]
            new_print = self.new.fingerprints[match.new_rva]
            if old_print.digest != new_print.digest or len(old_print.references) != len(
                new_print.references
            ):
                continue
            for (_, a_kind, a_target), (_, b_kind, b_target) in zip(
                reference_rows(old_print.references),
                reference_rows(new_print.references),
                strict=True,
            ):
                old_section = old_sections(a_target)
                if old_section is None:
                    continue
                if old_section.is_writable:
                    new_section = new_sections(b_target)
                    if new_section is not None:
                        writable.append((a_target, b_target, old_section, new_section))
                elif (
                    not old_section.is_executable
                    and a_kind == b_kind
                    and a_target not in old_imports
                ):
                    votes[a_target].add(b_target)
        return votes, writable

    def _writable_votes(self, writable: list[WritablePair]) -> Iterator[tuple[int, int]]:
        """(old, new) writable addresses that the same code names in each build, directly
        or through a pointer in read-only data it names (mingw's ``.refptr`` slots)."""
        for old_target, new_target, _, named_section in writable:
            if named_section.is_writable:
                yield old_target, new_target
        for old_rva, new_rva in self.data.items():
            size = self.old.data_extent(old_rva) - old_rva
            if size != self.new.data_extent(new_rva) - new_rva:
                continue
            old_fields = _fields_in(self.old.relocated, old_rva, old_rva + size)
            new_fields = _fields_in(self.new.relocated, new_rva, new_rva + size)
            if [f - old_rva for f in old_fields] != [f - new_rva for f in new_fields]:
                continue
            for old_field, new_field in zip(old_fields, new_fields, strict=True):
                old_target = self.old.pointer_at(old_field)
                new_target = self.new.pointer_at(new_field)
                old_section = self.old.image.section_at(old_target)
                new_section = self.new.image.section_at(new_target)
                if (
                    old_section is not None
                    and new_section is not None
                    and old_section.is_writable
                    and new_section.is_writable
                ):
                    yield old_target, new_target

    def _learn_writable_moves(self, writable: list[WritablePair]) -> dict[int, int]:
        """old writable address -> new, where functions with identical code show that a
        global moved whole (see ``_same_global``)."""
        moves: dict[int, set[int]] = defaultdict(set)
        for old_target, new_target, old_section, new_section in writable:
            if old_target - old_section.rva == new_target - new_section.rva:
                continue
            if self.same(old_target, new_target):
                moves[old_target].add(new_target)
        return {old: next(iter(new)) for old, new in moves.items() if len(new) == 1}

    def _learn_section_shifts(self) -> dict[str, int]:
        """The shift most learned addresses of each data section agree on."""
        shifts: dict[str, Counter[int]] = defaultdict(Counter)
        for old_rva, new_rva in self.data.items():
            section = self.old.image.section_at(old_rva)
            if section is not None:
                shifts[section.name][new_rva - old_rva] += 1
        return {name: counter.most_common(1)[0][0] for name, counter in shifts.items()}

    def same(self, old_target: int, new_target: int) -> bool:
        """True if ``old_target`` and ``new_target`` are the same thing."""
        if self._comparing:
            # Inside a cycle of pointers an answer may rest on the pair being
            # compared; it is not kept.
            return self._same_uncached(old_target, new_target)
        pair = (old_target, new_target)
        answer = self._same.get(pair)
        if answer is None:
            answer = self._same[pair] = self._same_uncached(old_target, new_target)
        return answer

    def _same_uncached(self, old_target: int, new_target: int) -> bool:
        if old_target < self.old.image.headers_end or new_target < self.new.image.headers_end:
            return old_target == new_target  # __ImageBase and the PE headers
        if old_target in self.old_imports or new_target in self.new_imports:
            return self.old_imports.get(old_target) == self.new_imports.get(new_target)
        old_section = self.old.image.section_at(old_target)
        new_section = self.new.image.section_at(new_target)
        if old_section is None or new_section is None:
            # Section ends: the same number of bytes past the end of the same section.
            past = beyond_section(self.old.image, old_target)
            return past is not None and past == beyond_section(self.new.image, new_target)
        old_code, new_code = old_section.is_executable, new_section.is_executable
        if old_code or new_code:
            a = _part_position(self.old.image, old_target)
            b = _part_position(self.new.image, new_target)
            if a is None and b is None and old_code and new_code:
                # Data that code sections hold outside every function (mingw's
                # constructor and destructor lists): compared as a constant is.
                return self.same_constant(old_target, new_target)
            return (
                a is not None
                and b is not None
                and self.matched.get(a[0]) == b[0]
                and a[1:] == b[1:]
            )
        if old_section.is_writable:
            if new_section.name != old_section.name:
                return False
            layout = self.layouts.get(old_section.name)
            if layout is not None:
                return layout.old_of(new_target) == old_target
            return self._same_global(old_section, old_target, new_section, new_target)
        if self.same_constant(old_target, new_target):
            return True
        # Position says they are the same object; its bytes may still differ only because
        # they are a jump table (offsets into code that moved), which the code compares.
        learned = self.data.get(old_target)
        shift = self.section_shift.get(old_section.name)
        positional = learned == new_target or (
            learned is None and shift is not None and old_target + shift == new_target
        )
        return positional and self.is_jump_table(new_target)

    def is_jump_table(self, new_target: int) -> bool:
        """The new read-only data at ``new_target`` is a table of offsets into code."""
        image = self.new.image
        section = image.section_at(new_target)
        if section is None:
            return False
        code = [s for s in image.sections if s.is_executable]
        # Two entries make a table: reading on would only walk the rest of the section.
        limit = min(section.end_rva, new_target + 8)
        for text in code:
            entries = image.arch.jump_table_targets(
                image.read, new_target, text.rva, text.end_rva, limit
            )
            if len(entries) >= 2:
                return True
        return False

    def same_constant(self, old_target: int, new_target: int) -> bool:
        """Read-only data is the same when its bytes are: the whole object (up to the
        next label) equal, with relocated pointers in it pointing at the same things."""
        if old_target in self.old_imports or new_target in self.new_imports:
            return self.same(old_target, new_target)
        old_size = self.old.data_extent(old_target) - old_target
        new_size = self.new.data_extent(new_target) - new_target
        size = min(old_size, new_size)
        if size <= 0:
            return False
        # Objects are delimited by the next label; alignment padding after one may
        # differ in length, so the longer may only add zero bytes.
        longer = self.old.image.read(old_target + size, old_size - size) + self.new.image.read(
            new_target + size, new_size - size
        )
        if longer.strip(b"\0"):
            return False
        return self.same_content(old_target, new_target, size)

    def same_content(self, old_target: int, new_target: int, size: int) -> bool:
        """``size`` bytes at each target are the same: equal, with the relocated pointers
        among them (or the entries of a relative table) leading to the same things."""
        old_end, new_end = old_target + size, new_target + size
        old_bytes = bytearray(self.old.image.read(old_target, size))
        new_bytes = bytearray(self.new.image.read(new_target, size))
        old_fields = _fields_in(self.old.relocated, old_target, old_end)
        new_fields = _fields_in(self.new.relocated, new_target, new_end)
        if [f - old_target for f in old_fields] != [f - new_target for f in new_fields]:
            return False
        pointers = []
        for old_field in old_fields:
            offset = old_field - old_target
            old_value = int.from_bytes(old_bytes[offset : offset + 8], "little")
            new_value = int.from_bytes(new_bytes[offset : offset + 8], "little")
            pointers.append(
                (old_value - self.old.image.image_base, new_value - self.new.image.image_base)
            )
            old_bytes[offset : offset + 8] = new_bytes[offset : offset + 8] = bytes(8)
        if old_bytes != new_bytes:
            if old_fields:
                return False
            relative = self._relative_table(old_target, new_target, old_bytes, new_bytes)
            if relative is None:
                return False
            # Strings a table selects are compared as text: nothing labels their ends.
            pointers = []
            for a, b in relative:
                text = self._string_pair(a, b)
                if text is False:
                    return False
                if text is None:
                    pointers.append((a, b))
        pair = (old_target, new_target)
        if pair in self._comparing:
            return True  # a cycle of pointers: the same unless something else differs
        self._comparing.add(pair)
        try:
            return all(self.same(a, b) for a, b in pointers)
        finally:
            self._comparing.discard(pair)

    def _relative_table(
        self,
        old_target: int,
        new_target: int,
        old_bytes: bytes | bytearray,
        new_bytes: bytes | bytearray,
    ) -> list[tuple[int, int]] | None:
        """The (old, new) targets of a table of 32-bit offsets from the table itself, or
        None if the bytes are not one in both builds.

        clang turns lookup tables of pointers into such tables (``azType.rel``,
        ``switch.table.rel``): they need no relocations, and their bytes change whenever
        what they select moves. They are the same table when every entry leads to the
        same thing.
        """
        if len(old_bytes) % 4 or len(old_bytes) < 8:
            return None
        count = len(old_bytes) // 4
        targets = []
        for side, table, content in (
            (self.old, old_target, old_bytes),
            (self.new, new_target, new_bytes),
        ):
            found = []
            for entry in struct.unpack(f"<{count}i", content):
                target = table + entry
                section = side.image.section_at(target)
                if section is None or section.is_writable or table <= target < table + len(content):
                    return None
                found.append(target)
            targets.append(found)
        return list(zip(targets[0], targets[1], strict=True))

    def _string_pair(self, old_target: int, new_target: int) -> bool | None:
        """For two C strings: whether their text is equal; None if either is not one."""
        old_text = c_string(self.old.image, old_target)
        new_text = c_string(self.new.image, new_target)
        if old_text is None or new_text is None:
            return None
        return old_text == new_text

    def _same_global(
        self, old_section: Section, old_target: int, new_section: Section, new_target: int
    ) -> bool:
        """Writable data, without symbols: the same offset in the section, or a global
        that moved whole, which carries its neighbouring initial bytes along.

        A field inserted into a global shifts what follows it just as a global
        inserted before it would; the bytes around the reference tell them apart.
        """
        old_offset, new_offset = old_target - old_section.rva, new_target - new_section.rva
        if old_offset == new_offset:
            return True
        window = _OBJECT_WINDOW
        if min(old_offset, new_offset) < window:
            return False
        old_bytes = old_section.data[old_offset - window : old_offset + window]
        new_bytes = new_section.data[new_offset - window : new_offset + window]
        return len(old_bytes) == 2 * window and old_bytes == new_bytes

    def _same_access(self, old: ReferenceRow, new: ReferenceRow) -> bool:
        """Two loads or stores of read-only data that touch the same bytes: as many as
        the instruction accesses (an 8-byte load of mingw's ``.refptr.X`` reads that
        pointer, not the compiler ident strings after it up to the next label)."""
        (old_site, _, old_target), (new_site, _, new_target) = old, new
        old_size = self.old.image.arch.access_size(self.old.image.read, old_site)
        if old_size is None:
            return False
        if old_size != self.new.image.arch.access_size(self.new.image.read, new_site):
            return False
        for side, target in ((self.old, old_target), (self.new, new_target)):
            section = side.image.section_at(target)
            if section is None or section.is_writable or section.is_executable:
                return False
            if target + old_size > section.rva + section.virtual_size:
                return False
        return self.same_content(old_target, new_target, old_size)

    def references_agree(
        self, old: Sequence[Reference], new: Sequence[Reference]
    ) -> tuple[str, tuple[Reference, Reference] | None]:
        """('', None) if the references correspond one for one, else why not and where."""
        if len(old) != len(new):
            return f"{len(old)} references became {len(new)}", None
        for a, b in zip(reference_rows(old), reference_rows(new), strict=True):
            (a_site, a_kind, a_target), (_, b_kind, b_target) = a, b
            if a_kind != b_kind:
                first, second = as_reference(a), as_reference(b)
                return (
                    f"a {first.kind.name.lower()} reference became {second.kind.name.lower()}",
                    (first, second),
                )
            if not self.same(a_target, b_target) and not self._same_access(a, b):
                first = as_reference(a)
                return (
                    f"the {first.kind.name.lower()} reference at 0x{a_site:x} points elsewhere "
                    f"(0x{a_target:x} -> 0x{b_target:x})",
                    (first, as_reference(b)),
                )
        return "", None


def classify(
    old: Side, new: Side, matches: tuple[Match, ...], correspondence: Correspondence
) -> tuple[FunctionChange, ...]:
    """The status of every function of either build."""
    changes = []
    for match in matches:
        a, b = old.fingerprints[match.old_rva], new.fingerprints[match.new_rva]
        reason, differing = ("code differs", None) if a.digest != b.digest else ("", None)
        if not reason:
            reason, differing = correspondence.references_agree(a.references, b.references)
        status = Status.MODIFIED if reason else Status.UNCHANGED
        changes.append(FunctionChange(status, a.function, b.function, match, reason, differing))
    matched_new = {m.new_rva for m in matches}
    matched_old = {m.old_rva for m in matches}
    changes += [
        FunctionChange(Status.REMOVED, f.function, None, None)
        for rva, f in old.fingerprints.items()
        if rva not in matched_old
    ]
    changes += [
        FunctionChange(Status.ADDED, None, f.function, None)
        for rva, f in new.fingerprints.items()
        if rva not in matched_new
    ]
    return tuple(changes)
