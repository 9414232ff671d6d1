"""The rewriting vocabulary shared by packages, the native core and the applier.

Fixup kinds are the PE/COFF relocation types (``IMAGE_REL_AMD64_*`` and
``IMAGE_REL_ARM64_*``) a package may carry; the value is ``machine_tag << 8 | coff_type``
so one number names both the machine and the COFF type. Redirect strategies are the
entry rewrites an applier can make; each overwrites a fixed span relative to the entry.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

from hpatch._backend import core
from hpatch.arch.base import Machine
from hpatch.errors import ApplyError, FixupError

_X64_TAG = 0x100
_ARM64_TAG = 0x200


class Fixup(IntEnum):
    """A field of patch code or data that must be bound to an address when applied."""

    # IMAGE_REL_AMD64_*
    X64_ADDR64 = _X64_TAG | 0x01  # 64-bit VA
    X64_ADDR32NB = _X64_TAG | 0x03  # 32-bit RVA from the image base
    X64_REL32 = _X64_TAG | 0x04  # rel32 from the end of the field
    X64_REL32_1 = _X64_TAG | 0x05  # ... with 1 byte of the instruction after the field
    X64_REL32_2 = _X64_TAG | 0x06
    X64_REL32_3 = _X64_TAG | 0x07
    X64_REL32_4 = _X64_TAG | 0x08
    X64_REL32_5 = _X64_TAG | 0x09
    # IMAGE_REL_ARM64_*
    ARM64_ADDR32NB = _ARM64_TAG | 0x02  # 32-bit RVA from the image base
    ARM64_BRANCH26 = _ARM64_TAG | 0x03  # B/BL imm26
    ARM64_PAGEBASE_REL21 = _ARM64_TAG | 0x04  # ADRP immhi:immlo, in 4 KiB pages
    ARM64_REL21 = _ARM64_TAG | 0x05  # ADR immhi:immlo, in bytes
    ARM64_PAGEOFFSET_12A = _ARM64_TAG | 0x06  # ADD imm12: the low 12 bits of the target
    ARM64_PAGEOFFSET_12L = _ARM64_TAG | 0x07  # LDR/STR imm12, scaled by the access size
    ARM64_ADDR64 = _ARM64_TAG | 0x0E  # 64-bit VA
    ARM64_BRANCH19 = _ARM64_TAG | 0x0F  # B.cond/CBZ/CBNZ/LDR literal imm19
    ARM64_BRANCH14 = _ARM64_TAG | 0x10  # TBZ/TBNZ imm14

    @property
    def machine(self) -> Machine:
        return Machine.AMD64 if self.value & 0xFF00 == _X64_TAG else Machine.ARM64

    @property
    def coff_type(self) -> int:
        """The IMAGE_REL_* number of this kind."""
        return self.value & 0xFF

    @property
    def field_size(self) -> int:
        """Bytes of the field the fixup rewrites."""
        return 8 if self in (Fixup.X64_ADDR64, Fixup.ARM64_ADDR64) else 4


#: X64_REL32 + n, by n: the instruction bytes that follow a rel32 field.
X64_REL32_BY_TRAILER = (
    Fixup.X64_REL32,
    Fixup.X64_REL32_1,
    Fixup.X64_REL32_2,
    Fixup.X64_REL32_3,
    Fixup.X64_REL32_4,
    Fixup.X64_REL32_5,
)


class FixupRecord(NamedTuple):
    """One fixup as the native core applies it: write the field at ``offset`` of the
    buffer so that it reaches ``target_va``. A tuple: batches hold a million of them."""

    offset: int
    kind: Fixup
    target_va: int


class Redirect(IntEnum):
    """How a function entry of the old image is sent to its replacement."""

    X64_JMP_REL32 = 1  # E9 rel32 at the entry
    X64_JMP_ABS64 = 2  # FF 25 00000000 + abs64 at the entry (jmp [rip+0])
    X64_TWO_STAGE = 3  # E9 rel32 in the 5 padding bytes before the entry, EB F9 at it
    ARM64_B = 4  # B imm26 at the entry
    ARM64_LDR_BR = 5  # LDR X16, #8; BR X16; .quad target

    @property
    def machine(self) -> Machine:
        return Machine.ARM64 if self in (Redirect.ARM64_B, Redirect.ARM64_LDR_BR) else Machine.AMD64

    @property
    def span(self) -> tuple[int, int]:
        """(start relative to the entry, length) of the bytes the redirect overwrites."""
        return _REDIRECT_SPANS[self]

    @property
    def reach(self) -> int | None:
        """How far from the redirect its target may be (bytes, either way); None: anywhere."""
        return _REDIRECT_REACH[self]


_REDIRECT_SPANS = {
    Redirect.X64_JMP_REL32: (0, 5),
    Redirect.X64_JMP_ABS64: (0, 14),
    Redirect.X64_TWO_STAGE: (-5, 7),
    Redirect.ARM64_B: (0, 4),
    Redirect.ARM64_LDR_BR: (0, 16),
}
_REDIRECT_REACH: dict[Redirect, int | None] = {
    Redirect.X64_JMP_REL32: 1 << 31,
    Redirect.X64_JMP_ABS64: None,
    Redirect.X64_TWO_STAGE: 1 << 31,
    Redirect.ARM64_B: 1 << 27,
    Redirect.ARM64_LDR_BR: None,
}


_RECORD = struct.Struct("<IHHQ")


def pack_fixups(records: Sequence[FixupRecord]) -> bytes:
    """The records as the native core reads them: 16-byte ``<IHHQ`` records
    (offset, kind, reserved 0, target_va).

    FixupError names the first record whose offset or target does not fit its field.
    """
    pack = _RECORD.pack
    try:
        return b"".join([pack(offset, kind, 0, target) for offset, kind, target in records])
    except struct.error:
        for index, (offset, kind, target) in enumerate(records):
            if not (0 <= offset <= 0xFFFFFFFF and 0 <= kind <= 0xFFFF and 0 <= target < 1 << 64):
                raise FixupError(
                    f"fixup {index}: offset, kind or target_va out of range",
                    index=index,
                    reason="offset, kind or target_va out of range",
                ) from None
        raise


def apply_fixups(
    buffer: bytearray | memoryview,
    buffer_va: int,
    image_base: int,
    records: Sequence[FixupRecord] | bytes | bytearray | memoryview,
) -> None:
    """Write every fixup into ``buffer`` (mapped at ``buffer_va``), in place.

    All or nothing: FixupError (with the failing record's ``index``) leaves the buffer
    untouched. ``records`` is a sequence of FixupRecord or their packed form
    (pack_fixups). Bad arguments (a read-only buffer, an address outside 64 bits) are
    the caller's bug and stay ValueError/TypeError.
    """
    if not isinstance(records, bytes | bytearray | memoryview):
        records = pack_fixups(records)
    # The core raises FixupError itself, naming the record: nothing to translate.
    core.apply_fixups(buffer, buffer_va, image_base, records)


def encode_redirect(strategy: Redirect, entry_va: int, target_va: int) -> bytes:
    """The bytes ``strategy`` writes over its span (from ``entry_va + strategy.span[0]``)
    to send ``entry_va`` to ``target_va``; ApplyError when out of reach or misaligned."""
    try:
        return core.encode_redirect(strategy, entry_va, target_va)
    except ValueError as error:
        raise ApplyError(str(error)) from None
