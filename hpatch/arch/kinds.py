"""The numbers the C core and Python share: fixup kinds and redirect strategies.

Fixup kinds are the PE/COFF relocation types (``IMAGE_REL_AMD64_*`` and
``IMAGE_REL_ARM64_*``) a package may carry; the value is ``machine_tag << 8 | coff_type``
so one number names both the machine and the COFF type. Redirect strategies are the
entry rewrites an applier can make; each overwrites a fixed span relative to the entry.

This module imports nothing of the backends, so the pure-Python twins take their
numbers from here; ``native/constants.py`` writes the C core's ``constants.h`` from it
(and from ``SiteKind``/``RefKind`` in ``base.py``), and a test holds the two equal.
"""

from __future__ import annotations

from enum import IntEnum

from hpatch.arch.base import Machine

_X64_TAG = 0x100
_ARM64_TAG = 0x200
#: Each machine's tag: the high byte of its Fixup values, and (shifted down) the number a
#: package names its machine by.
MACHINE_TAGS = {Machine.AMD64: _X64_TAG, Machine.ARM64: _ARM64_TAG}


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


class Redirect(IntEnum):
    """How a function entry of the old image is sent to its replacement."""

    X64_JMP_REL32 = 1  # E9 rel32 at the entry
    X64_JMP_ABS64 = 2  # FF 25 00000000 + abs64 at the entry (jmp [rip+0])
    X64_TWO_STAGE = 3  # E9 rel32 in the 5 padding bytes before the entry, EB F9 at it
    ARM64_B = 4  # B imm26 at the entry
    ARM64_LDR_BR = 5  # LDR X16, #8; BR X16; .quad target

    @property
    def machine(self) -> Machine:
        """The machine whose code the strategy writes."""
        return _REDIRECT_FACTS[self][0]

    @property
    def span(self) -> tuple[int, int]:
        """(start relative to the entry, length) of the bytes the redirect overwrites."""
        return _REDIRECT_FACTS[self][1]

    @property
    def reach(self) -> int | None:
        """How far from the redirect its target may be (bytes, either way); None: anywhere."""
        return _REDIRECT_FACTS[self][2]


#: Each strategy's machine, span (start relative to the entry, length) and reach, in one
#: table: a strategy added without its row fails every use (and the test of the table)
#: instead of passing for another machine's. The C core's span table is generated from it.
_REDIRECT_FACTS: dict[Redirect, tuple[Machine, tuple[int, int], int | None]] = {
    Redirect.X64_JMP_REL32: (Machine.AMD64, (0, 5), 1 << 31),
    Redirect.X64_JMP_ABS64: (Machine.AMD64, (0, 14), None),
    Redirect.X64_TWO_STAGE: (Machine.AMD64, (-5, 7), 1 << 31),
    Redirect.ARM64_B: (Machine.ARM64, (0, 4), 1 << 27),
    Redirect.ARM64_LDR_BR: (Machine.ARM64, (0, 16), None),
}
