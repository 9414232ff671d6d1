"""Unwind data for the carried code: a function table (RUNTIME_FUNCTION entries bound to
the region) and copies of the unwind records, with their handlers and the RVAs in the
handlers' data bound to the old image."""

from __future__ import annotations

import bisect
import struct
from functools import cached_property

from hpatch.arch.relocate import CodeFixup
from hpatch.arch.rewrite import Fixup
from hpatch.blockers import BlockerCause, BlockerKind
from hpatch.package.build.binding import Binder, Bound
from hpatch.package.build.context import Context, Stage
from hpatch.package.model import BlobKind, FixupEntry, PatchFunction, TargetKind, UnwindRecord
from hpatch.package.unwind_copy import (
    HandlerDataError,
    HandlerIdentity,
    UnwindRecordLayout,
    identify_handler,
    record_fixups,
    unwind_record_layout,
)

#: A function-table entry to write: region begin and end, the new build's unwind RVA,
#: the region offset of the record's copy, or the packed word (ARM64) standing for it.
_Entry = tuple[int, int, int, int | None, bytes | None]


def patch_label(function: PatchFunction) -> str:
    return function.name or f"sub_{function.new_rva:x}"


class UnwindStage(Stage):
    """Builds the function table of the carried code."""

    def __init__(self, context: Context, binder: Binder) -> None:
        super().__init__(context, binder)
        self.handler_identities: dict[tuple[bool, int], HandlerIdentity] = {}

    def table(self, functions: list[PatchFunction]) -> list[UnwindRecord]:
        """The function table's entries for every part of ``functions`` the new build has
        unwind data for, placed and bound."""
        new = self.context.new
        entries = sorted(new.unwind_entries, key=lambda e: e.begin_rva)
        begins = [e.begin_rva for e in entries]
        copies: dict[int, int] = {}
        records: list[_Entry] = []
        for function in functions:
            for part in function.parts:
                low = bisect.bisect_left(begins, part.new_rva)
                high = bisect.bisect_left(begins, part.new_rva + part.size)
                for entry in entries[low:high]:
                    where = f"{patch_label(function)} unwind"
                    if entry.end_rva > part.new_rva + part.size:
                        self.blockers.add(
                            BlockerKind.UNRESOLVED_REFERENCE,
                            BlockerCause.UNWIND_RECORD_UNBOUND,
                            where,
                            f"unwind range 0x{entry.begin_rva:x}..0x{entry.end_rva:x} runs past "
                            "the code carried",
                            function=patch_label(function),
                            rva=entry.begin_rva,
                            end_rva=entry.end_rva,
                        )
                        continue
                    # Offsets from the part itself: where functions are carried side by
                    # side, an end is also the next function's beginning.
                    begin = part.offset + entry.begin_rva - part.new_rva
                    end = part.offset + entry.end_rva - part.new_rva
                    raw = self.pdata_words.get(entry.begin_rva)
                    if raw is not None and not self.arch.pdata_unwind_is_rva(
                        raw.to_bytes(4, "little")
                    ):
                        records.append((begin, end, 0, None, raw.to_bytes(4, "little")))
                        continue
                    assert entry.unwind_rva is not None
                    copied = self.copy_record(where, entry.unwind_rva, copies, function)
                    if copied is not None:
                        records.append((begin, end, entry.unwind_rva, copied, None))
        return self.place_table(records)

    def place_table(self, records: list[_Entry]) -> list[UnwindRecord]:
        table: list[UnwindRecord] = []
        entry_size = self.arch.pdata_entry_size
        addr32nb = self.arch.rva_fixup
        # Fixups write every RVA; the unwind data's as the new build has it lets the
        # format predict where its copy is (begin and end follow from the unwind record).
        end_field, unwind_field = self.arch.pdata_end_field, self.arch.pdata_unwind_field
        table_bytes = bytearray(entry_size * len(records))
        for index, (_begin, _end, unwind_rva, _copied, packed_word) in enumerate(records):
            at = index * entry_size + unwind_field
            table_bytes[at : at + 4] = packed_word or struct.pack("<I", unwind_rva)
        if not records:
            return table
        fixups = self.region.fixups
        table_offset = self.region.place(bytes(table_bytes), None, 4, BlobKind.FUNCTION_TABLE)
        for index, (begin_offset, end_offset, _unwind_rva, copied, packed_word) in enumerate(
            records
        ):
            at = table_offset + index * entry_size
            fixups[at] = FixupEntry(at, addr32nb, TargetKind.REGION, begin_offset)
            if end_field is not None:
                end_at = at + end_field
                fixups[end_at] = FixupEntry(end_at, addr32nb, TargetKind.REGION, end_offset)
            if packed_word is None:
                assert copied is not None
                unwind_at = at + unwind_field
                fixups[unwind_at] = FixupEntry(unwind_at, addr32nb, TargetKind.REGION, copied)
            table.append(UnwindRecord(at, begin_offset, end_offset))
        return table

    @cached_property
    def pdata_words(self) -> dict[int, int]:
        """Begin RVA -> second word of each .pdata entry of 8 bytes (ARM64; read once)."""
        new = self.context.new
        rva, size = new.exception_directory
        data = new.read(rva, size - size % 8)
        words: dict[int, int] = {}
        for begin, word in struct.iter_unpack("<II", data):
            words.setdefault(begin, word)
        return words

    def copy_record(
        self, where: str, unwind_rva: int, copies: dict[int, int], function: PatchFunction
    ) -> int | None:
        """Region offset of a copy of the unwind record at ``unwind_rva`` (of ``function``),
        its handler and the handler's data bound to the old image; None if blocked."""
        if unwind_rva in copies:
            return copies[unwind_rva]
        read = self.context.read
        try:
            record = unwind_record_layout(
                self.arch, read, unwind_rva, lambda rva: self.handler_identity(False, rva)
            )
        except HandlerDataError as exc:
            self.blockers.add(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.UNWIND_HANDLER_DATA,
                where,
                f"the unwind record at 0x{unwind_rva:x} {exc}",
                function=patch_label(function),
                rva=unwind_rva,
            )
            return None
        offset = self.region.place(read(unwind_rva, record.size), unwind_rva, 4, BlobKind.UNWIND)
        copies[unwind_rva] = offset
        if record.handler is not None and not self.bind_handler(where, record, offset, function):
            return None
        chained = record.chained
        if chained is not None:
            begin, end, parent_unwind = struct.unpack("<III", read(chained, 12))
            parent_copy = self.copy_record(where, parent_unwind & ~1, copies, function)
            begin_offset = in_function(function, begin, end_ok=False)
            end_offset = in_function(function, end, end_ok=True)
            if parent_copy is None or begin_offset is None or end_offset is None:
                self.blockers.add(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.UNWIND_RECORD_UNBOUND,
                    where,
                    f"the unwind record at 0x{unwind_rva:x} chains to code that is not carried",
                    function=patch_label(function),
                    rva=unwind_rva,
                )
                return None
            at = offset + (chained - unwind_rva)
            # chained records are x64's (UNW_FLAG_CHAININFO)
            for delta, target in ((0, begin_offset), (4, end_offset), (8, parent_copy)):
                self.region.fixups[at + delta] = FixupEntry(
                    at + delta, Fixup.X64_ADDR32NB, TargetKind.REGION, target
                )
        return offset

    def handler_identity(self, old: bool, rva: int) -> HandlerIdentity:
        """Which exception handler ``rva`` is in the old or the new image (cached)."""
        key = (old, rva)
        if key not in self.handler_identities:
            image = self.context.old if old else self.context.new
            self.handler_identities[key] = identify_handler(image, rva)
        return self.handler_identities[key]

    def bind_handler(
        self, where: str, record: UnwindRecordLayout, offset: int, function: PatchFunction
    ) -> bool:
        """Fixups for a copied record's handler and the RVAs in its data."""
        assert record.handler is not None and record.handler_offset is not None
        addr32nb = self.arch.rva_fixup
        handler_field = record.unwind_rva + record.handler_offset
        identity = record.handler

        def bind(field: int, target: int) -> Bound | None:
            bound = self.binder.bind(where, CodeFixup(field, addr32nb, target, field))
            if bound is None or field != handler_field or bound[0] != TargetKind.OLD_RVA:
                return bound
            # The data was read as the new image's handler reads it: the old image's
            # handler the copy will name must be the same one.
            counterpart = self.handler_identity(True, bound[1])
            if counterpart.handler != identity.handler:
                self.blockers.add(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.UNWIND_HANDLER_DIFFERS,
                    where,
                    f"the unwind record at 0x{record.unwind_rva:x} names "
                    f"{identity.description}, but its counterpart at 0x{bound[1]:x} in the "
                    f"old image is {counterpart.description}",
                    function=patch_label(function),
                    rva=record.unwind_rva,
                    target_rva=target,
                )
                return None
            return bound

        try:
            fixups = record_fixups(
                record,
                offset,
                addr32nb,
                bind,
                lambda rva, end_ok: in_function(function, rva, end_ok=end_ok),
            )
        except HandlerDataError as exc:
            # record_fixups refuses only fields that must lie in the function's own copy
            self.blockers.add(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.UNWIND_RECORD_UNBOUND,
                where,
                f"the unwind record at 0x{record.unwind_rva:x} {exc}",
                function=patch_label(function),
                rva=record.unwind_rva,
            )
            return False
        if fixups is None:
            return False
        self.region.fixups.update((fixup.offset, fixup) for fixup in fixups)
        return True


def in_function(function: PatchFunction, new_rva: int, *, end_ok: bool) -> int | None:
    """Region offset of ``new_rva`` if it lies in a part of ``function`` (or, with
    ``end_ok``, is the end of one)."""
    for part in function.parts:
        inside = new_rva - part.new_rva
        if 0 <= inside < part.size or (end_ok and inside == part.size):
            return part.offset + inside
    return None
