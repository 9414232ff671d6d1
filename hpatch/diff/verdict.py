"""Can the update be delivered as a hotpatch? Blockers: what blocks it, as data.

Windows-style: only code (and new read-only data) can change. Writable globals that
change layout or initial value (the import directory's tables are not globals), an
import the package cannot carry, changed exports, TLS or entry point, a changed
function too small to redirect, and a reference that cannot be bound to the old image
all block. A new import only carried code uses is carried: the package binds a slot
for it, as a hotpatch image's own import table does. A blocked update is an answer,
not an error: each blocker's cause says whether the update itself needs a new baseline
(a hazard) or hpatch cannot prove or bind it yet (a limitation).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator

from hpatch.arch.redirect_fit import entry_room, misfit, redirect_problem
from hpatch.blockers import (
    Blocker,
    BlockerCause,
    BlockerClass,
    BlockerKind,
    Build,
    function_label,
)
from hpatch.diff.classify import (
    Correspondence,
    FunctionChange,
    Status,
    dll_changed_imports,
    import_key,
)
from hpatch.diff.correlate import Correlator, Resolution, ResolvedReference
from hpatch.diff.layout_shift import layout_shifts
from hpatch.diff.match import Side
from hpatch.diff.references import reference_rows
from hpatch.image import Export, Import, PEImage, Section, Symbol

_MAX_DATA_RANGES = 8
_RANGE_JOIN = 8
#: A global is named after the functions referencing less than this many bytes from it.
_NEAR = 64


#: Resolved, but to something the package did not copy (so the field has nowhere to go).
_NOT_COPIED = {
    Resolution.PATCHED_CODE: BlockerCause.CARRIED_CODE_NOT_COPIED,
    Resolution.NEW_CONSTANT: BlockerCause.NEW_DATA_NOT_CARRIED,
    Resolution.NEW_DATA: BlockerCause.NEW_DATA_NOT_CARRIED,
}


def unresolved_cause(resolved: ResolvedReference) -> BlockerCause:
    """The cause of a reference the package cannot bind to the old image."""
    not_copied = _NOT_COPIED.get(resolved.resolution)
    if not_copied is not None:
        return not_copied
    if resolved.cause is None:
        raise LookupError(f"no blocker cause for an unresolved reference to {resolved.detail!r}")
    return resolved.cause


def import_label(imported: Import) -> str:
    """DLL!name, or DLL!#ordinal."""
    return f"{imported.dll}!{imported.name or f'#{imported.ordinal}'}"


def _pointer_slots(image: PEImage, section: Section) -> dict[int, int]:
    """Offset in ``section`` -> RVA that the relocated pointer there holds."""
    return {
        rva - section.rva: target for rva, target in image.pointers.items() if section.contains(rva)
    }


def _within(offsets: list[int], start: int, end: int) -> list[int]:
    """The sorted ``offsets`` in [start, end)."""
    return offsets[bisect.bisect_left(offsets, start) : bisect.bisect_left(offsets, end)]


def _import_offsets(image: PEImage, section: Section) -> list[tuple[int, int]]:
    """The import directory's tables in ``section``, as [start, end) section offsets."""
    end = section.rva + section.virtual_size
    return [
        (max(start, section.rva) - section.rva, min(stop, end) - section.rva)
        for start, stop in image.import_ranges
        if start < end and stop > section.rva
    ]


