"""Pure-Python twins of native/rewrite.c: fixup application and redirect encoding.

Same checks in the same order, same messages. Kinds and strategies are plain numbers
here (the values of ``hpatch.arch.rewrite.Fixup`` and ``Redirect``) so that this
module, like the C file, depends on nothing of hpatch.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable

from hpatch.arch.kinds import Fixup, Redirect
from hpatch.errors import FixupError

_RECORD = struct.Struct("<IHHQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64_LIMIT = 1 << 64
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1

# The numbers the C core takes from native/constants.h, as plain ints.
X64_ADDR64, X64_ADDR32NB, X64_REL32 = (
    int(Fixup.X64_ADDR64),
    int(Fixup.X64_ADDR32NB),
    int(Fixup.X64_REL32),
)
ARM64_ADDR32NB, ARM64_BRANCH26 = int(Fixup.ARM64_ADDR32NB), int(Fixup.ARM64_BRANCH26)
ARM64_PAGEBASE_REL21, ARM64_REL21 = int(Fixup.ARM64_PAGEBASE_REL21), int(Fixup.ARM64_REL21)
ARM64_PAGEOFFSET_12A = int(Fixup.ARM64_PAGEOFFSET_12A)
ARM64_PAGEOFFSET_12L = int(Fixup.ARM64_PAGEOFFSET_12L)
ARM64_ADDR64, ARM64_BRANCH19 = int(Fixup.ARM64_ADDR64), int(Fixup.ARM64_BRANCH19)
ARM64_BRANCH14 = int(Fixup.ARM64_BRANCH14)
X64_JMP_REL32, X64_JMP_ABS64 = int(Redirect.X64_JMP_REL32), int(Redirect.X64_JMP_ABS64)
X64_TWO_STAGE, ARM64_B = int(Redirect.X64_TWO_STAGE), int(Redirect.ARM64_B)
ARM64_LDR_BR = int(Redirect.ARM64_LDR_BR)

OUT_OF_REACH = "target out of reach"
BRANCH_ALIGN = "branch target not 4-aligned"


class _Refused(Exception):
    """A record that cannot be written; the reason becomes the message."""


# --- x64 fields: (site, target, image_base) -> value of the field -------------------


def _addr64(site: int, target: int, image_base: int) -> int:
    return target


def _addr32nb(site: int, target: int, image_base: int) -> int:
    rva = target - image_base
    if not 0 <= rva <= 0xFFFFFFFF:
        raise _Refused("target not within 4 GiB above the image base")
    return rva


def _rel32(after: int) -> Callable[[int, int, int], int]:
    """REL32 with ``after`` bytes of the instruction between the field and its end."""

    def bind(site: int, target: int, image_base: int) -> int:
        delta = target - (site + 4 + after)
        if not _INT32_MIN <= delta <= _INT32_MAX:
            raise _Refused(OUT_OF_REACH)
        return delta & 0xFFFFFFFF

    return bind


# --- ARM64 instructions: (insn, site, target) -> the instruction, bound ---------------


def _branch(delta: int, bits: int) -> int:
    """The imm field of a branch ``delta`` bytes away, reaching ±2^(bits+1) bytes."""
    if not -(1 << (bits + 1)) <= delta <= (1 << (bits + 1)) - 4:
        raise _Refused(OUT_OF_REACH)
    return (delta >> 2) & ((1 << bits) - 1)


def _branch26(insn: int, site: int, target: int) -> int:
    if insn & 0x7C000000 != 0x14000000:
        raise _Refused("not a B/BL instruction")
    if target & 3:
        raise _Refused(BRANCH_ALIGN)
    return (insn & 0xFC000000) | _branch(target - site, 26)


def _is_branch19(insn: int) -> bool:
    if insn & 0xFF000010 == 0x54000000:  # B.cond
        return True
    if insn & 0x7E000000 == 0x34000000:  # CBZ/CBNZ
        return True
    # LDR (literal) W/X/S/D/Q and LDRSW; opc 11 is PRFM or unallocated
    return insn & 0x3B000000 == 0x18000000 and insn & 0xC0000000 != 0xC0000000


def _branch19(insn: int, site: int, target: int) -> int:
    if not _is_branch19(insn):
        raise _Refused("not a B.cond/CBZ/CBNZ/LDR (literal) instruction")
    if target & 3:
        raise _Refused(BRANCH_ALIGN)
    return (insn & ~0x00FFFFE0) | (_branch(target - site, 19) << 5)


def _branch14(insn: int, site: int, target: int) -> int:
    if insn & 0x7E000000 != 0x36000000:
        raise _Refused("not a TBZ/TBNZ instruction")
    if target & 3:
        raise _Refused(BRANCH_ALIGN)
    return (insn & ~0x0007FFE0) | (_branch(target - site, 14) << 5)


def _with_imm21(insn: int, imm: int) -> int:
    if not -(1 << 20) <= imm < 1 << 20:
        raise _Refused(OUT_OF_REACH)
    imm &= 0x1FFFFF
    return (insn & ~0x60FFFFE0) | ((imm & 3) << 29) | ((imm >> 2) << 5)


def _pagebase_rel21(insn: int, site: int, target: int) -> int:
    if insn & 0x9F000000 != 0x90000000:
        raise _Refused("not an ADRP instruction")
    return _with_imm21(insn, (target >> 12) - (site >> 12))


def _rel21(insn: int, site: int, target: int) -> int:
    if insn & 0x9F000000 != 0x10000000:
        raise _Refused("not an ADR instruction")
    return _with_imm21(insn, target - site)


def _pageoffset_12a(insn: int, site: int, target: int) -> int:
    if insn & 0x5F800000 != 0x11000000:
        raise _Refused("not an ADD/ADDS (immediate) instruction")
    if insn & (1 << 22):
        raise _Refused("ADD immediate is shifted")
    return (insn & ~0x003FFC00) | ((target & 0xFFF) << 10)


def _ldst_scale(insn: int) -> int | None:
    """log2 of the access size of a load/store (unsigned immediate); None if not one."""
    if insn & 0x3B000000 != 0x39000000:
        return None
    size, simd, opc = insn >> 30, (insn >> 26) & 1, (insn >> 22) & 3
    if simd:
        if opc < 2:
            return size
        return 4 if size == 0 else None  # the 128-bit Q form
    if opc == 3 and size >= 2:
        return None
    return size


def _pageoffset_12l(insn: int, site: int, target: int) -> int:
    scale = _ldst_scale(insn)
    if scale is None:
        raise _Refused("not an LDR/STR (unsigned immediate) instruction")
    low = target & 0xFFF
    if low & ((1 << scale) - 1):
        raise _Refused("page offset not a multiple of the access size")
    return (insn & ~0x003FFC00) | ((low >> scale) << 10)


# kind -> (field size, bind); data fields bind (site, target, image_base) to a value,
# instruction fields bind (instruction, site, target) to the instruction.
_DATA_KINDS: dict[int, tuple[int, Callable[[int, int, int], int]]] = {
    X64_ADDR64: (8, _addr64),
    ARM64_ADDR64: (8, _addr64),
    X64_ADDR32NB: (4, _addr32nb),
    ARM64_ADDR32NB: (4, _addr32nb),
    **{X64_REL32 + after: (4, _rel32(after)) for after in range(6)},
}
_INSTRUCTION_KINDS: dict[int, Callable[[int, int, int], int]] = {
    ARM64_BRANCH26: _branch26,
    ARM64_BRANCH19: _branch19,
    ARM64_BRANCH14: _branch14,
    ARM64_PAGEBASE_REL21: _pagebase_rel21,
    ARM64_REL21: _rel21,
    ARM64_PAGEOFFSET_12A: _pageoffset_12a,
    ARM64_PAGEOFFSET_12L: _pageoffset_12l,
}


def _bytes_view(obj: object, name: str, writable: bool) -> memoryview:
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"apply_fixups: {name} must be a bytes-like object") from None
    if writable and view.readonly:
        raise ValueError(f"apply_fixups: {name} is read-only")
    if not view.c_contiguous:
        raise ValueError(f"apply_fixups: {name} is not contiguous")
    return view.cast("B")


def _u64(value: object, error: str) -> int:
    number = operator.index(value)  # type: ignore[arg-type]  # what is no index raises
    if not 0 <= number < _U64_LIMIT:
        raise ValueError(error)
    return number


def apply_fixups(buffer: object, buffer_va: int, image_base: int, records: object, /) -> None:
    """Write every fixup of records into buffer, which is mapped at buffer_va.

    records packs 16-byte little-endian ``<IHHQ`` records: offset into buffer, kind (a
    ``hpatch.arch.rewrite.Fixup``), reserved (0), target_va. Each field is written so
    the instruction or field at buffer_va + offset reaches target_va. All records are
    checked against the buffer as it is before the call, then written in order:
    ``FixupError('fixup {index}: {reason}', index=, reason=)`` leaves the buffer
    untouched.
    """
    data = _bytes_view(buffer, "buffer", writable=True)
    buffer_va = _u64(buffer_va, "apply_fixups: buffer_va out of range")
    image_base = _u64(image_base, "apply_fixups: image_base out of range")
    packed = _bytes_view(records, "records", writable=False)
    if len(packed) % _RECORD.size:
        raise ValueError(f"apply_fixups: records length {len(packed)} is not a multiple of 16")
    length = len(data)
    if buffer_va + length > _U64_LIMIT:
        raise ValueError("apply_fixups: the buffer extends past the 64-bit address space")
    # Check everything against the untouched buffer first; the writes come from the
    # checked values only (records may alias buffer).
    writes: list[tuple[int, bytes]] = []
    for index, (offset, kind, reserved, target) in enumerate(_RECORD.iter_unpack(packed)):
        try:
            writes.append(
                _check(data, length, buffer_va, image_base, offset, kind, reserved, target)
            )
        except _Refused as refused:
            raise FixupError(
                f"fixup {index}: {refused}", index=index, reason=str(refused)
            ) from None
    for offset, field in writes:
        data[offset : offset + len(field)] = field


def _check(
    data: memoryview,
    length: int,
    buffer_va: int,
    image_base: int,
    offset: int,
    kind: int,
    reserved: int,
    target: int,
) -> tuple[int, bytes]:
    """One record checked against the untouched buffer: (offset, bytes to write)."""
    data_kind = _DATA_KINDS.get(kind)
    instruction = _INSTRUCTION_KINDS.get(kind)
    if data_kind is None and instruction is None:
        raise _Refused(f"unknown kind {kind:#x}")
    if reserved:
        raise _Refused("reserved field is not 0")
    size = data_kind[0] if data_kind is not None else 4
    if offset + size > length:
        raise _Refused("field outside the buffer")
    site = buffer_va + offset
    if instruction is not None:
        if offset & 3:
            raise _Refused("instruction offset not 4-aligned")
        if site & 3:
            raise _Refused("instruction address not 4-aligned")
        (insn,) = _U32.unpack_from(data, offset)
        return offset, _U32.pack(instruction(insn, site, target))
    assert data_kind is not None
    value = data_kind[1](site, target, image_base)
    return offset, (_U64 if size == 8 else _U32).pack(value)


# (start relative to the entry, length) of each strategy's span: Redirect.span.
_SPANS = {int(strategy): strategy.span for strategy in Redirect}


def encode_redirect(strategy: int, entry_va: int, target_va: int, /) -> bytes:
    """The bytes a redirect (a ``hpatch.arch.rewrite.Redirect``) writes over its span,
    which starts at entry_va + Redirect.span[0], to send entry_va to target_va.

    ``ValueError('redirect: {reason}')`` when the target is out of reach, an address
    is misaligned, or the strategy is unknown.
    """
    number = operator.index(strategy)
    if number not in _SPANS:
        raise ValueError(f"redirect: unknown strategy {number}")
    entry = _u64(entry_va, "redirect: entry_va out of range")
    target = _u64(target_va, "redirect: target_va out of range")
    start, length = _SPANS[number]
    if entry + start < 0 or entry + start + length > _U64_LIMIT:
        raise ValueError("redirect: the span leaves the 64-bit address space")
    if number in (X64_JMP_REL32, X64_TWO_STAGE):
        # the two-stage rel32 jump ends exactly at the entry, where EB F9 jumps back to it
        delta = target - (entry + 5 if number == X64_JMP_REL32 else entry)
        if not _INT32_MIN <= delta <= _INT32_MAX:
            raise ValueError(f"redirect: {OUT_OF_REACH}")
        jump = b"\xe9" + _U32.pack(delta & 0xFFFFFFFF)
        return jump if number == X64_JMP_REL32 else jump + b"\xeb\xf9"
    if number == X64_JMP_ABS64:
        return b"\xff\x25\x00\x00\x00\x00" + _U64.pack(target)
    if entry & 3:
        raise ValueError("redirect: entry not 4-aligned")
    if number == ARM64_LDR_BR:
        # LDR X16, #8; BR X16; .quad target
        return _U32.pack(0x58000050) + _U32.pack(0xD61F0200) + _U64.pack(target)
    if target & 3:
        raise ValueError("redirect: target not 4-aligned")
    delta = target - entry
    if not -(1 << 27) <= delta <= (1 << 27) - 4:
        raise ValueError(f"redirect: {OUT_OF_REACH}")
    return _U32.pack(0x14000000 | ((delta >> 2) & 0x03FFFFFF))
