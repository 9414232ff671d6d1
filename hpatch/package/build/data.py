"""The data the carried code needs that the old image lacks: new globals (on pages of
their own, first in the region), new read-only constants with what their pointers name,
and copies of jump tables in read-only data rewritten to lead into the carried code."""

from __future__ import annotations

import bisect
import struct

from hpatch.arch import Reference, RefKind
from hpatch.arch.relocate import CodeFixup
from hpatch.blockers import BlockerCause, BlockerKind
from hpatch.diff.correlate import Resolution
from hpatch.package import new_data
from hpatch.package.build.context import Stage
from hpatch.package.build.region import PAGE
from hpatch.package.model import Blob, BlobKind

_PART_ALIGNMENT = 16
_MAX_CONSTANT = 1 << 16
#: New read-only data carried in all, with the new data its pointers name in turn.
_MAX_CONSTANT_CLOSURE = 1 << 22

Span = tuple[int, int]


class DataStage(Stage):
    """Places and binds the new data the carried code names."""

    # new globals -----------------------------------------------------------------------

    def place_new_globals(self) -> list[Span]:
        """Place the globals only the new build has that the carried code names (and those
        their pointers name) first in the region, on pages of their own (see new_data)."""
        context = self.context
        spans = new_data.carried_spans(context.diff, context.correlator)
        alignment = new_data.alignment(context.arch.machine)
        for (start, end), offset in zip(
            spans, new_data.span_offsets(spans, alignment), strict=True
        ):
            placed = self.region.place(
                context.read(start, end - start), start, alignment, BlobKind.DATA
            )
            assert placed == offset, "new data lands where span_offsets says"
        self.region.pad_to_page()
        return spans

    def bind_new_globals(self, spans: list[Span]) -> None:
        """Every pointer in the carried new globals, bound as the code's references are."""
        addr64 = self.context.arch.pointer_fixup
        for start, end in spans:
            for field in self.fields_in(start, end):
                self.binder.add_fixup(
                    f"new data at 0x{start:x}",
                    CodeFixup(field, addr64, self.pointer_at(field), field),
                )

    def fields_in(self, start: int, end: int) -> list[int]:
        """The relocated 8-byte fields of the new image within [start, end)."""
        relocated = self.context.relocated
        low = bisect.bisect_left(relocated, start)
        return [f for f in relocated[low : bisect.bisect_left(relocated, end)] if f + 8 <= end]

    def pointers_in(self, spans: list[Span]) -> list[int]:
        """What the pointers in the carried new globals name."""
        return [self.pointer_at(f) for start, end in spans for f in self.fields_in(start, end)]

    def pointer_at(self, field: int) -> int:
        """The RVA the relocated 8-byte field at ``field`` of the new image holds."""
        return int.from_bytes(self.context.read(field, 8), "little") - self.new.image_base

    # new constants and jump tables ------------------------------------------------------

    def place_constants(
        self, fixups_by_function: dict[int, list[CodeFixup]], data_pointers: list[int]
    ) -> None:
        """New read-only data the code and the new globals name, copied and bound; jump
        tables in read-only data whose entries all lead into the carried code, copied
        and rewritten."""
        correlator = self.context.correlator
        targets: set[int] = set()
        for pointed in data_pointers:
            if self.carries_new_data(pointed, pointed):
                targets.add(pointed)
        tables: dict[int, list[int]] = {}
        for fixups in fixups_by_function.values():
            for fixup in fixups:
                if self.region.locate(fixup.target_rva) is not None:
                    continue
                entries = (
                    self.jump_table_entries(fixup.target_rva)
                    if self.context.takes_address(fixup.site_rva)
                    else None
                )
                if entries is not None:
                    if entries:  # else it leads out of the carried code: bind refuses it
                        tables[fixup.target_rva] = entries
                        targets.add(fixup.target_rva)
                    continue
                resolved = correlator.resolve(self.binder.reference_of(fixup))
                if resolved.resolution == Resolution.NEW_CONSTANT:
                    targets.add(fixup.target_rva)
        if not targets:
            return
        spans = self.constant_spans(targets)
        arch = self.context.arch
        alignment = PAGE if arch.data_by_page else _PART_ALIGNMENT
        for start, end in spans:
            self.region.place(
                self.context.read(start, end - start), start, alignment, BlobKind.RODATA
            )
        # Bound once every span is placed: a pointer may name data copied after its own.
        relocated = self.context.relocated
        for start, end in spans:
            for field in relocated[
                bisect.bisect_left(relocated, start) : bisect.bisect_left(relocated, end)
            ]:
                if field + 8 > end:
                    self.blockers.add(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_POINTER_STRADDLES,
                        f"new data at 0x{start:x}",
                        f"a pointer at 0x{field:x} straddles the end of the data copied",
                        rva=start,
                        end_rva=end,
                        section=self.new.section_at(start).name,  # type: ignore[union-attr]
                    )
                    continue
                self.binder.add_fixup(
                    f"new data at 0x{start:x}",
                    CodeFixup(field, arch.pointer_fixup, self.pointer_at(field), field),
                )
        if tables:
            self.rewrite_jump_tables(tables)

    def constant_spans(self, targets: set[int]) -> list[list[int]]:
        """The [start, end) ranges of new read-only data to carry for ``targets``, each
        object up to the next label, and with them the closure: new read-only data that
        a pointer in carried data names is carried too (bound as a REGION fixup like
        the code's), taken in rounds, each in address order, up to _MAX_CONSTANT_CLOSURE
        bytes in all."""
        labels = self.context.diff.correspondence.new.labels
        relocated = self.context.relocated
        ends: dict[int, int] = {}
        starts: list[int] = []  # of ends, sorted
        seen = set(targets)
        total = 0
        pending = sorted(targets)
        while pending:
            found: set[int] = set()
            for target in pending:
                section = self.new.section_at(target)
                assert section is not None
                index = bisect.bisect_right(labels, target)
                end = labels[index] if index < len(labels) else section.end_rva
                end = min(end, section.rva + section.virtual_size)
                if end - target > _MAX_CONSTANT:
                    self.blockers.add(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_TOO_LARGE,
                        f"new data at 0x{target:x}",
                        f"new read-only data of more than {_MAX_CONSTANT} bytes has no "
                        "provable end",
                        rva=target,
                        end_rva=end,
                        section=section.name,
                    )
                    continue
                total += end - target
                if total > _MAX_CONSTANT_CLOSURE:
                    self.blockers.add(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_TOO_LARGE,
                        f"new data at 0x{target:x}",
                        f"the new read-only data the code names, and the new data it points "
                        f"at in turn, exceed {_MAX_CONSTANT_CLOSURE} bytes",
                        rva=target,
                        end_rva=end,
                        section=section.name,
                    )
                    return []
                ends[target] = end
                bisect.insort(starts, target)
                for field in relocated[
                    bisect.bisect_left(relocated, target) : bisect.bisect_left(relocated, end - 7)
                ]:
                    pointed = self.pointer_at(field)
                    if pointed in seen or not self.carries_new_data(field, pointed):
                        continue
                    seen.add(pointed)
                    found.add(pointed)
            # What lies in data already taken is carried with it.
            pending = []
            for target in sorted(found):
                index = bisect.bisect_right(starts, target) - 1
                if index < 0 or target >= ends[starts[index]]:
                    pending.append(target)
        spans: list[list[int]] = []
        for target in sorted(ends):
            if spans and target <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], ends[target])
            else:
                spans.append([target, ends[target]])
        return spans

    def carries_new_data(self, field: int, target: int) -> bool:
        """Whether the pointer at ``field`` of carried data names new read-only data that
        is to be carried with it (the data bind would find nowhere in the old image)."""
        if self.region.locate(target) is not None:
            return False
        section = self.new.section_at(target)
        if section is None or section.is_executable or section.is_writable:
            return False
        reference = Reference(field, RefKind.DATA, target)
        return self.context.correlator.resolve(reference).resolution == Resolution.NEW_CONSTANT

    def jump_table_entries(self, table_rva: int) -> list[int] | None:
        """For a jump table in read-only data (int32 offsets from the table to code, as
        clang and gcc emit on x64): the region offsets of the carried code its entries
        lead to; [] if one leads elsewhere; None if there is no such table."""
        section = self.new.section_at(table_rva)
        if (
            section is None
            or section.is_executable
            or section.is_writable
            or not self.context.diff.correspondence.is_jump_table(table_rva)
        ):
            return None
        labels = self.context.diff.correspondence.new.labels
        index = bisect.bisect_right(labels, table_rva)
        limit = min(labels[index], section.end_rva) if index < len(labels) else section.end_rva
        for text in self.new.sections:
            if not text.is_executable:
                continue
            targets = self.context.arch.jump_table_targets(
                self.context.read, table_rva, text.rva, text.end_rva, limit
            )
            if len(targets) >= 2:
                located = [self.region.locate(target) for target in targets]
                return [rva for rva in located if rva is not None] if None not in located else []
        return None

    def rewrite_jump_tables(self, tables: dict[int, list[int]]) -> None:
        """Point each copied table's entries at the copies of their targets: the copy lies
        at another distance from the carried code than the table from the new code."""
        region = self.region
        for table_rva, entries in tables.items():
            at = region.locate(table_rva)
            assert at is not None
            for index, target in enumerate(entries):
                region.data[at + 4 * index : at + 4 * index + 4] = struct.pack("<i", target - at)
        region.blobs = [
            Blob(b.kind, b.offset, bytes(region.data[b.offset : b.offset + len(b.data)]))
            if b.kind == BlobKind.RODATA
            else b
            for b in region.blobs
        ]
