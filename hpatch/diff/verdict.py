"""Can the update be delivered as a hotpatch? Blockers, each with a kind, a place and a reason.

Windows-style: only code (and new read-only data) can change. Writable globals that
change layout or initial value, imports the old image cannot satisfy, changed exports,
TLS or entry point, a changed function too small to redirect, and a reference that
cannot be bound to the old image all block. A blocked update is an answer (it needs a
new baseline), not an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from hpatch.arch import SiteKind
from hpatch.arch.rewrite import Redirect
from hpatch.diff.classify import Correspondence, FunctionChange, Status, import_key
from hpatch.diff.correlate import Correlator
from hpatch.diff.match import Side
from hpatch.image import Function, PEImage, Section

_MAX_DATA_RANGES = 8
_RANGE_JOIN = 8
_TWO_INSTRUCTIONS = 32
#: A global is named after the functions referencing less than this many bytes from it.
_NEAR = 64


class BlockerKind(Enum):
    """Why an update cannot be hotpatched."""

    WRITABLE_DATA = "writable_data"
    IMPORTS = "imports"
    EXPORTS = "exports"
    TLS = "tls"
    ENTRY_POINT = "entry_point"
    TOO_SMALL = "too_small"
    UNRESOLVED_REFERENCE = "unresolved_reference"
    #: The package built, but its code failed translation validation or emulation.
    UNVALIDATED = "unvalidated"


@dataclass(frozen=True, slots=True)
class Blocker:
    """One reason the update needs a new baseline."""

    kind: BlockerKind
    where: str
    reason: str


def function_label(function: Function) -> str:
    return function.name or f"sub_{function.rva:x}"


def _pointer_slots(image: PEImage, section: Section) -> dict[int, int]:
    """Offset in ``section`` -> RVA that the relocated pointer there holds."""
    return {
        rva - section.rva: target for rva, target in image.pointers.items() if section.contains(rva)
    }


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted offsets joined into [start, end) ranges, closing gaps under _RANGE_JOIN bytes."""
    ranges: list[list[int]] = []
    for offset in sorted(offsets):
        if ranges and offset - ranges[-1][1] < _RANGE_JOIN:
            ranges[-1][1] = offset + 1
        else:
            ranges.append([offset, offset + 1])
    return [(a, b) for a, b in ranges]


def entry_room(image: PEImage, function: Function) -> tuple[int, int, int]:
    """(bytes from the entry to the next function, padding bytes before the entry, size
    of the first instruction): what decides how the entry can be redirected."""
    room = function.extent_end - function.rva + function.padding_after
    before = 0
    section = image.section_at(function.rva)
    if section is not None:
        for length in range(1, min(16, function.rva - section.rva) + 1):
            data = image.read(function.rva - length, length)
            if image.arch.padding_length(data, 0) == length:
                before = length
    # Only the first two instructions matter, and two of any supported machine fit in
    # _TWO_INSTRUCTIONS bytes (x64: at most 15 each): decoding the whole function for
    # them made this the diff's slowest check.
    window_end = min(function.extent_end, function.rva + _TWO_INSTRUCTIONS)
    starts = sorted(image.arch.instruction_starts(image.read, function.rva, window_end))
    first = (starts[1] if len(starts) > 1 else function.extent_end) - function.rva
    return room, before, first


def redirect_problem(image: PEImage, function: Function, strategy: Redirect) -> str | None:
    """Why ``strategy`` cannot redirect ``function`` safely, or None when it can.

    The redirect must fit in the function plus its trailing padding (or, two-stage,
    in the padding before it and a first instruction of at least two bytes), and no
    branch of the function may land inside the bytes it overwrites after the entry.
    """
    return _redirect_problem(image, function, strategy, entry_room(image, function))


def _redirect_problem(
    image: PEImage, function: Function, strategy: Redirect, room_before_first: tuple[int, int, int]
) -> str | None:
    start, length = strategy.span
    room, before, first = room_before_first
    if start < 0:
        if before < -start:
            return f"needs {-start} bytes of padding before the entry, has {before}"
        if first < start + length:
            return f"its first instruction is {first} bytes, the redirect needs {start + length}"
    elif start + length > room:
        return (
            f"the {length}-byte redirect is longer than the function and its padding ({room} bytes)"
        )
    lo, hi = function.rva + 1, function.rva + start + length
    if hi <= lo:
        return None
    parts = [(function.rva, function.end_rva)] + [
        (f.rva, f.rva + f.size) for f in function.fragments
    ]
    for part_start, part_end in parts:
        code = image.read(part_start, part_end - part_start)
        branches = [
            (site_rva, target_rva)
            for site_rva, target_rva, kind in image.arch.scan_sites(code, part_start, lo, hi)
            if kind in (SiteKind.JUMP, SiteKind.COND_JUMP)
        ]
        if not branches:
            continue  # most parts have none: spare them a decode of every instruction
        starts = image.arch.instruction_starts(image.read, part_start, part_end)
        for site_rva, target_rva in branches:
            if site_rva in starts:
                return (
                    f"the branch at RVA 0x{site_rva:x} lands at 0x{target_rva:x}, inside the "
                    "bytes the redirect overwrites"
                )
    return None