def _outside(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of [0, size) that ``ranges`` (sorted) leave uncovered."""
    found, at = [], 0
    for start, end in ranges:
        if start > at:
            found.append((at, min(start, size)))
        at = max(at, end)
    if at < size:
        found.append((at, size))
    return [(start, end) for start, end in found if start < end]


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted offsets joined into [start, end) ranges, closing gaps under _RANGE_JOIN bytes."""
    ranges: list[list[int]] = []
    for offset in sorted(offsets):
        if ranges and offset - ranges[-1][1] < _RANGE_JOIN:
            ranges[-1][1] = offset + 1
        else:
            ranges.append([offset, offset + 1])
    return [(a, b) for a, b in ranges]


def _differing_offsets(
    old: bytes | memoryview, new: bytes | memoryview, chunk: int = 4096
) -> Iterator[int]:
    """Offsets where two equally long byte strings differ, equal chunks skipped whole."""
    for start in range(0, len(old), chunk):
        a, b = old[start : start + chunk], new[start : start + chunk]
        if a != b:
            yield from (start + i for i in range(len(a)) if a[i] != b[i])


def _export_key(export: Export) -> tuple[str, str | int]:
    """What identifies an export across builds: its name, or its ordinal if it has none.
    A named export's ordinal is not compared: one name inserted renumbers the rest."""
    return ("name", export.name) if export.name is not None else ("ordinal", export.ordinal)


def _export_label(export: Export) -> str:
    return export.name if export.name is not None else f"ordinal {export.ordinal}"


class Verdict:
    """Collects the blockers of one diff."""

    def __init__(self, old: Side, new: Side, correspondence: Correspondence) -> None:
        self.old, self.new = old, new
        self.correspondence = correspondence
        self.blockers: list[Blocker] = []

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
                for _, _, target in reference_rows(fingerprint.references):
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
    def data_symbol(image: PEImage, rva: int) -> Symbol | None:
        """The data symbol covering ``rva``, if the image has one."""
        symbols = [s for s in image.symbols if not s.is_function and s.rva <= rva]
        section = image.section_at(rva)
        if symbols and section is not None and section.contains(symbols[-1].rva):
            return symbols[-1]
        return None

    @classmethod
    def symbol_name(cls, image: PEImage, rva: int) -> str | None:
        """The data symbol covering ``rva`` (plus the offset into it), if the image has one."""
        symbol = cls.data_symbol(image, rva)
        if symbol is None:
            return None
        return symbol.name if symbol.rva == rva else f"{symbol.name}+0x{rva - symbol.rva:x}"

    def check_writable_data(self) -> None:
        old_image, new_image = self.old.image, self.new.image
        old_sections = {s.name: s for s in old_image.sections if s.is_writable}
        new_sections = {s.name: s for s in new_image.sections if s.is_writable}
        for name in sorted(set(old_sections) ^ set(new_sections)):
            added = name in new_sections
            section = new_sections[name] if added else old_sections[name]
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.WRITABLE_DATA,
                    cause=BlockerCause.WRITABLE_SECTION_ADDED
                    if added
                    else BlockerCause.WRITABLE_SECTION_REMOVED,
                    where=f"section {name}",
                    reason=f"writable section {'appears' if added else 'disappears'}",
                    rva=section.rva,
                    end_rva=section.rva + section.virtual_size,
                    section=name,
                    build=Build.NEW if added else Build.OLD,
                )
            )
        for name in sorted(set(old_sections) & set(new_sections)):
            old_section, new_section = old_sections[name], new_sections[name]
            # The import directory's tables (GNU ld's writable .idata) grow with a new
            # import; only the rest of the section holds globals.
            old_globals = _outside(
                _import_offsets(old_image, old_section), old_section.virtual_size
            )
            new_globals = _outside(
                _import_offsets(new_image, new_section), new_section.virtual_size
            )
            layout = self.correspondence.layouts.get(name)
            if layout is not None:
                # Every old global has its place in the new build; only the bytes the
                # new build inserts are new (carried as new data, see check_new_data).
                segments = [(s.old_rva, s.new_rva, s.size) for s in layout.segments]
            else:
                if (
                    old_section.virtual_size != new_section.virtual_size
                    and old_globals != new_globals
                ):
                    self.blockers.append(
                        Blocker(
                            kind=BlockerKind.WRITABLE_DATA,
                            cause=BlockerCause.WRITABLE_DATA_RESIZED,
                            where=f"section {name}",
                            reason=f"writable data changes size (0x{old_section.virtual_size:x}"
                            f" -> 0x{new_section.virtual_size:x} bytes): globals move or grow",
                            rva=old_section.rva,
                            end_rva=old_section.rva + old_section.virtual_size,
                            section=name,
                            build=Build.OLD,
                        )
                    )
                size = min(old_section.virtual_size, new_section.virtual_size)
                segments = [(old_section.rva, new_section.rva, size)]
            self.compare_initial_values(old_section, new_section, segments)

    def compare_initial_values(
        self,
        old_section: Section,
        new_section: Section,
        segments: list[tuple[int, int, int]],
    ) -> None:
        """Blockers for the old bytes whose new counterparts (``segments``: old RVA, new
        RVA, size) hold another initial value, pointers compared by what they name."""
        old_slots = _pointer_slots(self.old.image, old_section)
        new_slots = _pointer_slots(self.new.image, new_section)
        old_offsets, new_offsets = sorted(old_slots), sorted(new_slots)
        old_data, new_data = old_section.data, new_section.data
        differing: set[int] = set()  # section offsets of the old build
        for old_rva, new_rva, size in segments:
            old_base, new_base = old_rva - old_section.rva, new_rva - new_section.rva
            # Pointer slots of either build in the segment, as offsets into it: the work
            # follows the pointers and the bytes that differ, not the segment's size,
            # nor the slots of the whole section for each of its segments.
            slots = sorted(
                {o - old_base for o in _within(old_offsets, old_base, old_base + size)}
                | {o - new_base for o in _within(new_offsets, new_base, new_base + size)}
            )
            pointer_bytes: set[int] = set()
            for offset in slots:
                pointer_bytes.update(range(offset, offset + 8))
                if offset + 8 > size:
                    continue
                old_target = old_slots.get(old_base + offset)
                new_target = new_slots.get(new_base + offset)
                if (
                    old_target is None
                    or new_target is None
                    or not self.correspondence.same(old_target, new_target)
                ):
                    differing.update(range(old_base + offset, old_base + offset + 8))
            differing.update(
                old_base + offset
                for offset in _differing_offsets(
                    old_data[old_base : old_base + size], new_data[new_base : new_base + size]
                )
                if offset not in pointer_bytes
            )
        # The diff compares IAT slots by import; the import tables are not globals.
        for start, end in _import_offsets(self.old.image, old_section):
            differing.difference_update(range(start, end))
        new_imports = _import_offsets(self.new.image, new_section)
        if new_imports:
            for old_rva, new_rva, size in segments:
                for start, end in new_imports:
                    low = max(start, new_rva - new_section.rva)
                    high = min(end, new_rva - new_section.rva + size)
                    shift = (old_rva - old_section.rva) - (new_rva - new_section.rva)
                    differing.difference_update(range(low + shift, high + shift))
        ranges = _ranges(differing)
        shown = ranges[:_MAX_DATA_RANGES]
        image, base = self.old.image, old_section.rva
        names = self.data_names(image, [base + start for start, _ in shown])
        for (start, end), name in zip(shown, names, strict=True):
            symbol = self.data_symbol(image, base + start)
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.WRITABLE_DATA,
                    cause=BlockerCause.WRITABLE_INITIAL_VALUE,
                    where=f"{old_section.name} 0x{base + start:x}..0x{base + end:x} ({name})",
                    reason="initial value of writable data changes; a running image keeps the "
                    "old value",
                    rva=base + start,
                    end_rva=base + end,
                    section=old_section.name,
                    symbol=symbol.name if symbol is not None else None,
                    build=Build.OLD,
                )
            )
        if len(ranges) > _MAX_DATA_RANGES:
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.WRITABLE_DATA,
                    cause=BlockerCause.WRITABLE_INITIAL_VALUE,
                    where=f"section {old_section.name}",
                    reason=f"{len(ranges) - _MAX_DATA_RANGES} more changed ranges of writable data",
                    rva=base + ranges[_MAX_DATA_RANGES][0],
                    end_rva=base + ranges[-1][1],
                    section=old_section.name,
                    build=Build.OLD,
                )
            )

    def check_struct_layouts(self, changes: tuple[FunctionChange, ...]) -> None:
        for found in layout_shifts(self.old.image, self.new.image, changes):
            names = [function_label(c.new) for c in found.functions if c.new is not None]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.WRITABLE_DATA,
                    cause=BlockerCause.STRUCT_LAYOUT_CHANGED,
                    where=f"{len(names)} functions ({shown})",
                    reason=f"they differ only in field offsets from 0x{found.first_offset:x} "
                    f"on, moved by {found.shift:+d} bytes: a structure that live objects "
                    "already have changes layout, and the new code would misread every "
                    "object the old code made",
                    function=names[0],
                    rva=found.functions[0].new.rva if found.functions[0].new else None,
                    build=Build.NEW,
                )
            )

    def check_imports(self) -> None:
        old_imports, new_imports = self.old.image.imports, self.new.image.imports
        old_keys = {import_key(i) for i in old_imports}
        moved = dll_changed_imports(old_imports, new_imports)
        added = {i.iat_rva for i in new_imports if import_key(i) not in old_keys}
        # A slot data points at: the running image's data does not, and the package
        # binds only the references of the code it carries.
        named_by_data = {
            target: rva
            for rva, target in sorted(self.new.image.pointers.items(), reverse=True)
            if target in added
        }
        for imported in new_imports:
            if imported.iat_rva not in added:
                continue
            label = import_label(imported)
            counterpart = moved.get(imported.iat_rva)
            if counterpart is not None:
                slot = f"IAT slot 0x{imported.iat_rva:x}"
                if counterpart.iat_rva != imported.iat_rva:
                    slot += f" (0x{counterpart.iat_rva:x} in the old build)"
                self.blockers.append(
                    Blocker(
                        kind=BlockerKind.IMPORTS,
                        cause=BlockerCause.IMPORT_DLL_CHANGED,
                        where=f"{slot}: {import_label(counterpart)} -> {label}",
                        reason="the import comes from another DLL: the old image binds it to "
                        f"{counterpart.dll}, and binding {imported.dll} beside it would run "
                        "two copies of the library",
                        rva=imported.iat_rva,
                        symbol=label,
                        build=Build.NEW,
                    )
                )
                continue
            data = named_by_data.get(imported.iat_rva)
            if data is None:
                continue  # used by carried code only, or by nothing: the package carries it
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.IMPORTS,
                    cause=BlockerCause.NEW_IMPORT,
                    where=label,
                    reason=f"new import {label}: data at RVA 0x{data:x} names its IAT slot, "
                    "and the running image's data cannot be made to name the package's",
                    rva=imported.iat_rva,
                    symbol=label,
                    build=Build.NEW,
                )
            )

    def check_exports(self) -> None:
        old_image, new_image = self.old.image, self.new.image
        old_exports = {_export_key(e): e for e in old_image.exports}
        new_exports = {_export_key(e): e for e in new_image.exports}
        for key in sorted(old_exports.keys() | new_exports.keys()):
            old, new = old_exports.get(key), new_exports.get(key)
            if old is None or new is None:
                export, added = (new, True) if old is None else (old, False)
                assert export is not None
                self.blockers.append(
                    Blocker(
                        kind=BlockerKind.EXPORTS,
                        cause=BlockerCause.EXPORT_ADDED if added else BlockerCause.EXPORT_REMOVED,
                        where=_export_label(export),
                        reason=f"export {'added' if added else 'removed'}: a running image's "
                        "exports are fixed",
                        rva=export.rva if export.forwarder is None else None,
                        symbol=_export_label(export),
                        build=(Build.NEW if added else Build.OLD)
                        if export.forwarder is None
                        else None,
                    )
                )
                continue
            change = self.export_change(old, new)
            if change is not None:
                self.blockers.append(
                    Blocker(
                        kind=BlockerKind.EXPORTS,
                        cause=BlockerCause.EXPORT_CHANGED,
                        where=_export_label(new),
                        reason=f"export changes: {change}; a running image's exports are fixed",
                        rva=new.rva if new.forwarder is None else None,
                        symbol=_export_label(new),
                        build=Build.NEW if new.forwarder is None else None,
                    )
                )

    def export_change(self, old: Export, new: Export) -> str | None:
        """How an export that both builds have changed meaningfully, or None.

        Its RVA moving is no change (functions move); leading to another function is.
        """
        if old.forwarder != new.forwarder:
            if old.forwarder is None:
                return f"it becomes a forwarder to {new.forwarder}"
            if new.forwarder is None:
                return f"it is no longer a forwarder to {old.forwarder}"
            return f"it forwards to {new.forwarder} instead of {old.forwarder}"
        if old.forwarder is not None:
            return None
        old_function = self.old.image.function_at(old.rva)
        new_function = self.new.image.function_at(new.rva)
        if (
            old_function is None
            or new_function is None
            or old_function.rva != old.rva
            or new_function.rva != new.rva
        ):
            return None  # data, or code hpatch does not know as a function: moves are fine
        counterpart = self.correspondence.matched.get(old_function.rva)
        if counterpart is None or counterpart == new_function.rva:
            return None
        return (
            f"it names {function_label(new_function)}, not the counterpart of "
            f"{function_label(old_function)}"
        )

    def check_interfaces(self) -> None:
        self.check_imports()
        self.check_exports()
        old_image, new_image = self.old.image, self.new.image
        if old_image.tls != new_image.tls:
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.TLS,
                    cause=BlockerCause.TLS_CHANGED,
                    where="TLS directory",
                    reason="thread-local storage layout or callbacks change",
                )
            )
        old_entry = old_image.function_at(old_image.entry_rva) if old_image.entry_rva else None
        new_entry = new_image.function_at(new_image.entry_rva) if new_image.entry_rva else None
        if (old_entry is None) != (new_entry is None) or (
            old_entry is not None
            and new_entry is not None
            and self.correspondence.matched.get(old_entry.rva) != new_entry.rva
        ):
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.ENTRY_POINT,
                    cause=BlockerCause.ENTRY_POINT_MOVED,
                    where="AddressOfEntryPoint",
                    reason="the entry point moves to another function",
                    function=function_label(new_entry) if new_entry is not None else None,
                    rva=new_image.entry_rva or None,
                    build=Build.NEW if new_image.entry_rva else None,
                )
            )

    def check_redirects(self, changes: tuple[FunctionChange, ...]) -> None:
        image = self.old.image
        for change in changes:
            if change.status != Status.MODIFIED or change.old is None:
                continue
            room, before, first = entry_room(image, change.old)
            strategy = image.arch.redirect_strategy(room, before, first)
            if strategy is not None:
                problem = misfit(image, change.old, strategy, (room, before, first))
                if problem is None:
                    continue
                cause, reason = BlockerCause(problem[0].value), problem[1]  # type: ignore[call-arg]
            else:
                cause, reason = (
                    BlockerCause.NO_REDIRECT_ROOM,
                    f"{room} bytes at the entry and {before} of padding before it: no room for "
                    f"a {image.arch.redirect_size}-byte redirect",
                )
            label = function_label(change.old)
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.TOO_SMALL,
                    cause=cause,
                    where=label,
                    reason=reason,
                    function=label,
                    rva=change.old.rva,
                    build=Build.OLD,
                )
            )

    def check_references(self, correlator: Correlator, changes: tuple[FunctionChange, ...]) -> None:
        for change in changes:
            if change.new is None or change.status not in (Status.MODIFIED, Status.ADDED):
                continue
            label = function_label(change.new)
            for resolved in correlator.unresolved(change):
                reference = resolved.reference
                self.blockers.append(
                    Blocker(
                        kind=BlockerKind.UNRESOLVED_REFERENCE,
                        cause=unresolved_cause(resolved),
                        where=f"{label} at 0x{reference.site_rva:x}",
                        reason=f"{reference.kind.name.lower()} reference to "
                        f"0x{reference.target_rva:x} cannot be bound to the old image: "
                        f"{resolved.detail}",
                        function=label,
                        rva=reference.site_rva,
                        target_rva=reference.target_rva,
                        build=Build.NEW,
                    )
                )


def find_blockers(
    old: Side, new: Side, correspondence: Correspondence, changes: tuple[FunctionChange, ...]
) -> tuple[Blocker, ...]:
    """Every reason the update cannot be delivered as a hotpatch (empty: it can)."""
    verdict = Verdict(old, new, correspondence)
    verdict.check_writable_data()
    verdict.check_interfaces()
    verdict.check_struct_layouts(changes)
    verdict.check_redirects(changes)
    verdict.check_references(Correlator(old, new, correspondence, changes), changes)
    return tuple(verdict.blockers)


__all__ = [
    "Blocker",
    "BlockerCause",
    "BlockerClass",
    "BlockerKind",
    "Build",
    "entry_room",
    "find_blockers",
    "function_label",
    "import_label",
    "redirect_problem",
    "unresolved_cause",
]
