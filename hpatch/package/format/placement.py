"""The virtual placement of a package's region, from which every fixup's predicted
target follows.

The region stream gives each fixup's target as a difference from the target the
field's own bytes name under a *virtual placement*: each replaced function at its old
RVA (so its fields read as the old code's do), everything else in the region from
``virtual_base`` on, the image at 0. ``code_region`` writes every field so that the
difference is 0; binding overwrites fields anyway.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from hpatch.arch import Arch
from hpatch.arch.rewrite import Fixup
from hpatch.package.format.fields import INSTRUCTION_FIELDS, PAGE_OFFSETS, read_field
from hpatch.package.format.wire import arch_of
from hpatch.package.model import (
    FunctionStatus,
    Package,
    Sited,
    TargetKind,
)


def virtual_base(package: Package) -> int:
    """Where the virtual placement puts the region: the baseline's end, 64 KiB aligned."""
    return (package.baseline.size_of_image + 0xFFFF) & ~0xFFFF


class Placement:
    """The virtual placement of a package's region (see above)."""

    def __init__(self, package: Package) -> None:
        self.base = virtual_base(package)
        moved = [
            (p.offset, p.size, f.old_rva + p.new_rva - f.new_rva)
            for f in package.functions
            if f.status == FunctionStatus.MODIFIED
            for p in f.parts
        ]
        self.by_offset = sorted(moved)
        self.offsets = [m[0] for m in self.by_offset]
        self.by_address = sorted((address, size, offset) for offset, size, address in moved)
        self.addresses = [m[0] for m in self.by_address]
        self.slots: dict[int, int] = {}
        for index, item in enumerate(package.imports):
            self.slots.setdefault(item.old_iat_rva, index)
        self.imports = package.imports

    def address(self, offset: int) -> int:
        """The virtual address of region ``offset``."""
        index = bisect.bisect_right(self.offsets, offset) - 1
        if index >= 0:
            start, size, address = self.by_offset[index]
            if offset < start + size:
                return address + offset - start
        return self.base + offset

    def target_address(self, kind: TargetKind, target: int) -> int:
        if kind == TargetKind.OLD_RVA:
            return target
        if kind == TargetKind.IMPORT:
            return self.imports[target].old_iat_rva
        return self.address(target)

    def moved(self, address: int) -> bool:
        """Whether a virtual address lies in a part of a replaced function."""
        index = bisect.bisect_right(self.addresses, address) - 1
        return index >= 0 and address < self.by_address[index][0] + self.by_address[index][1]

    def target_of(self, kind: TargetKind, address: int) -> int:
        """The target (counted in ``kind``) a virtual address names; the inverse of
        ``target_address`` where there is one."""
        if kind == TargetKind.OLD_RVA:
            return address
        if kind == TargetKind.IMPORT:
            return self.slots.get(address, 0)
        index = bisect.bisect_right(self.addresses, address) - 1
        if index >= 0:
            start, size, offset = self.by_address[index]
            if address < start + size:
                return offset + address - start
        return address - self.base


def field_reader(package: Package) -> Callable[[int, int], bytes]:
    blob_starts = [b.offset for b in package.blobs]

    def field(offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` within the blob holding it; none if none."""
        index = bisect.bisect_right(blob_starts, offset) - 1
        if index < 0 or offset >= blob_starts[index] + package.blobs[index].size:
            return b""
        blob = package.blobs[index]
        return blob.data[offset - blob.offset : offset - blob.offset + size]

    return field


def table_targets(package: Package) -> dict[int, int]:
    """Function table fields whose target the unwind records give: begin, and on x64 end."""
    given = {}
    end_field = arch_of(package.machine).pdata_end_field
    for record in package.unwind:
        given[record.table_offset] = record.begin_offset
        if end_field is not None:
            given[record.table_offset + end_field] = record.end_offset
    return given


def field_addresses(package: Package, placement: Placement, fixups: Sequence[Sited]) -> list[int]:
    """For every fixup, the address its field's bytes name under the virtual placement,
    an ADRP's and its page offset's completed by their pair (needs resolved blobs)."""
    field = field_reader(package)
    words = [
        int.from_bytes(field(f.offset, 4), "little") if f.kind in INSTRUCTION_FIELDS else 0
        for f in fixups
    ]
    raw = [
        read_field(f.kind, field(f.offset, f.kind.field_size), placement.address(f.offset))
        for f in fixups
    ]
    addresses = []
    for index, fixup in enumerate(fixups):
        value = raw[index]
        if fixup.kind == Fixup.ARM64_PAGEBASE_REL21:
            pair = _pair(fixups, words, index, 1)
            if pair is not None:
                value += raw[pair]
        elif fixup.kind in PAGE_OFFSETS:
            pair = _pair(fixups, words, index, -1)
            if pair is not None:
                value += raw[pair] & ~0xFFF
        addresses.append(value)
    return addresses


def unwind_data_fields(package: Package) -> set[int]:
    """Function table fields that name unwind data: x64 UnwindData; on ARM64 the second
    word (when it is an .xdata RVA rather than packed unwind data, it has a fixup)."""
    at = arch_of(package.machine).pdata_unwind_field
    return {record.table_offset + at for record in package.unwind}


def unwind_data_size(arch: Arch, header: bytes) -> int:
    """Bytes of the unwind data whose first 8 bytes are ``header``, up to and with its
    handler's RVA (language-specific data has no size there), as the machine's unwind
    format sizes it; 0 when there are not 8."""
    if len(header) < 8:
        return 0
    size, has_handler, _chained = arch.unwind_record_size(
        lambda offset, count: header[offset : offset + count], 0
    )
    return size + (4 if has_handler else 0)


_PAIR_WINDOW = 8  # fixups an ADRP and the ADD/LDR/STR completing it may lie apart


def _pair(fixups: Sequence[Sited], words: list[int], index: int, step: int) -> int | None:
    """The ADRP fixup (``step`` -1) or the ADD/LDR/STR fixup (``step`` 1) nearest to
    ``index`` that uses the same register: the page and the page offset of one address."""
    register = words[index] & 31 if step > 0 else (words[index] >> 5) & 31
    wanted = PAGE_OFFSETS if step > 0 else (Fixup.ARM64_PAGEBASE_REL21,)
    other = index + step
    while 0 <= other < len(fixups) and abs(other - index) <= _PAIR_WINDOW:
        if fixups[other].kind in wanted:
            word = words[other]
            if (word & 31 if step < 0 else (word >> 5) & 31) == register:
                return other
        other += step
    return None