class Verdict:
    """Collects the blockers of one diff."""

    def __init__(self, old: Side, new: Side, correspondence: Correspondence) -> None:
        self.old, self.new = old, new
        self.correspondence = correspondence
        self.blockers: list[Blocker] = []

    def block(self, kind: BlockerKind, where: str, reason: str) -> None:
        self.blockers.append(Blocker(kind, where, reason))

    def data_names(self, image: PEImage, rvas: list[int]) -> list[str]:
        """For each of ``rvas``: the data symbol covering it, or the functions that
        reference it."""
        names: list[str | None] = [self.symbol_name(image, rva) for rva in rvas]
        side = self.old if image is self.old.image else self.new
        # One pass over every reference for all the unnamed places: each is near
        # (less than _NEAR bytes from) targets in at most three _NEAR-byte buckets.
        wanted: dict[int, list[int]] = defaultdict(list)
        for index, rva in enumerate(rvas):
            if names[index] is None:
                for bucket in range((rva - _NEAR + 1) // _NEAR, (rva + _NEAR - 1) // _NEAR + 1):
                    wanted[bucket].append(index)
        users: list[set[str]] = [set() for _ in rvas]
        if wanted:
            for fingerprint in side.fingerprints.values():
                for reference in fingerprint.references:
                    target = reference.target_rva
                    for index in wanted.get(target // _NEAR, ()):
                        if abs(target - rvas[index]) < _NEAR:
                            users[index].add(function_label(fingerprint.function))
        return [
            name
            if name is not None
            else "used by " + ", ".join(sorted(found)[:4])
            if found
            else "unreferenced"
            for name, found in zip(names, users, strict=True)
        ]

    @staticmethod
    def symbol_name(image: PEImage, rva: int) -> str | None:
        """The data symbol covering ``rva``, if the image has one."""
        symbols = [s for s in image.symbols if not s.is_function and s.rva <= rva]
        section = image.section_at(rva)
        if symbols and section is not None and section.contains(symbols[-1].rva):
            symbol = symbols[-1]
            return symbol.name if symbol.rva == rva else f"{symbol.name}+0x{rva - symbol.rva:x}"
        return None

    def check_writable_data(self) -> None:
        old_image, new_image = self.old.image, self.new.image
        old_sections = {s.name: s for s in old_image.sections if s.is_writable}
        new_sections = {s.name: s for s in new_image.sections if s.is_writable}
        for name in sorted(set(old_sections) ^ set(new_sections)):
            state = "appears" if name in new_sections else "disappears"
            self.block(BlockerKind.WRITABLE_DATA, f"section {name}", f"writable section {state}")
        for name in sorted(set(old_sections) & set(new_sections)):
            old_section, new_section = old_sections[name], new_sections[name]
            if old_section.virtual_size != new_section.virtual_size:
                self.block(
                    BlockerKind.WRITABLE_DATA,
                    f"section {name}",
                    f"writable data changes size (0x{old_section.virtual_size:x} -> "
                    f"0x{new_section.virtual_size:x} bytes): globals move or grow",
                )
            self.compare_initial_values(old_section, new_section)

    def compare_initial_values(self, old_section: Section, new_section: Section) -> None:
        old_slots = _pointer_slots(self.old.image, old_section)
        new_slots = _pointer_slots(self.new.image, new_section)
        differing: set[int] = set()
        size = min(old_section.virtual_size, new_section.virtual_size)
        for offset in set(old_slots) | set(new_slots):
            if offset + 8 > size:
                continue
            old_target, new_target = old_slots.get(offset), new_slots.get(offset)
            if (
                old_target is None
                or new_target is None
                or not self.correspondence.same(old_target, new_target)
            ):
                differing.update(range(offset, offset + 8))
        pointer_bytes = {o + i for o in set(old_slots) | set(new_slots) for i in range(8)}
        old_data, new_data = old_section.data, new_section.data
        differing.update(
            offset
            for offset in range(size)
            if old_data[offset] != new_data[offset] and offset not in pointer_bytes
        )
        ranges = _ranges(differing)
        shown = ranges[:_MAX_DATA_RANGES]
        names = self.data_names(self.old.image, [old_section.rva + start for start, _ in shown])
        for (start, end), name in zip(shown, names, strict=True):
            rva = old_section.rva + start
            self.block(
                BlockerKind.WRITABLE_DATA,
                f"{old_section.name} 0x{rva:x}..0x{old_section.rva + end:x} ({name})",
                "initial value of writable data changes; a running image keeps the old value",
            )
        if len(ranges) > _MAX_DATA_RANGES:
            self.block(
                BlockerKind.WRITABLE_DATA,
                f"section {old_section.name}",
                f"{len(ranges) - _MAX_DATA_RANGES} more changed ranges of writable data",
            )

    def check_interfaces(self) -> None:
        old_image, new_image = self.old.image, self.new.image
        old_imports = {import_key(i) for i in old_image.imports}
        for imported in new_image.imports:
            if import_key(imported) not in old_imports:
                name = imported.name or f"#{imported.ordinal}"
                self.block(
                    BlockerKind.IMPORTS,
                    f"{imported.dll}!{name}",
                    "new import: the old image has no IAT slot for it",
                )

        def exported(image: PEImage) -> set[tuple[int, str | None, str | None]]:
            return {(e.ordinal, e.name, e.forwarder) for e in image.exports}

        for ordinal, name, forwarder in sorted(
            exported(old_image) ^ exported(new_image), key=lambda e: e[0]
        ):
            state = "added" if (ordinal, name, forwarder) in exported(new_image) else "removed"
            self.block(
                BlockerKind.EXPORTS,
                name or f"ordinal {ordinal}",
                f"export {state}: exports are fixed",
            )
        if old_image.tls != new_image.tls:
            self.block(
                BlockerKind.TLS, "TLS directory", "thread-local storage layout or callbacks change"
            )
        old_entry = old_image.function_at(old_image.entry_rva) if old_image.entry_rva else None
        new_entry = new_image.function_at(new_image.entry_rva) if new_image.entry_rva else None
        if (old_entry is None) != (new_entry is None) or (
            old_entry is not None
            and new_entry is not None
            and self.correspondence.matched.get(old_entry.rva) != new_entry.rva
        ):
            self.block(
                BlockerKind.ENTRY_POINT,
                "AddressOfEntryPoint",
                "the entry point moves to another function",
            )

    def check_redirects(self, changes: tuple[FunctionChange, ...]) -> None:
        image = self.old.image
        for change in changes:
            if change.status != Status.MODIFIED or change.old is None:
                continue
            room, before, first = entry_room(image, change.old)
            strategy = image.arch.redirect_strategy(room, before, first)
            if strategy is not None:
                problem = _redirect_problem(image, change.old, strategy, (room, before, first))
                if problem is not None:
                    self.block(BlockerKind.TOO_SMALL, function_label(change.old), problem)
                continue
            self.block(
                BlockerKind.TOO_SMALL,
                function_label(change.old),
                f"{room} bytes at the entry and {before} of padding before it: no room for a "
                f"{image.arch.redirect_size}-byte redirect",
            )

    def check_references(self, correlator: Correlator, changes: tuple[FunctionChange, ...]) -> None:
        for change in changes:
            if change.new is None or change.status not in (Status.MODIFIED, Status.ADDED):
                continue
            for resolved in correlator.unresolved(change):
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    f"{function_label(change.new)} at 0x{resolved.reference.site_rva:x}",
                    f"{resolved.reference.kind.name.lower()} reference to "
                    f"0x{resolved.reference.target_rva:x} cannot be bound to the old image: "
                    f"{resolved.detail}",
                )


def find_blockers(
    old: Side, new: Side, correspondence: Correspondence, changes: tuple[FunctionChange, ...]
) -> tuple[Blocker, ...]:
    """Every reason the update cannot be delivered as a hotpatch (empty: it can)."""
    verdict = Verdict(old, new, correspondence)
    verdict.check_writable_data()
    verdict.check_interfaces()
    verdict.check_redirects(changes)
    verdict.check_references(Correlator(old, new, correspondence, changes), changes)
    return tuple(verdict.blockers)


__all__ = [
    "Blocker",
    "BlockerKind",
    "entry_room",
    "find_blockers",
    "function_label",
    "redirect_problem",
]
